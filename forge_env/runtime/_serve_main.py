"""Entry point of a local env server process: ``python -m forge_env.runtime._serve_main SPEC``.

:class:`~forge_env.runtime.LocalProcessRuntime` starts this module rather than the CLI so
the runtime depends only on the runtime package. It resolves SPEC (built-in name, env
folder, ``module:attr``) *in this process*, so an import error lands in the server log,
and serves it with uvicorn.

``--parent-pid`` makes the server end itself when that process disappears (killed -9,
crashed): a parent that dies without running its ``atexit`` hooks still leaks nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

__all__ = ["main"]

logger = logging.getLogger("forge_env.runtime.server")


def _watch_parent(parent_pid: int, *, interval: float, grace: float) -> None:
    """Poll for the parent; once it is gone, SIGTERM our process group, then exit hard."""
    while os.getppid() == parent_pid:
        time.sleep(interval)
    logger.warning("parent process %d is gone: shutting down", parent_pid)
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGTERM)  # us and the children we started
    else:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace + 2.0)
    os._exit(1)  # graceful shutdown hung: leave anyway


def _seconds_or_none(text: str) -> float | None:
    return None if text.strip().lower() in ("none", "") else float(text)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, resolve the env, serve it until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m forge_env.runtime._serve_main",
        description="Serve one forge-env environment over the OpenEnv wire.",
    )
    parser.add_argument("spec", help="built-in env name, env folder, or module:attr")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-sessions", type=int, default=256)
    parser.add_argument("--session-idle-timeout", type=_seconds_or_none, default=300.0,
                        help="seconds; 'none' keeps idle sessions forever")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--graceful-timeout", type=float, default=3.0,
                        help="seconds to let open sessions finish on SIGTERM")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process is gone")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.parent_pid is not None:
        threading.Thread(
            target=_watch_parent,
            args=(args.parent_pid,),
            kwargs={"interval": 0.5, "grace": args.graceful_timeout},
            name="parent-watch",
            daemon=True,
        ).start()

    import uvicorn

    from forge_env.runtime._resolve import resolve_app

    started = time.monotonic()
    app = resolve_app(
        args.spec, max_sessions=args.max_sessions, session_idle_timeout=args.session_idle_timeout
    )
    logger.info("resolved %r in %.2fs; serving on %s:%d", args.spec,
                time.monotonic() - started, args.host, args.port)
    from forge_env.server import uvicorn_config

    config = uvicorn_config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=args.graceful_timeout,
        # A pool probes /health every few seconds: per-request lines would bury the log.
        access_log=args.log_level.lower() == "debug",
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
