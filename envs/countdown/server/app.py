"""Countdown environment server: the OpenEnv wire (WS /ws, HTTP /reset /step /state, /mcp).

Run it::

    python -m uvicorn envs.countdown.server.app:app --host 127.0.0.1 --port 8000
    python -m envs.countdown.server.app --port 8000        # the same, via main()

Each WebSocket session gets its own ``CountdownEnv`` instance.
"""

from __future__ import annotations

import argparse

from forge_env.server import create_app

from envs.countdown.env import CountdownEnv

app = create_app(CountdownEnv)


def main(argv: list[str] | None = None) -> None:
    """Serve the app with uvicorn (loopback by default; containers pass --host 0.0.0.0)."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve the environment over the OpenEnv wire")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
