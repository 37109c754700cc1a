"""The /ws session protocol of forge_env.server against a real uvicorn server on loopback.

Every frame type, every error code with a real trigger, the session staying usable after
each per-message error, state bookkeeping, step timeouts, MCP over WS, attaching to a
session by id, and env.close() on every way a session ends.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import pytest
import websockets

from forge_env import (
    Action,
    AsyncEnv,
    InvalidActionError,
    Observation,
    ResetResult,
    State,
    StepResult,
    ToolSpec,
)
from forge_env.server import create_app

# --- test envs ------------------------------------------------------------------------

CLOSED: list[str] = []  # names of envs whose close() ran (the server runs in a thread)
_lock = threading.Lock()


class Inc(Action):
    by: int = 1


class Count(Observation):
    n: int
    seed: int | None = None


class Counter(AsyncEnv[Count, Inc]):
    """Counts up; ends at 3. Special actions: by=99 raises, by=-1 raises
    InvalidActionError, by=1000 sleeps 5 s, by=50 truncates."""

    action_type = Inc
    observation_type = Count

    def __init__(self) -> None:
        self.n = 0
        self.seed: int | None = None

    async def reset(self, *, seed=None, options=None):
        self.n, self.seed = 0, seed
        return ResetResult(Count(n=0, seed=seed), {"options": options} if options else {})

    async def step(self, action: Inc):
        if action.by == 99:
            raise RuntimeError("boom")
        if action.by == -1:
            raise InvalidActionError(
                "by must be positive",
                errors=[{"type": "value_error", "loc": ["by"], "msg": "must be positive"}],
            )
        if action.by == 1000:
            await asyncio.sleep(5)
        self.n += action.by
        return StepResult(
            Count(n=self.n, seed=self.seed), float(action.by), self.n >= 3 and action.by != 50,
            action.by == 50, {"n": self.n},
        )

    async def close(self) -> None:
        with _lock:
            CLOSED.append("Counter")


class TrackedState(State):
    total: int = 0


class Tracked(Counter):
    """Tracks its own state: step_count counts double, so the server must not override it."""

    state_type = TrackedState

    async def state(self) -> TrackedState:
        return TrackedState(episode_id="own-id", step_count=self.n * 2, total=self.n)


class Tools(Counter):
    """Offers two tools over MCP."""

    async def list_tools(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                name="add",
                description="a + b",
                input_schema={"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
            ),
            ToolSpec(name="fail", description="raises"),
        ]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        if name == "add":
            self.n += arguments["a"] + arguments["b"]
            return {"sum": arguments["a"] + arguments["b"], "n": self.n}
        raise ValueError("tool failed on purpose")


def broken_factory() -> Counter:
    raise OSError("no GPU for this env")


@pytest.fixture(autouse=True)
def _reset_closed():
    CLOSED.clear()
    yield


def ws_url(url: str, path: str = "/ws") -> str:
    return url.replace("http://", "ws://") + path


async def ask(ws: Any, frame: Any) -> dict[str, Any]:
    await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))
    async with asyncio.timeout(10):
        return json.loads(await ws.recv())


async def wait_for(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


# --- frames ---------------------------------------------------------------------------


async def test_reset_step_state_close_frames(serve_app):
    app = create_app(Counter)
    url = serve_app(app)
    async with websockets.connect(ws_url(url)) as ws:
        r = await ask(ws, {"type": "reset", "data": {"seed": 7, "episode_id": "ep-1", "level": 2}})
        assert r == {
            "type": "observation",
            "data": {
                "observation": {"n": 0, "seed": 7},
                "reward": None,
                "done": False,
                # reset keys other than seed reach the env as options; info -> metadata
                "metadata": {"options": {"episode_id": "ep-1", "level": 2}},
            },
        }
        r = await ask(ws, {"type": "step", "data": {"by": 2}})
        assert r == {
            "type": "observation",
            "data": {"observation": {"n": 2, "seed": 7}, "reward": 2.0, "done": False, "metadata": {"n": 2}},
        }
        assert await ask(ws, {"type": "state"}) == {
            "type": "state",
            "data": {"episode_id": "ep-1", "step_count": 1},
        }
        r = await ask(ws, {"type": "step", "data": {"by": 1}})
        assert r["data"]["done"] is True and "truncated" not in r["data"]["metadata"]
        # OpenEnv's typed clients send `metadata: {}` with every action: dropped here.
        await ask(ws, {"type": "reset", "data": {}})
        r = await ask(ws, {"type": "step", "data": {"by": 50, "metadata": {}}})
        assert r["data"]["done"] is True and r["data"]["metadata"] == {"n": 50, "truncated": True}
        state = (await ask(ws, {"type": "state"}))["data"]
        assert state["step_count"] == 1
        assert isinstance(state["episode_id"], str) and state["episode_id"] != "ep-1"
        await ws.send(json.dumps({"type": "close"}))
        async with asyncio.timeout(5):
            with pytest.raises(websockets.ConnectionClosedOK):
                await ws.recv()
        assert ws.close_code == 1000
    await wait_for(lambda: CLOSED == ["Counter"])
    stats = app.state.stats
    assert (stats.active_sessions, stats.total_sessions, stats.closed_sessions) == (0, 1, 1)
    assert (stats.resets, stats.steps) == (2, 3)


async def test_binary_frames_are_accepted(serve_app):
    url = serve_app(create_app(Counter))
    async with websockets.connect(ws_url(url)) as ws:
        r = await ask(ws, json.dumps({"type": "reset", "data": {"seed": 1}}).encode())
        assert r["data"]["observation"] == {"n": 0, "seed": 1}


async def test_env_state_wins_over_server_bookkeeping(serve_app):
    url = serve_app(create_app(Tracked))
    async with websockets.connect(ws_url(url)) as ws:
        await ask(ws, {"type": "reset", "data": {"episode_id": "client-id"}})
        await ask(ws, {"type": "step", "data": {"by": 1}})
        state = await ask(ws, {"type": "state"})
        assert state == {
            "type": "state",
            "data": {"episode_id": "own-id", "step_count": 2, "total": 1},
        }


async def test_step_count_survives_failed_steps(serve_app):
    url = serve_app(create_app(Counter))
    async with websockets.connect(ws_url(url)) as ws:
        await ask(ws, {"type": "reset", "data": {}})
        await ask(ws, {"type": "step", "data": {"by": 1}})
        assert (await ask(ws, {"type": "step", "data": {"by": 99}}))["type"] == "error"
        assert (await ask(ws, {"type": "step", "data": {"by": "x"}}))["type"] == "error"
        await ask(ws, {"type": "step", "data": {"by": 1}})
        assert (await ask(ws, {"type": "state"}))["data"]["step_count"] == 2


# --- every error code, with the session usable afterwards ------------------------------


@pytest.mark.parametrize(
    "frame, code, message_part",
    [
        ("{not json", "INVALID_JSON", "Invalid JSON"),
        ({"type": "dance"}, "UNKNOWN_TYPE", "Unknown message type: dance"),
        ({"data": {}}, "UNKNOWN_TYPE", "Unknown message type"),
        ({"type": "step", "data": {"by": "three"}}, "VALIDATION_ERROR", "by"),
        ({"type": "step", "data": {"nope": 1}}, "VALIDATION_ERROR", "nope"),
        ({"type": "step"}, "VALIDATION_ERROR", "data"),
        ({"type": "state", "extra": 1}, "VALIDATION_ERROR", "extra"),
        ({"type": "reset", "data": {"seed": "abc"}}, "VALIDATION_ERROR", "seed"),
        ([1, 2], "VALIDATION_ERROR", "JSON object"),
        ({"type": "step", "data": {"by": -1}}, "VALIDATION_ERROR", "positive"),
        ({"type": "step", "data": {"by": 99}}, "EXECUTION_ERROR", "RuntimeError: boom"),
    ],
)
async def test_per_message_errors_keep_the_session(serve_app, frame, code, message_part):
    app = create_app(Counter)
    url = serve_app(app)
    async with websockets.connect(ws_url(url)) as ws:
        await ask(ws, {"type": "reset", "data": {"seed": 5}})
        await ask(ws, {"type": "step", "data": {"by": 1}})
        r = await ask(ws, frame)
        assert r["type"] == "error"
        assert r["data"]["code"] == code
        assert message_part in r["data"]["message"]
        if code == "VALIDATION_ERROR":
            assert isinstance(r["data"]["errors"], list) and r["data"]["errors"]
        # the same session goes on where it was
        r = await ask(ws, {"type": "step", "data": {"by": 1}})
        assert r["data"]["observation"] == {"n": 2, "seed": 5}
    assert app.state.stats.errors == {code: 1}


async def test_pydantic_errors_are_forwarded(serve_app):
    url = serve_app(create_app(Counter))
    async with websockets.connect(ws_url(url)) as ws:
        await ask(ws, {"type": "reset", "data": {}})
        r = await ask(ws, {"type": "step", "data": {"by": "three"}})
        (error,) = r["data"]["errors"]
        assert error["loc"] == ["by"] and error["type"] == "int_parsing" and error["input"] == "three"
        r = await ask(ws, {"type": "step", "data": {"by": -1}})
        assert r["data"]["errors"] == [{"type": "value_error", "loc": ["by"], "msg": "must be positive"}]


async def test_step_timeout_keeps_env_usable(serve_app):
    url = serve_app(create_app(Counter, step_timeout=0.2))
    async with websockets.connect(ws_url(url)) as ws:
        await ask(ws, {"type": "reset", "data": {}})
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await ask(ws, {"type": "step", "data": {"by": 1000}})
        assert loop.time() - t0 < 2.0
        assert r["data"] == {"message": "step timed out after 0.2s", "code": "EXECUTION_ERROR"}
        r = await ask(ws, {"type": "step", "data": {"by": 2}})
        assert r["data"]["observation"]["n"] == 2


async def test_capacity_reached_then_close(serve_app):
    app = create_app(Counter, max_sessions=2)
    url = serve_app(app)
    async with websockets.connect(ws_url(url)) as a, websockets.connect(ws_url(url)) as b:
        await ask(a, {"type": "reset", "data": {}})
        await ask(b, {"type": "reset", "data": {}})
        async with websockets.connect(ws_url(url)) as c:
            async with asyncio.timeout(5):
                r = json.loads(await c.recv())
                with pytest.raises(websockets.ConnectionClosedOK):
                    await c.recv()
            assert c.close_code == 1000
        assert r["type"] == "error"
        assert r["data"]["code"] == "CAPACITY_REACHED"
        assert (r["data"]["active_sessions"], r["data"]["max_sessions"]) == (2, 2)
        # the sessions at capacity are unaffected
        assert (await ask(a, {"type": "step", "data": {"by": 1}}))["data"]["observation"]["n"] == 1
        await a.send(json.dumps({"type": "close"}))
    await wait_for(lambda: app.state.stats.active_sessions == 0)
    # a slot freed: a new session is accepted
    async with websockets.connect(ws_url(url)) as d:
        assert (await ask(d, {"type": "reset", "data": {}}))["type"] == "observation"
    assert app.state.stats.rejected_sessions == 1
    assert app.state.stats.errors == {"CAPACITY_REACHED": 1}


async def test_factory_error(serve_app):
    app = create_app(broken_factory)
    url = serve_app(app)
    async with websockets.connect(ws_url(url)) as ws:
        async with asyncio.timeout(5):
            r = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
    assert r["data"]["code"] == "FACTORY_ERROR"
    assert "no GPU for this env" in r["data"]["message"]
    assert r["data"]["factory_name"] == "broken_factory"
    assert app.state.stats.active_sessions == 0


async def test_session_error_unknown_or_busy_session_id(serve_app):
    app = create_app(Counter)
    url = serve_app(app)
    async with websockets.connect(ws_url(url, "/ws?session_id=nope")) as ws:
        async with asyncio.timeout(5):
            r = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
    assert r["data"] == {"message": "Unknown session_id: nope", "code": "SESSION_ERROR"}

    # a session made over HTTP MCP, attached by one socket: a second one is refused
    created = httpx.post(url + "/mcp", json={"jsonrpc": "2.0", "method": "openenv/session/create", "id": 1})
    sid = created.json()["result"]["session_id"]
    async with websockets.connect(ws_url(url, f"/ws?session_id={sid}")) as first:
        await ask(first, {"type": "reset", "data": {"seed": 3}})
        async with websockets.connect(ws_url(url, f"/ws?session_id={sid}")) as second:
            r = json.loads(await second.recv())
        assert r["data"]["code"] == "SESSION_ERROR" and "already has an attached" in r["data"]["message"]
        assert (await ask(first, {"type": "step", "data": {"by": 1}}))["data"]["observation"]["n"] == 1
    # detaching keeps the session (it belongs to the MCP creator) and its episode
    async with websockets.connect(ws_url(url, f"/ws?session_id={sid}")) as again:
        assert (await ask(again, {"type": "step", "data": {"by": 1}}))["data"]["observation"] == {"n": 2, "seed": 3}
    assert CLOSED == []
    closed = httpx.post(
        url + "/mcp",
        json={"jsonrpc": "2.0", "method": "openenv/session/close", "params": {"session_id": sid}, "id": 2},
    )
    assert closed.json()["result"] == {"session_id": sid, "closed": True}
    assert CLOSED == ["Counter"]
    assert app.state.stats.errors == {"SESSION_ERROR": 2}


# --- MCP over WS ----------------------------------------------------------------------


async def test_mcp_frames_use_the_session_env(serve_app):
    url = serve_app(create_app(Tools))
    async with websockets.connect(ws_url(url)) as ws:
        await ask(ws, {"type": "reset", "data": {}})
        r = await ask(ws, {"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/list", "id": 1}})
        assert r["type"] == "mcp"
        tools = r["data"]["result"]["tools"]
        assert [t["name"] for t in tools] == ["add", "fail"]
        assert tools[0]["inputSchema"]["properties"]["a"] == {"type": "integer"}
        r = await ask(ws, {"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "id": "x",
                                                   "params": {"name": "add", "arguments": {"a": 2, "b": 3}}}})
        assert r["data"] == {"jsonrpc": "2.0", "id": "x", "result": {"sum": 5, "n": 5}}
        # the tool changed this session's env: the next step sees it
        r = await ask(ws, {"type": "step", "data": {"by": 1}})
        assert r["data"]["observation"]["n"] == 6
        r = await ask(ws, {"type": "mcp", "data": {"jsonrpc": "2.0", "method": "tools/call", "id": 3,
                                                   "params": {"name": "fail"}}})
        assert r["data"]["error"]["code"] == -32603 and "tool failed on purpose" in r["data"]["error"]["message"]
        r = await ask(ws, {"type": "mcp", "data": {"method": "tools/list"}})
        assert r["type"] == "mcp" and r["data"]["error"]["code"] == -32600
        r = await ask(ws, {"type": "mcp"})
        assert r["data"]["code"] == "VALIDATION_ERROR"
        assert (await ask(ws, {"type": "step", "data": {"by": 1}}))["data"]["observation"]["n"] == 7


async def test_ws_mcp_endpoint(serve_app):
    url = serve_app(create_app(Tools))
    async with websockets.connect(ws_url(url, "/mcp")) as ws:
        r = await ask(ws, {"jsonrpc": "2.0", "method": "tools/call", "id": 1,
                           "params": {"name": "add", "arguments": {"a": 1, "b": 1}}})
        assert r["result"] == {"sum": 2, "n": 2}
        r = await ask(ws, "{oops")
        assert r["error"]["code"] == -32700
        r = await ask(ws, {"jsonrpc": "2.0", "method": "tools/call", "id": 2,
                           "params": {"name": "add", "arguments": {"a": 1, "b": 1}}})
        assert r["result"]["n"] == 4  # one env for the whole connection
    await wait_for(lambda: CLOSED == ["Counter"])


# --- env.close() on every path ----------------------------------------------------------


async def test_close_on_abrupt_disconnect(serve_app):
    app = create_app(Counter)
    url = serve_app(app)
    ws = await websockets.connect(ws_url(url))
    await ask(ws, {"type": "reset", "data": {}})
    ws.transport.abort()  # no close handshake: the peer just vanishes
    await wait_for(lambda: CLOSED == ["Counter"])
    assert app.state.stats.active_sessions == 0


async def test_close_on_server_shutdown():
    from conftest import running_server

    app = create_app(Counter)
    with running_server(app) as url:
        sockets = [await websockets.connect(ws_url(url)) for _ in range(3)]
        for ws in sockets:
            await ask(ws, {"type": "reset", "data": {}})
        # an MCP-created session has no socket: shutdown must close it too
        httpx.post(url + "/mcp", json={"jsonrpc": "2.0", "method": "openenv/session/create", "id": 1})
        assert app.state.stats.active_sessions == 4
        # leaving the block stops the server while the sessions are open
    assert sorted(CLOSED) == ["Counter"] * 4
    assert app.state.stats.active_sessions == 0
    for ws in sockets:
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(5):
                await ws.recv()


async def test_idle_sessions_are_reaped(serve_app):
    app = create_app(Counter, session_idle_timeout=0.4)
    url = serve_app(app)
    async with websockets.connect(ws_url(url)) as idle, websockets.connect(ws_url(url)) as busy:
        await ask(idle, {"type": "reset", "data": {}})
        await ask(busy, {"type": "reset", "data": {}})
        for _ in range(12):  # 1.2 s of traffic on `busy` only
            await ask(busy, {"type": "state"})
            await asyncio.sleep(0.1)
        async with asyncio.timeout(5):
            r = json.loads(await idle.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await idle.recv()
        assert r["type"] == "error" and r["data"]["code"] == "SESSION_ERROR"
        assert r["data"]["reason"] == "idle_timeout"
        assert "session_idle_timeout=0.4s" in r["data"]["message"]
        assert idle.close_code == 1001 and idle.close_reason == "idle timeout"
        # the busy session is still served
        assert (await ask(busy, {"type": "step", "data": {"by": 1}}))["data"]["observation"]["n"] == 1
    await wait_for(lambda: len(CLOSED) == 2)
    assert app.state.stats.reaped_sessions == 1


async def test_long_step_is_not_reaped(serve_app):
    """A message in progress is not idleness: the reaper waits for it."""

    class Slow(Counter):
        async def step(self, action):
            await asyncio.sleep(0.8)
            return await super().step(action)

    app = create_app(Slow, session_idle_timeout=0.3)
    url = serve_app(app)
    async with websockets.connect(ws_url(url)) as ws:
        await ask(ws, {"type": "reset", "data": {}})
        r = await ask(ws, {"type": "step", "data": {"by": 1}})
        assert r["type"] == "observation"
    assert app.state.stats.reaped_sessions == 0


async def test_async_and_sync_factories(serve_app):
    async def make_async() -> Counter:
        await asyncio.sleep(0)
        return Counter()

    for factory in (make_async, lambda: Counter()):
        url = serve_app(create_app(factory))
        async with websockets.connect(ws_url(url)) as ws:
            r = await ask(ws, {"type": "reset", "data": {"seed": 9}})
            assert r["data"]["observation"] == {"n": 0, "seed": 9}
        schema = httpx.get(url + "/schema").json()
        assert schema["action"]["properties"]["by"]["type"] == "integer"
