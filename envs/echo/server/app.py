"""Echo environment server: the OpenEnv wire (WS /ws, HTTP /reset /step /state, /mcp).

Run it::

    python -m uvicorn envs.echo.server.app:app --host 127.0.0.1 --port 8000
    python -m envs.echo.server.app --port 8000        # the same, with forge-env's tuned settings

Each WebSocket session gets its own ``EchoEnv`` instance.
"""

from __future__ import annotations

from forge_env.server import create_app, serve_main

from envs.echo.env import EchoEnv

app = create_app(EchoEnv)


def main() -> None:
    """Serve this env (``--host``, ``--port``, ``--log-level``); OpenEnv's layout wants a main()."""
    serve_main(app)


if __name__ == "__main__":
    main()
