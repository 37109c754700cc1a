"""Serve any :class:`~forge_env.AsyncEnv` over the OpenEnv 0.10 wire (FastAPI + uvicorn).

>>> from forge_env.server import create_app, serve
>>> # app = create_app(MyEnv, max_sessions=256)   # an ASGI app: WS /ws + HTTP endpoints
>>> # serve(MyEnv, port=8000)                     # or run it directly (127.0.0.1)

Endpoints: ``WS /ws`` (sessions: reset/step/state/close/mcp frames), ``POST /reset``,
``POST /step``, ``GET /state`` (stateless), ``GET /health``, ``GET /metadata``,
``GET /schema``, ``POST /mcp`` and ``WS /mcp`` (JSON-RPC 2.0), ``GET /sessions``
(counters), ``GET /openapi.json``.
"""

from forge_env.server._app import OPENENV_API_VERSION, create_app
from forge_env.server._serve import UVICORN_WS_SETTINGS, serve, serve_main, uvicorn_config
from forge_env.server._sessions import ServerStats

__all__ = [
    "create_app",
    "serve",
    "serve_main",
    "uvicorn_config",
    "UVICORN_WS_SETTINGS",
    "ServerStats",
    "OPENENV_API_VERSION",
]

for _name in ("create_app", "serve", "serve_main", "uvicorn_config", "ServerStats"):
    globals()[_name].__module__ = "forge_env.server"
del _name
