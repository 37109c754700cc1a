"""``serve``: run an env (or an app from ``create_app``) under uvicorn, tuned for WS steps."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from forge_env._addresses import is_loopback_host
from forge_env.server._app import create_app
from forge_env.server._factory import EnvFactoryLike

__all__ = ["is_loopback_host", "serve", "serve_main", "uvicorn_config", "UVICORN_WS_SETTINGS"]

logger = logging.getLogger(__name__)

# uvicorn settings that serve OpenEnv sessions fastest (measured on loopback; see the
# server section of the README): uvicorn's sans-I/O websockets protocol without its
# per-message read pause (forge_env.server._protocol), no per-message deflate
# (observations are small: compressing each costs more server CPU than it saves; a
# deflating server needed ~1.7x the CPU per step at 256 sessions), keepalive pings every
# 20 s so dead peers are noticed, frames up to 16 MiB, and uvloop's event loop where it is
# installed (a dependency of forge-env on Linux/macOS: ~12 % fewer server instructions
# per step than asyncio's loop, measured with callgrind), else asyncio's. Plain data (an
# import string for the protocol), so the same settings work as uvicorn CLI flags.
UVICORN_WS_SETTINGS: dict[str, Any] = {
    "loop": "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio",
    "ws": "forge_env.server._protocol:LeanWebSocketProtocol",
    "ws_per_message_deflate": False,
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
    "ws_max_size": 16 * 1024 * 1024,
}


def uvicorn_config(
    app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **overrides: Any
) -> Any:
    """A ``uvicorn.Config`` for ``app`` with :data:`UVICORN_WS_SETTINGS` (for runtimes
    that run ``uvicorn.Server`` themselves, e.g. in a thread).

    >>> cfg = uvicorn_config(object(), port=8123)
    >>> (cfg.host, cfg.port, cfg.ws_per_message_deflate)
    ('127.0.0.1', 8123, False)
    """
    import uvicorn

    settings = {**UVICORN_WS_SETTINGS, **overrides}
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, **settings)


def serve(
    env_factory_or_app: EnvFactoryLike | Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_sessions: int = 256,
    session_idle_timeout: float | None = 300.0,
    log_level: str = "info",
    **app_kwargs: Any,
) -> None:
    """Serve an env over the OpenEnv wire with uvicorn; blocks until interrupted.

    Blocks, so not a doctest::

        serve(MyEnv, port=8000)  # http://127.0.0.1:8000, Ctrl-C stops it

    Args:
        env_factory_or_app: an ``AsyncEnv`` subclass / zero-arg factory (passed to
            :func:`create_app`), or an app ``create_app`` already built.
        host: interface to bind. Loopback by default; binding anything else exposes the
            env (which may run model-written code) to the network, so it must be asked
            for explicitly and is logged as a warning.
        port: TCP port.
        max_sessions, session_idle_timeout: see :func:`create_app` (ignored for an app).
        log_level: uvicorn's log level.
        **app_kwargs: more :func:`create_app` options (``metadata``, ``step_timeout``).
    """
    import uvicorn

    if _is_app(env_factory_or_app):
        app = env_factory_or_app
        if app_kwargs or max_sessions != 256 or session_idle_timeout != 300.0:
            logger.warning(
                "serve() got an app: max_sessions/session_idle_timeout/app options are "
                "ignored; pass them to create_app() instead"
            )
    else:
        app = create_app(
            env_factory_or_app,
            max_sessions=max_sessions,
            session_idle_timeout=session_idle_timeout,
            **app_kwargs,
        )
    if not is_loopback_host(host):
        logger.warning(
            "serving on %s:%d, reachable from other machines: environments may run "
            "model-written code; bind 127.0.0.1 unless this is what you want",
            host,
            port,
        )
    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()


def serve_main(
    env_factory_or_app: EnvFactoryLike | Any, argv: list[str] | None = None
) -> None:
    """The ``main()`` of an env's ``server/app.py``: ``--host``, ``--port``, ``--log-level``.

    Every built-in env ends its ``server/app.py`` with::

        if __name__ == "__main__":
            serve_main(app)

    so ``python -m envs.echo.server.app --port 8000`` serves it with the tuned settings of
    :func:`serve` (containers pass ``--host 0.0.0.0`` and publish on 127.0.0.1).
    """
    import argparse

    parser = argparse.ArgumentParser(description="Serve the environment over the OpenEnv wire")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    serve(env_factory_or_app, host=args.host, port=args.port, log_level=args.log_level)


def _is_app(obj: Any) -> bool:
    from fastapi import FastAPI
    from starlette.applications import Starlette

    return isinstance(obj, (FastAPI, Starlette))
