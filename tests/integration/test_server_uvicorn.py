"""Our server under the uvicorn settings it ships with (UVICORN_WS_SETTINGS, i.e. what
serve() runs): the lean WebSocket protocol, no deflate. Pipelined frames beyond the
protocol's queue bound must all be answered, in order."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from forge_env import Action, AsyncEnv, Observation, ResetResult, StepResult
from forge_env.server import UVICORN_WS_SETTINGS, create_app, uvicorn_config
from forge_env.server._protocol import LeanWebSocketProtocol
from conftest import running_server


class Add(Action):
    k: int


class Total(Observation):
    total: int


class Adder(AsyncEnv[Total, Add]):
    action_type = Add
    observation_type = Total

    async def reset(self, *, seed=None, options=None):
        self.total = seed or 0
        return ResetResult(Total(total=self.total), {})

    async def step(self, action: Add):
        await asyncio.sleep(0.001)  # slower than the client sends: the queue fills up
        self.total += action.k
        return StepResult(Total(total=self.total), 0.0, False, False, {})


def test_settings_resolve_to_the_lean_protocol():
    cfg = uvicorn_config(create_app(Adder))
    cfg.load()
    assert cfg.ws_protocol_class is LeanWebSocketProtocol
    assert UVICORN_WS_SETTINGS["ws_per_message_deflate"] is False


@pytest.mark.parametrize("max_queue", [32, 1])
async def test_pipelined_frames_are_all_answered_in_order(max_queue):
    app = create_app(Adder)
    with running_server(app, ws_max_queue=max_queue) as url:
        async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:
            # the server offered no permessage-deflate: frames travel uncompressed
            assert ws.protocol.extensions == []
            await ws.send(json.dumps({"type": "reset", "data": {"seed": 0}}))
            json.loads(await ws.recv())
            n = 200  # far beyond the queue bound: reading must pause and resume
            for k in range(1, n + 1):
                await ws.send(json.dumps({"type": "step", "data": {"k": k}}))
            totals = []
            async with asyncio.timeout(30):
                for _ in range(n):
                    totals.append(json.loads(await ws.recv())["data"]["observation"]["total"])
            assert totals == [k * (k + 1) // 2 for k in range(1, n + 1)]
    assert app.state.stats.steps == 200


def test_read_pause_flag_semantics():
    class FakeQueue:
        def __init__(self, n):
            self.n = n

        def qsize(self):
            return self.n

    proto = LeanWebSocketProtocol.__new__(LeanWebSocketProtocol)
    proto._paused = False
    proto._queue_high = 3
    proto.queue = FakeQueue(1)
    assert proto.read_paused is True  # short queue: the base class skips pausing
    proto.queue = FakeQueue(3)
    assert proto.read_paused is False  # full: the base class pauses reading...
    proto.read_paused = True
    proto.queue = FakeQueue(0)
    assert proto.read_paused is True  # ...and resumes once drained
    proto.read_paused = False
    assert proto._paused is False
