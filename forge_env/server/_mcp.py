"""MCP over JSON-RPC 2.0: ``tools/list`` and ``tools/call`` backed by the env's tool methods.

Served at ``POST /mcp`` (a fresh env per request, or a session's env when ``params``
names a ``session_id``), in the ``mcp`` frame of ``/ws`` (the session's env) and on
``WS /mcp``. Error codes and messages follow openenv 0.10's ``http_server.py``:

=================  ======  ==========================================================
PARSE_ERROR        -32700  the body is not JSON
INVALID_REQUEST    -32600  not a JSON-RPC 2.0 request object (``jsonrpc``/``method``)
METHOD_NOT_FOUND   -32601  a method other than the ones below
INVALID_PARAMS     -32602  ``params`` not an object, missing tool ``name``, unknown tool
                           or ``session_id``
INTERNAL_ERROR     -32603  the tool (or the env) raised
SERVER_ERROR       -32000  no session could be created (capacity, factory failure)
=================  ======  ==========================================================

Methods: ``tools/list``, ``tools/call`` ``{name, arguments}``, and OpenEnv's session
extension ``openenv/session/create`` / ``openenv/session/close`` ``{session_id}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forge_env._exceptions import InvalidActionError
from forge_env._wire import JsonRpcErrorCode, jsonable
from forge_env.env._core import AsyncEnv

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.server._server import EnvServer
    from forge_env.server._sessions import Session

__all__ = ["rpc_error", "rpc_result", "validate_rpc_request", "handle_rpc"]

_REQUEST_KEYS = frozenset({"jsonrpc", "method", "params", "id"})


def rpc_error(
    code: JsonRpcErrorCode, message: str, request_id: Any = None, data: Any = None
) -> dict[str, Any]:
    """A JSON-RPC 2.0 error response."""
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": int(code), "message": message, "data": jsonable(data)},
    }


def rpc_result(result: Any, request_id: Any = None) -> dict[str, Any]:
    """A JSON-RPC 2.0 success response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": jsonable(result)}


def validate_rpc_request(request: Any) -> dict[str, Any] | None:
    """The error response when ``request`` is not a JSON-RPC 2.0 request, else None."""
    if not isinstance(request, dict):
        return rpc_error(
            JsonRpcErrorCode.INVALID_REQUEST,
            f"Invalid request: expected a JSON object, got {type(request).__name__}",
        )
    request_id = request.get("id")
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, (str, int))
    ):
        return rpc_error(JsonRpcErrorCode.INVALID_REQUEST, "Invalid request: id must be a string, an integer or null")
    problems = []
    if request.get("jsonrpc") != "2.0":
        problems.append("'jsonrpc' must be \"2.0\"")
    if not isinstance(request.get("method"), str):
        problems.append("'method' must be a string")
    extra = set(request) - _REQUEST_KEYS
    if extra:
        problems.append(f"unexpected keys {sorted(extra)}")
    if problems:
        return rpc_error(
            JsonRpcErrorCode.INVALID_REQUEST,
            "Invalid request: " + "; ".join(problems),
            request_id if isinstance(request_id, (str, int)) else None,
        )
    return None


async def handle_rpc(
    server: "EnvServer", request: Any, *, session: "Session | None" = None
) -> dict[str, Any]:
    """Answer one JSON-RPC request (validated here) with a JSON-RPC response dict.

    Args:
        server: the server (its session table and env factory).
        request: the decoded request object.
        session: the session whose env serves the request (``/ws`` ``mcp`` frames,
            ``WS /mcp``); without one, ``params.session_id`` picks a session, else a
            fresh env is made for this request and closed after it.
    """
    invalid = validate_rpc_request(request)
    if invalid is not None:
        return invalid
    method: str = request["method"]
    request_id = request.get("id")
    params = request.get("params", {})
    if not isinstance(params, dict):
        return rpc_error(JsonRpcErrorCode.INVALID_PARAMS, "Params must be an object", request_id)

    if method == "openenv/session/create":
        return await _session_create(server, session, request_id)
    if method == "openenv/session/close":
        return await _session_close(server, session, params, request_id)
    if method not in ("tools/list", "tools/call"):
        return rpc_error(
            JsonRpcErrorCode.METHOD_NOT_FOUND, f"Method not found: {method}", request_id
        )

    target = session
    requested_id = params.get("session_id")
    if target is None and requested_id:
        target = server.manager.sessions.get(str(requested_id))
        if target is None:
            return rpc_error(
                JsonRpcErrorCode.INVALID_PARAMS, f"Unknown session_id: {requested_id}", request_id
            )
    if target is not None:
        target.busy = True
        try:
            return await _call(server, target.env, method, params, request_id)
        finally:
            target.busy = False
            target.last_active = server.clock()

    try:
        env = await server.factory.create()
    except Exception as e:
        return rpc_error(
            JsonRpcErrorCode.SERVER_ERROR,
            f"env factory {server.factory.name} failed: {type(e).__name__}: {e}",
            request_id,
            {"factory_name": server.factory.name},
        )
    try:
        return await _call(server, env, method, params, request_id)
    finally:
        await server.close_scratch_env(env)


async def _call(
    server: "EnvServer",
    env: AsyncEnv[Any, Any],
    method: str,
    params: dict[str, Any],
    request_id: Any,
) -> dict[str, Any]:
    try:
        if method == "tools/list":
            tools = await server.with_timeout(env.list_tools(), "tools/list")
            return rpc_result(
                {"tools": [tool.model_dump(by_alias=True) for tool in tools]}, request_id
            )
        name = params.get("name")
        if not name or not isinstance(name, str):
            return rpc_error(JsonRpcErrorCode.INVALID_PARAMS, "Missing 'name' in params", request_id)
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return rpc_error(
                JsonRpcErrorCode.INVALID_PARAMS, "'arguments' must be an object", request_id
            )
        known = [tool.name for tool in await env.list_tools()]
        if name not in known:
            return rpc_error(
                JsonRpcErrorCode.INVALID_PARAMS,
                f"Tool not found: {name} (available: {', '.join(known) or 'none'})",
                request_id,
            )
        result = await server.with_timeout(env.call_tool(name, arguments), f"tools/call {name}")
        return rpc_result(result, request_id)
    except InvalidActionError as e:
        # The tool rejected its arguments: the caller's fault, not the server's.
        server.stats.count_error("MCP_INVALID_PARAMS")
        return rpc_error(
            JsonRpcErrorCode.INVALID_PARAMS, server.describe(e), request_id, {"errors": e.errors}
        )
    except Exception as e:
        server.stats.count_error("MCP_INTERNAL_ERROR")
        return rpc_error(JsonRpcErrorCode.INTERNAL_ERROR, server.describe(e), request_id)


async def _session_create(
    server: "EnvServer", session: "Session | None", request_id: Any
) -> dict[str, Any]:
    from forge_env.server._sessions import CapacityError, FactoryFailedError

    if session is not None:  # already in a session: say which
        return rpc_result({"session_id": session.id}, request_id)
    try:
        created = await server.manager.open("mcp")
    except CapacityError as e:
        return rpc_error(
            JsonRpcErrorCode.SERVER_ERROR,
            str(e),
            request_id,
            {"active_sessions": e.active_sessions, "max_sessions": e.max_sessions},
        )
    except FactoryFailedError as e:
        return rpc_error(
            JsonRpcErrorCode.SERVER_ERROR, str(e), request_id, {"factory_name": e.factory_name}
        )
    return rpc_result({"session_id": created.id}, request_id)


async def _session_close(
    server: "EnvServer", session: "Session | None", params: dict[str, Any], request_id: Any
) -> dict[str, Any]:
    target_id = params.get("session_id")
    if not target_id:
        return rpc_error(
            JsonRpcErrorCode.INVALID_PARAMS, "Invalid params - 'session_id' is required", request_id
        )
    target_id = str(target_id)
    if session is not None and session.id == target_id:
        return rpc_error(
            JsonRpcErrorCode.INVALID_REQUEST,
            "Cannot close active WebSocket-managed session via MCP method",
            request_id,
        )
    target = server.manager.sessions.get(target_id)
    if target is None:
        return rpc_error(JsonRpcErrorCode.INVALID_PARAMS, f"Unknown session_id: {target_id}", request_id)
    if target.attached:
        # A WebSocket is using it: close it when that connection ends.
        target.close_requested = True
        return rpc_result({"session_id": target_id, "closed": False, "closing": True}, request_id)
    await server.manager.close(target, "closed")
    return rpc_result({"session_id": target_id, "closed": True}, request_id)
