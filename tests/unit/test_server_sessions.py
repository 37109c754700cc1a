"""Unit tests of the session table (capacity, reaping, close semantics) and of serve()."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from forge_env import Action, AsyncEnv, Observation, ResetResult, StepResult
from forge_env.server import UVICORN_WS_SETTINGS, create_app, serve, uvicorn_config
from forge_env.server._factory import EnvFactory
from forge_env.server._sessions import CapacityError, FactoryFailedError, ServerStats, SessionManager


class Obs(Observation):
    n: int = 0


class Env(AsyncEnv[Obs, Action]):
    observation_type = Obs
    closes = 0
    fail_close = False

    async def reset(self, *, seed=None, options=None):
        return ResetResult(Obs(), {})

    async def step(self, action):
        return StepResult(Obs(), 0.0, False, False, {})

    async def close(self) -> None:
        type(self).closes += 1
        if self.fail_close:
            raise RuntimeError("close failed")


@pytest.fixture(autouse=True)
def _reset_counts():
    Env.closes = 0
    Env.fail_close = False


def manager(factory=Env, *, max_sessions=3, idle_timeout=None) -> SessionManager:
    stats = ServerStats(max_sessions=max_sessions)
    return SessionManager(EnvFactory(factory), max_sessions=max_sessions, idle_timeout=idle_timeout, stats=stats)


async def test_open_close_and_capacity():
    m = manager()
    sessions = [await m.open("ws") for _ in range(3)]
    assert len({s.id for s in sessions}) == 3
    with pytest.raises(CapacityError) as info:
        await m.open("ws")
    assert (info.value.active_sessions, info.value.max_sessions) == (3, 3)
    await m.close(sessions[0], "closed")
    await m.close(sessions[0], "closed")  # idempotent: close() runs once
    assert Env.closes == 1
    replacement = await m.open("ws")  # the freed slot is usable again
    assert replacement.id in m.sessions and len(m.sessions) == 3
    s = m.stats
    assert (s.total_sessions, s.closed_sessions, s.rejected_sessions, s.peak_sessions) == (4, 1, 1, 3)


async def test_capacity_holds_while_async_factories_are_pending():
    gate = asyncio.Event()

    async def slow_factory() -> Env:
        await gate.wait()
        return Env()

    m = manager(slow_factory, max_sessions=2)
    pending = [asyncio.create_task(m.open("ws")) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(CapacityError):  # two slots reserved, none finished yet
        await m.open("ws")
    gate.set()
    assert len(await asyncio.gather(*pending)) == 2


async def test_factory_failure_frees_the_slot():
    calls = []

    def flaky() -> Env:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first call fails")
        return Env()

    m = manager(flaky, max_sessions=1)
    with pytest.raises(FactoryFailedError, match="ValueError: first call fails"):
        await m.open("ws")
    assert (await m.open("ws")) is not None


async def test_close_errors_are_counted_not_raised(caplog):
    Env.fail_close = True
    m = manager()
    s = await m.open("ws")
    with caplog.at_level(logging.ERROR):
        await m.close(s, "closed")
    assert m.stats.env_close_errors == 1
    assert "raised in close()" in caplog.text


async def test_close_finishes_even_when_the_caller_is_cancelled():
    finished = []

    class SlowClose(Env):
        async def close(self) -> None:
            await asyncio.sleep(0.2)
            finished.append(1)

    m = manager(SlowClose)
    s = await m.open("ws")
    task = asyncio.create_task(m.close(s, "disconnected"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [1]


async def test_reaper_closes_only_idle_sessions():
    m = manager(idle_timeout=0.2)
    sessions = [await m.open("ws") for _ in range(3)]
    idle, busy, active = sessions
    notified = []

    async def on_evict(reason: str, message: str) -> None:
        notified.append((reason, message))

    idle.attached, idle.on_evict = True, on_evict
    busy.busy = True
    m.start()
    try:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            active.last_active = time.monotonic()
            await asyncio.sleep(0.02)
    finally:
        await m.stop()
    assert idle.end_reason == "idle_timeout" and idle.closed
    assert notified and notified[0][0] == "idle_timeout" and "session_idle_timeout=0.2s" in notified[0][1]
    # busy (a message in progress) and active were left alone until stop() shut down
    assert busy.end_reason == "shutdown" and active.end_reason == "shutdown"
    assert m.stats.reaped_sessions == 1
    assert m.sessions == {}
    assert Env.closes == 3


async def test_no_reaper_without_timeout():
    m = manager(idle_timeout=None)
    m.start()
    s = await m.open("ws")
    s.last_active -= 3600
    assert await m.reap_idle() == 0
    assert not s.closed
    await m.stop()
    assert s.end_reason == "shutdown"


# --- serve() ------------------------------------------------------------------------------


def test_serve_binds_loopback_and_warns_otherwise(monkeypatch, caplog):
    import uvicorn

    configs = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: configs.append(self.config))
    with caplog.at_level(logging.WARNING, logger="forge_env.server._serve"):
        serve(Env, port=8123)
        assert caplog.text == ""
        serve(Env, host="0.0.0.0", port=8124, max_sessions=7)
    assert "reachable from other machines" in caplog.text
    assert [(c.host, c.port) for c in configs] == [("127.0.0.1", 8123), ("0.0.0.0", 8124)]
    assert configs[1].app.state.stats.max_sessions == 7
    for key, value in UVICORN_WS_SETTINGS.items():
        assert getattr(configs[0], key) == value


def test_serve_accepts_an_app(monkeypatch, caplog):
    import uvicorn

    configs = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: configs.append(self.config))
    app = create_app(Env, max_sessions=5)
    with caplog.at_level(logging.WARNING, logger="forge_env.server._serve"):
        serve(app, host="localhost", max_sessions=9)
    assert configs[0].app is app
    assert "ignored" in caplog.text


def test_uvicorn_config_overrides():
    cfg = uvicorn_config(object(), port=9, ws_ping_interval=None)
    assert cfg.port == 9 and cfg.ws_ping_interval is None
    assert cfg.ws_per_message_deflate is False
