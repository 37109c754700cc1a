"""``forge-env run ENV|IMAGE``: serve an env image in a locked-down container until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from forge_env.cli._main import EXIT_FAILED, EXIT_OK, CliError

__all__ = ["run_run", "image_for"]

_POLL_S = 0.5  # how often to check that the container still runs


def image_for(target: str) -> str:
    """The image to run: a built-in env name or env folder maps to its default tag,
    anything else is taken as an image name.

    >>> image_for("echo"), image_for("ghcr.io/me/my-env:1")
    ('forge-env/echo:latest', 'ghcr.io/me/my-env:1')
    """
    from forge_env.runtime import env_image_tag
    from forge_env.runtime._docker import resolve_env_dockerfile

    if ":" not in target and (Path(target).is_dir() or "/" not in target):
        try:
            name, _ = resolve_env_dockerfile(target)
        except Exception:  # not an env we know: an image name (e.g. "my-image")
            return target
        return env_image_tag(name)
    return target


async def _serve(args: argparse.Namespace, image: str) -> int:
    from forge_env.runtime import DockerRuntime

    runtime = DockerRuntime(
        image, port=args.port, memory=args.memory, cpus=args.cpus, pull=args.pull
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"forge-env run: starting {image} ...", file=sys.stderr, flush=True)
        # Ctrl-C while the container boots cancels the start (which removes the container).
        starting = asyncio.ensure_future(runtime.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            print("forge-env run: interrupted while starting", file=sys.stderr)
            return EXIT_OK
        stopping.cancel()
        starting.result()  # re-raise a failed start (RuntimeStartError names the cause)
        url = runtime.url
        print(
            f"Serving {image} on {url}  (container {str(runtime.container_id)[:12]}, "
            f"WebSocket sessions at ws://127.0.0.1:{runtime.port}/ws)\n"
            f"  check it: forge-env validate {url}\n"
            f"  play it:  forge-env play {url}\n"
            "  stop:     Ctrl-C (the container is removed)",
            flush=True,
        )
        died = False
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=_POLL_S)
            except asyncio.TimeoutError:
                if not await asyncio.to_thread(runtime._server_running):
                    died = True
                    break
        if died:
            logs = runtime.logs(tail=20).strip()
            print(f"forge-env run: error: the container of {image} stopped on its own; "
                  "its last log lines:", file=sys.stderr)
            for line in logs.splitlines():
                print(f"  | {line}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        container = runtime.container_id
        await runtime.stop()
        if container is not None:
            print(f"container {container[:12]} removed", flush=True)


def run_run(args: argparse.Namespace) -> int:
    """Start the container, print its URL and how to check/play it, wait for Ctrl-C."""
    if args.port is not None and not 1 <= args.port <= 65535:
        raise CliError(f"--port must be 1..65535, got {args.port}")
    if args.cpus is not None and not args.cpus > 0:
        raise CliError(f"--cpus must be > 0, got {args.cpus}")
    return asyncio.run(_serve(args, image_for(args.env)))
