"""The conformance validator against real servers: OpenEnv's own, and deliberately broken ones."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from forge_env import ConnectError
from forge_env.conformance import validate

# ---------------------------------------------------------------------------------------
# A small env written on OpenEnv's own base classes, served by OpenEnv's create_app.


def _openenv_app(max_concurrent_envs: int = 4) -> Any:
    from openenv.core.env_server.http_server import create_app
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State

    class CountAction(Action):
        by: int

    class CountObservation(Observation):
        total: int = 0

    class CountEnv(Environment[CountAction, CountObservation, State]):
        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self) -> None:
            super().__init__()
            self._state = State(episode_id=None, step_count=0)
            self._total = 0

        def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None,
                  **kwargs: Any) -> CountObservation:
            self._state = State(episode_id=episode_id or "e0", step_count=0)
            self._total = 0
            return CountObservation(total=0, reward=0.0, done=False)

        def step(self, action: CountAction, timeout_s: Optional[float] = None,
                 **kwargs: Any) -> CountObservation:
            self._state.step_count += 1
            self._total += action.by
            return CountObservation(total=self._total, reward=float(action.by),
                                    done=self._total >= 3)

        @property
        def state(self) -> State:
            return self._state

    return create_app(CountEnv, CountAction, CountObservation, env_name="count",
                      max_concurrent_envs=max_concurrent_envs)


@pytest.mark.openenv
async def test_openenv_server_passes_every_check(serve_app):
    url = serve_app(_openenv_app())
    report = await validate(url, timeout=5.0)
    assert report.passed, report.format_table()
    assert [c.name for c in report.checks if not c.passed] == []
    # The example action {"by": 0} is valid: the step answered an observation.
    assert "-> observation fields ['metadata', 'total']" in report.check("ws_step").detail
    # OpenEnv's server allows 4 sessions here, so isolation was really checked.
    conc = report.check("ws_concurrent")
    assert conc.passed and not conc.skipped
    assert "A step_count 0->1, B 0->0" in conc.detail
    assert report.env_name == "CountEnv"
    assert all(c.duration_s > 0 for c in report.checks)
    assert report.to_dict()["summary"]["failed"] == []


@pytest.mark.openenv
async def test_single_session_server_skips_concurrency(serve_app):
    url = serve_app(_openenv_app(max_concurrent_envs=1))
    report = await validate(url, timeout=5.0)
    assert report.passed, report.format_table()
    conc = report.check("ws_concurrent")
    assert conc.skipped and conc.status == "SKIP"
    assert "one session at a time" in conc.detail


# ---------------------------------------------------------------------------------------
# Broken servers: each must fail with a reason naming what is wrong.


def _minimal_http(app: FastAPI, *, schema: bool = True) -> None:
    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/metadata")
    def metadata() -> dict[str, str]:
        return {"name": "broken", "description": "a deliberately broken server"}

    if schema:
        @app.get("/schema")
        def schema_() -> dict[str, Any]:
            obj = {"type": "object", "properties": {}}
            return {"action": obj, "observation": obj, "state": obj}

    @app.post("/mcp")
    def mcp() -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 1,
                "error": {"code": -32601, "message": "Method not found"}}


def _garbage_ws_app() -> FastAPI:
    app = FastAPI(version="0.1.0")
    _minimal_http(app)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            for _ in range(100):
                await websocket.receive_text()
                await websocket.send_text("<<garbage>>")
        except WebSocketDisconnect:
            pass

    return app


async def test_server_without_schema_fails_naming_it(serve_app):
    app = FastAPI(version="0.1.0")
    _minimal_http(app, schema=False)
    report = await validate(serve_app(app), timeout=2.0)
    assert not report.passed
    schema = report.check("schema")
    assert schema.status == "FAIL"
    assert "GET /schema answered 404" in schema.detail
    # No /ws route at all: every WS check fails with the handshake reason.
    assert "could not open WS" in report.check("ws_reset").detail
    # What is right is still reported right.
    assert report.check("health").passed and report.check("metadata").passed
    assert report.check("mcp").passed  # "method not found" is an allowed JSON-RPC answer
    assert "schema" in report.to_dict()["summary"]["failed"]


async def test_garbage_websocket_fails_every_ws_check(serve_app):
    report = await validate(serve_app(_garbage_ws_app()), timeout=1.0)
    assert not report.passed
    for name in ("ws_reset", "ws_state", "ws_step", "ws_invalid_json", "ws_unknown_type"):
        check = report.check(name)
        assert check.status == "FAIL", (name, check)
        assert "is not JSON: '<<garbage>>'" in check.detail, check.detail
    assert "did not close the connection" in report.check("ws_close").detail
    table = report.format_table()
    assert table.splitlines()[-1].startswith("FAILED: ")


async def test_wrong_error_codes_and_envelope_are_reported(serve_app):
    """A WS that answers with the wrong shapes: reward as a string, wrong error codes."""
    app = FastAPI(version="0.1.0")
    _minimal_http(app)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            for _ in range(100):
                raw = await websocket.receive_text()
                try:
                    msg = json.loads(raw)
                except ValueError:
                    await websocket.send_json({"type": "error", "data": {"code": "OOPS"}})
                    continue
                kind = msg.get("type")
                if kind == "reset":
                    await websocket.send_json({"type": "observation", "data": {
                        "observation": {}, "reward": "high", "done": False}})
                elif kind == "state":
                    await websocket.send_json({"type": "state", "data": {"step_count": 0}})
                elif kind == "close":
                    await websocket.close()
                    return
                else:
                    await websocket.send_json({"type": "error", "data": {"code": "EXECUTION_ERROR",
                                                                          "message": "nope"}})
        except WebSocketDisconnect:
            pass

    report = await validate(serve_app(app), timeout=2.0)
    assert "'reward' should be a number or null, got 'high'" in report.check("ws_reset").detail
    assert report.check("ws_state").passed
    assert report.check("ws_step").passed  # EXECUTION_ERROR is an allowed answer to a step
    assert "code INVALID_JSON" in report.check("ws_invalid_json").detail
    assert "code UNKNOWN_TYPE" in report.check("ws_unknown_type").detail
    assert report.check("ws_close").passed
    assert {c.name for c in report.failures} == {"ws_reset", "ws_invalid_json", "ws_unknown_type"}


async def test_no_server_raises_connect_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError, match="no server answers at http://127.0.0.1:.*forge-env serve"):
        await asyncio.wait_for(validate(f"http://127.0.0.1:{port}", timeout=2.0), 10)


async def test_bad_url_raises_value_error():
    with pytest.raises(ValueError, match="not a server URL"):
        await validate("ftp://127.0.0.1:1")


async def test_capacity_refusal_racing_the_first_frame_is_read(serve_app):
    """A session refused at connect (error frame, then close at once) may close before our
    first frame is sent; the queued CAPACITY_REACHED must still be read, not reported as a
    dropped connection."""
    import websockets

    from forge_env.conformance._validate import _Session

    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"type": "error", "data": {"code": "CAPACITY_REACHED",
                                                             "message": "1 of 1 sessions in use"}})
        await websocket.close()

    url = serve_app(app).replace("http://", "ws://") + "/ws"
    session = await _Session.open(url, 2.0)
    for _ in range(100):  # wait until the close has surely arrived: the send will fail
        if session.ws.state is websockets.protocol.State.CLOSED:
            break
        await asyncio.sleep(0.01)
    frame = await session.request({"type": "reset", "data": {}}, "reset")
    assert frame["data"]["code"] == "CAPACITY_REACHED"
