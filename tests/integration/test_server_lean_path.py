"""The server's lean per-message path: raw-ASGI WebSockets (forge_env.server._websocket),
frames written directly by LeanWebSocketProtocol, and uvloop in the shipped settings.

Real uvicorn servers on loopback, real websockets clients. Behaviour must not depend on
which of uvicorn's WebSocket protocols serves the app, nor on the frame size class.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import time

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.routing import Mount
from websockets.frames import Frame, Opcode

from forge_env import Action, AsyncEnv, Observation, ResetResult, StepResult
from forge_env.server import UVICORN_WS_SETTINGS, create_app, uvicorn_config
from forge_env.server._protocol import LeanWebSocketProtocol, text_frame_header
from conftest import running_server


class Say(Action):
    text: str = ""
    repeat: int = 1


class Said(Observation):
    text: str


class Parrot(AsyncEnv[Said, Say]):
    """Echoes ``text * repeat``: any observation size on demand."""

    action_type = Say
    observation_type = Said

    async def reset(self, *, seed=None, options=None):
        return ResetResult(Said(text=""), {})

    async def step(self, action: Say):
        return StepResult(Said(text=action.text * action.repeat), 0.5, False, False, {})


def ws_url(url: str, path: str = "/ws") -> str:
    return url.replace("http://", "ws://") + path


WS_IMPLS = ["forge_env.server._protocol:LeanWebSocketProtocol", "websockets-sansio"]
if importlib.util.find_spec("wsproto") is not None:  # optional: not a dependency
    WS_IMPLS.append("wsproto")


@pytest.mark.parametrize("ws_impl", WS_IMPLS)
async def test_session_on_every_uvicorn_ws_protocol(ws_impl):
    app = create_app(Parrot, max_sessions=1)
    with running_server(app, ws=ws_impl) as url:
        async with websockets.connect(ws_url(url)) as ws:
            await ws.send(json.dumps({"type": "reset", "data": {}}))
            reset = json.loads(await ws.recv())
            assert reset["type"] == "observation" and reset["data"]["observation"]["text"] == ""
            await ws.send(json.dumps({"type": "step", "data": {"text": "hi", "repeat": 2}}))
            reply = json.loads(await ws.recv())
            assert reply["type"] == "observation"
            assert reply["data"]["observation"]["text"] == "hihi" and reply["data"]["reward"] == 0.5
            # capacity 1: a second connection is refused with an error frame, then closed
            async with websockets.connect(ws_url(url)) as other:
                refusal = json.loads(await other.recv())
                assert refusal["data"]["code"] == "CAPACITY_REACHED"
                with pytest.raises(websockets.ConnectionClosed):
                    async with asyncio.timeout(10):
                        await other.recv()
            await ws.send(json.dumps({"type": "close"}))
            with pytest.raises(websockets.ConnectionClosed):
                async with asyncio.timeout(10):
                    await ws.recv()
        # WS /mcp goes through the same raw path
        async with websockets.connect(ws_url(url, "/mcp")) as mcp:
            await mcp.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            assert json.loads(await mcp.recv())["id"] == 1
    deadline = time.monotonic() + 5
    while app.state.stats.active_sessions and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stats = app.state.stats.snapshot()
    assert stats["active_sessions"] == 0 and stats["steps"] == 1


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 300_000])
def test_text_frame_header_matches_websockets(length):
    payload = b"x" * length
    assert text_frame_header(length) + payload == Frame(Opcode.TEXT, payload).serialize(mask=False)


async def test_direct_frames_of_every_size_class_arrive_intact():
    app = create_app(Parrot)
    # Observation JSON sizes straddling the 7-bit, 16-bit and 64-bit length encodings;
    # non-ASCII text makes bytes != characters.
    sizes = [0, 50, 100, 110, 126, 65_000, 65_600, 400_000]
    with running_server(app) as url:
        async with websockets.connect(ws_url(url), max_size=2**24) as ws:
            assert ws.protocol.extensions == []  # no deflate: the direct path applies
            await ws.send(json.dumps({"type": "reset", "data": {}}))
            await ws.recv()
            for n in sizes:
                await ws.send(json.dumps({"type": "step", "data": {"text": "é", "repeat": n}}))
                raw = await ws.recv()
                assert isinstance(raw, str)  # a text frame, as before
                assert json.loads(raw)["data"]["observation"]["text"] == "é" * n


async def test_deflate_negotiated_still_uses_the_base_path():
    app = create_app(Parrot)
    with running_server(app, ws_per_message_deflate=True) as url:
        async with websockets.connect(ws_url(url)) as ws:
            assert ws.protocol.extensions  # permessage-deflate on: frames are compressed
            await ws.send(json.dumps({"type": "reset", "data": {}}))
            await ws.recv()
            await ws.send(json.dumps({"type": "step", "data": {"text": "abc", "repeat": 3000}}))
            assert json.loads(await ws.recv())["data"]["observation"]["text"] == "abc" * 3000


def test_direct_path_guard_needs_an_open_plain_connection():
    proto = LeanWebSocketProtocol.__new__(LeanWebSocketProtocol)

    class Conn:
        from websockets.protocol import State

        state = State.OPEN
        extensions: list = []
        expect_continuation_frame = False
        writes: list = []
        debug = False

    proto.conn = Conn()
    proto.handshake_complete, proto.close_sent, proto.disconnected = True, False, False
    proto.initial_response = None
    proto.writable = asyncio.Event()
    proto.writable.set()
    assert proto._writes_plain_text()
    for attr, value in [("close_sent", True), ("disconnected", True), ("handshake_complete", False)]:
        setattr(proto, attr, value)
        assert not proto._writes_plain_text(), attr
        setattr(proto, attr, not value)
    proto.conn.extensions = ["deflate"]
    assert not proto._writes_plain_text()
    proto.conn.extensions = []
    proto.writable.clear()  # paused writing: the base class waits for the drain
    assert not proto._writes_plain_text()


async def test_mounted_app_serves_ws_under_its_prefix():
    # /ws is matched as Starlette routes match: the path less the mount's root_path.
    outer = Starlette(routes=[Mount("/env", app=create_app(Parrot))])
    with running_server(outer, health_path="/env/health") as url:
        async with websockets.connect(ws_url(url, "/env/ws")) as ws:
            await ws.send(json.dumps({"type": "step", "data": {"text": "m"}}))
            assert json.loads(await ws.recv())["data"]["observation"]["text"] == "m"
        with pytest.raises(websockets.InvalidStatus):  # no /ws outside the mount
            async with websockets.connect(ws_url(url, "/ws")):
                pass


def test_shipped_settings_pick_uvloop_when_installed():
    expected = "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
    assert UVICORN_WS_SETTINGS["loop"] == expected
    assert uvicorn_config(object()).loop == expected
    assert uvicorn_config(object(), loop="asyncio").loop == "asyncio"  # overridable


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_served_app_runs_on_uvloop():
    app = create_app(Parrot)
    seen: list[str] = []

    @app.get("/loop")
    async def loop_name() -> dict[str, str]:
        cls = type(asyncio.get_running_loop())
        seen.append(cls.__module__)
        return {"loop": cls.__module__}

    with running_server(app) as url:
        assert httpx.get(url + "/loop", timeout=5).json() == {"loop": "uvloop"}
    assert seen == ["uvloop"]


async def test_peer_vanishing_mid_session_ends_it_quietly(caplog):
    app = create_app(Parrot)
    with running_server(app) as url, caplog.at_level(logging.ERROR):
        ws = await websockets.connect(ws_url(url))
        await ws.send(json.dumps({"type": "reset", "data": {}}))
        await ws.recv()
        ws.transport.abort()  # no close frame: the connection just drops
        deadline = time.monotonic() + 5
        while app.state.stats.active_sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert app.state.stats.active_sessions == 0
    assert "Exception in ASGI application" not in caplog.text
    assert "failed" not in caplog.text
