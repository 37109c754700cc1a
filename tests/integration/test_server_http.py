"""The HTTP side of forge_env.server on a real loopback server: stateless /reset, /step,
/state, the info endpoints, /sessions, and JSON-RPC 2.0 on POST /mcp."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from forge_env import Action, AsyncEnv, EnvMetadata, InvalidActionError, Observation, ResetResult, StepResult, ToolSpec
from forge_env.server import OPENENV_API_VERSION, create_app

CLOSES: list[int] = []
_lock = threading.Lock()


class Say(Action):
    text: str
    loud: bool = False


class Heard(Observation):
    echoed: str
    seed: int | None = None


class Echo(AsyncEnv[Heard, Say]):
    """Echoes what it is told.

    More words here are not part of the description."""

    action_type = Say
    observation_type = Heard

    def __init__(self) -> None:
        self.seed: int | None = None

    async def reset(self, *, seed=None, options=None):
        self.seed = seed
        return ResetResult(Heard(echoed="", seed=seed), dict(options or {}))

    async def step(self, action: Say):
        if action.text == "crash":
            raise ValueError("cannot echo that")
        text = action.text.upper() if action.loud else action.text
        return StepResult(Heard(echoed=text, seed=self.seed), float(len(text)), False, False, {})

    async def list_tools(self) -> list[ToolSpec]:
        return [ToolSpec(name="shout", description="upper-cases text",
                         input_schema={"type": "object", "properties": {"text": {"type": "string"}}})]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        if arguments.get("text") == "bad":
            raise RuntimeError("tool exploded")
        if not isinstance(arguments.get("text"), str):
            raise InvalidActionError("shout needs a string 'text'")
        return {"out": arguments["text"].upper()}

    async def close(self) -> None:
        with _lock:
            CLOSES.append(1)


@pytest.fixture
def url(serve_app):
    CLOSES.clear()
    return serve_app(create_app(Echo, max_sessions=2))


def test_health_metadata_schema_openapi(url):
    assert httpx.get(url + "/health").json() == {"status": "healthy"}
    meta = httpx.get(url + "/metadata").json()
    assert meta["name"] == "Echo"
    assert meta["description"] == "Echoes what it is told."
    schema = httpx.get(url + "/schema").json()
    assert set(schema) == {"action", "observation", "state"}
    assert schema["action"]["required"] == ["text"]
    assert schema["observation"]["properties"]["echoed"]["type"] == "string"
    assert set(schema["state"]["properties"]) >= {"episode_id", "step_count"}
    openapi = httpx.get(url + "/openapi.json").json()
    assert openapi["info"]["version"] == OPENENV_API_VERSION == "1.0.0"
    assert {"/reset", "/step", "/state", "/health", "/metadata", "/schema", "/mcp", "/sessions"} <= set(openapi["paths"])


def test_explicit_metadata(serve_app):
    meta = EnvMetadata(name="echo", description="d", version="2.1", author="me")
    u = serve_app(create_app(Echo, metadata=meta))
    assert httpx.get(u + "/metadata").json() == {
        "name": "echo", "description": "d", "readme_content": None, "version": "2.1",
        "author": "me", "documentation_url": None,
    }


def test_stateless_reset_step_state(url):
    r = httpx.post(url + "/reset", json={"seed": 42, "episode_id": "e-9", "difficulty": "hard"})
    assert r.status_code == 200
    assert r.json() == {
        "observation": {"echoed": "", "seed": 42},
        "reward": None,
        "done": False,
        "metadata": {"episode_id": "e-9", "difficulty": "hard"},
    }
    assert httpx.post(url + "/reset").json()["observation"] == {"echoed": "", "seed": None}
    r = httpx.post(url + "/step", json={"action": {"text": "hi", "loud": True, "metadata": {}}})
    assert r.json() == {"observation": {"echoed": "HI", "seed": None}, "reward": 2.0, "done": False}
    assert httpx.get(url + "/state").json() == {"episode_id": None, "step_count": 0}
    assert len(CLOSES) == 4  # every stateless request closed its scratch env


def test_http_errors(url):
    r = httpx.post(url + "/step", json={"action": {"text": 5}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["text"]
    r = httpx.post(url + "/step", json={"action": {"txt": "x"}})
    assert r.status_code == 422
    assert httpx.post(url + "/step", json={}).status_code == 422  # no action at all
    assert httpx.post(url + "/reset", json={"seed": -1}).status_code == 422
    assert httpx.post(url + "/reset", json={"episode_id": "x" * 256}).status_code == 422
    r = httpx.post(url + "/step", json={"action": {"text": "crash"}})
    assert r.status_code == 500
    assert r.json()["detail"] == "EXECUTION_ERROR: ValueError: cannot echo that"
    assert len(CLOSES) == 3  # an env was made (and closed) for each of the 3 valid bodies


def test_sessions_endpoint(url):
    snap = httpx.get(url + "/sessions").json()
    assert snap["max_sessions"] == 2
    assert snap["active_sessions"] == 0
    assert snap["errors"] == {}


def rpc(url: str, body: Any) -> dict[str, Any]:
    r = httpx.post(url + "/mcp", json=body) if not isinstance(body, bytes) else httpx.post(url + "/mcp", content=body)
    assert r.status_code == 200
    return r.json()


def test_mcp_tools_list_and_call(url):
    r = rpc(url, {"jsonrpc": "2.0", "method": "tools/list", "id": 1})
    assert r == {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{
        "name": "shout", "description": "upper-cases text",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    }]}}
    r = rpc(url, {"jsonrpc": "2.0", "method": "tools/call", "id": 2, "params": {"name": "shout", "arguments": {"text": "hey"}}})
    assert r == {"jsonrpc": "2.0", "id": 2, "result": {"out": "HEY"}}
    assert len(CLOSES) == 2


@pytest.mark.parametrize(
    "body, code, part",
    [
        (b"{nope", -32700, "Parse error"),
        ({}, -32600, "Invalid request"),
        ({"jsonrpc": "1.0", "method": "tools/list"}, -32600, "jsonrpc"),
        ({"jsonrpc": "2.0", "method": "tools/list", "bogus": 1}, -32600, "bogus"),
        ([1], -32600, "JSON object"),
        ({"jsonrpc": "2.0", "method": "tools/list", "params": [1]}, -32602, "Params must be an object"),
        ({"jsonrpc": "2.0", "method": "resources/list", "id": 1}, -32601, "Method not found: resources/list"),
        ({"jsonrpc": "2.0", "method": "tools/call", "id": 1, "params": {}}, -32602, "Missing 'name'"),
        ({"jsonrpc": "2.0", "method": "tools/call", "id": 1, "params": {"name": "nope"}}, -32602, "Tool not found: nope"),
        ({"jsonrpc": "2.0", "method": "tools/call", "id": 1, "params": {"name": "shout", "arguments": [1]}}, -32602, "arguments"),
        ({"jsonrpc": "2.0", "method": "tools/call", "id": 1, "params": {"name": "shout", "arguments": {"text": "bad"}}}, -32603, "tool exploded"),
        ({"jsonrpc": "2.0", "method": "tools/call", "id": 1, "params": {"name": "shout", "arguments": {"text": 3}}}, -32602, "needs a string"),
        ({"jsonrpc": "2.0", "method": "tools/list", "id": 1, "params": {"session_id": "nope"}}, -32602, "Unknown session_id"),
        ({"jsonrpc": "2.0", "method": "openenv/session/close", "id": 1, "params": {}}, -32602, "session_id"),
    ],
)
def test_mcp_error_codes(url, body, code, part):
    r = rpc(url, body)
    assert r["jsonrpc"] == "2.0"
    assert "result" not in r
    assert r["error"]["code"] == code
    assert part in r["error"]["message"]


def test_mcp_sessions_capacity_and_close(url):
    ids = [rpc(url, {"jsonrpc": "2.0", "method": "openenv/session/create", "id": i})["result"]["session_id"] for i in range(2)]
    assert len(set(ids)) == 2
    full = rpc(url, {"jsonrpc": "2.0", "method": "openenv/session/create", "id": 3})
    assert full["error"]["code"] == -32000
    assert full["error"]["data"] == {"active_sessions": 2, "max_sessions": 2}
    r = rpc(url, {"jsonrpc": "2.0", "method": "tools/call", "id": 4,
                  "params": {"session_id": ids[0], "name": "shout", "arguments": {"text": "a"}}})
    assert r["result"] == {"out": "A"}
    assert CLOSES == []  # session envs are not scratch envs
    for sid in ids:
        r = rpc(url, {"jsonrpc": "2.0", "method": "openenv/session/close", "id": 5, "params": {"session_id": sid}})
        assert r["result"] == {"session_id": sid, "closed": True}
    assert len(CLOSES) == 2
    assert httpx.get(url + "/sessions").json()["active_sessions"] == 0


def test_mcp_factory_error(serve_app):
    def broken() -> Echo:
        raise RuntimeError("cannot build")

    u = serve_app(create_app(broken))
    r = rpc(u, {"jsonrpc": "2.0", "method": "tools/list", "id": 1})
    assert r["error"]["code"] == -32000 and "cannot build" in r["error"]["message"]
    r = httpx.post(u + "/reset", json={})
    assert r.status_code == 500 and "FACTORY_ERROR" in r.json()["detail"]


def test_stateless_step_on_an_env_that_needs_reset_says_to_use_the_ws_session(serve_app):
    from envs.guess_number import GuessNumberEnv

    url = serve_app(create_app(GuessNumberEnv))
    r = httpx.post(url + "/step", json={"action": {"guess": 3}})
    assert r.status_code == 409
    assert "reset() first" in r.json()["detail"] and "/ws" in r.json()["detail"]
