"""python_code environment server: the OpenEnv wire (WS /ws, HTTP /reset /step /state, /mcp).

Run it::

    python -m uvicorn envs.python_code.server.app:app --host 127.0.0.1 --port 8000
    python -m envs.python_code.server.app --port 8000        # the same, with forge-env's tuned settings

Each WebSocket session gets its own ``PythonCodeEnv`` instance.
"""

from __future__ import annotations

from forge_env.server import create_app, serve_main

from envs.python_code.env import PythonCodeEnv

app = create_app(PythonCodeEnv)


def main() -> None:
    """Serve this env (``--host``, ``--port``, ``--log-level``); OpenEnv's layout wants a main()."""
    serve_main(app)


if __name__ == "__main__":
    main()
