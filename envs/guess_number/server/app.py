"""Guess-the-number environment server: the OpenEnv wire (WS /ws, HTTP /reset /step /state, /mcp).

Run it::

    python -m uvicorn envs.guess_number.server.app:app --host 127.0.0.1 --port 8000
    python -m envs.guess_number.server.app --port 8000        # the same, with forge-env's tuned settings

Each WebSocket session gets its own ``GuessNumberEnv`` instance.
"""

from __future__ import annotations

from forge_env.server import create_app, serve_main

from envs.guess_number.env import GuessNumberEnv

app = create_app(GuessNumberEnv)


def main() -> None:
    """Serve this env (``--host``, ``--port``, ``--log-level``); OpenEnv's layout wants a main()."""
    serve_main(app)


if __name__ == "__main__":
    main()
