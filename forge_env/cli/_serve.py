"""``forge-env serve ENV``: serve an environment over the OpenEnv wire until Ctrl-C."""

from __future__ import annotations

import argparse
import socket
import sys

from forge_env.cli._main import EXIT_OK, CliError
from forge_env.server._serve import is_loopback_host

__all__ = ["run_serve", "is_loopback_host"]


def _claim_port(host: str, port: int) -> int:
    """Fail early (with the fix) if the port is taken; resolve ``0`` to a free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Same option uvicorn sets, so a port in TIME_WAIT after a restart counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise CliError(
                    f"port {port} on {host} is already in use: stop the other server or pick "
                    f"another port with --port (e.g. --port {port + 1})"
                ) from e
            raise CliError(f"cannot bind {host}:{port} ({e.strerror}): check --host/--port") from e
        return probe.getsockname()[1]


def run_serve(args: argparse.Namespace) -> int:
    """Resolve ENV, print where it is served and how to check/play it, then serve."""
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0..65535, got {args.port}")
    if args.max_sessions < 1:
        raise CliError(f"--max-sessions must be >= 1, got {args.max_sessions}")
    if not args.idle_timeout > 0:
        raise CliError(f"--idle-timeout must be > 0 seconds, got {args.idle_timeout}")

    from forge_env.runtime import resolve_app
    from forge_env.server import serve

    try:
        app = resolve_app(
            args.env, max_sessions=args.max_sessions, session_idle_timeout=args.idle_timeout
        )
    except ValueError as e:  # EnvSpecError is a ValueError; its first line names the problem
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(args.env)
        raise CliError(
            f"{first.rstrip('.')}. Run `forge-env list` for the built-in envs, or pass an env "
            "folder or module:Class"
        ) from e

    port = _claim_port(args.host, args.port)
    if not is_loopback_host(args.host):
        print(
            f"warning: binding {args.host} exposes this env to the network: anyone who can "
            f"reach port {port} can open sessions and run it. Use --host 127.0.0.1 unless "
            "you mean it.",
            file=sys.stderr,
        )
    # The commands to paste must reach the server: a wildcard bind is reachable on loopback.
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"http://{shown}:{port}"
    print(
        f"Serving {args.env} on {url}  (WebSocket sessions at ws://{shown}:{port}/ws, "
        f"up to {args.max_sessions} at once)\n"
        f"  check it: forge-env validate {url}\n"
        f"  play it:  forge-env play {url}\n"
        "  stop:     Ctrl-C",
        flush=True,
    )
    try:
        serve(app, host=args.host, port=port, log_level=args.log_level)
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then re-raises the signal: for a server,
        # Ctrl-C is the normal way to stop, not a failure.
        pass
    print("server stopped", flush=True)
    return EXIT_OK
