"""forge_env.server under load: hundreds of isolated sessions at once, and thousands of
episodes through one server without the session table or memory growing."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import tracemalloc

import pytest
import websockets

from forge_env import Action, AsyncEnv, Observation, ResetResult, StepResult
from forge_env.server import create_app

OPEN = [0]
CLOSED = [0]
_lock = threading.Lock()


class Move(Action):
    dx: int


class Pos(Observation):
    x: int
    seed: int | None


class Walker(AsyncEnv[Pos, Move]):
    """A 1-D walk whose start is the seed: sessions that share state would show it."""

    action_type = Move
    observation_type = Pos

    def __init__(self) -> None:
        with _lock:
            OPEN[0] += 1
        self.x = 0
        self.seed: int | None = None

    async def reset(self, *, seed=None, options=None):
        self.seed, self.x = seed, (seed or 0) * 1000
        return ResetResult(Pos(x=self.x, seed=seed), {})

    async def step(self, action: Move):
        await asyncio.sleep(0)  # yield, so concurrent sessions interleave
        self.x += action.dx
        return StepResult(Pos(x=self.x, seed=self.seed), 1.0, False, False, {})

    async def close(self) -> None:
        with _lock:
            CLOSED[0] += 1


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


async def ask(ws, frame) -> dict:
    await ws.send(json.dumps(frame))
    return json.loads(await ws.recv())


@pytest.fixture(autouse=True)
def _counters():
    OPEN[0] = CLOSED[0] = 0


async def test_300_concurrent_sessions_are_isolated(serve_app):
    n = 300
    app = create_app(Walker, max_sessions=n)
    url = serve_app(app)
    sockets = []
    try:
        async with asyncio.timeout(60):
            for _ in range(n):  # all connected at once before any step
                sockets.append(await websockets.connect(ws_url(url), compression=None))
            while app.state.stats.active_sessions < n:  # envs are made after the handshake
                await asyncio.sleep(0.01)

            async def episode(i: int, ws) -> tuple[int, int, str]:
                await ask(ws, {"type": "reset", "data": {"seed": i, "episode_id": f"ep{i}"}})
                last = None
                for k in range(1, 6):
                    last = await ask(ws, {"type": "step", "data": {"dx": i % 7 + k}})
                state = await ask(ws, {"type": "state"})
                return last["data"]["observation"]["x"], state["data"]["step_count"], state["data"]["episode_id"]

            results = await asyncio.gather(*(episode(i, ws) for i, ws in enumerate(sockets)))
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    for i, (x, steps, episode_id) in enumerate(results):
        assert x == i * 1000 + sum(i % 7 + k for k in range(1, 6)), i
        assert steps == 5
        assert episode_id == f"ep{i}"
    async with asyncio.timeout(10):
        while app.state.stats.active_sessions:
            await asyncio.sleep(0.05)
    assert app.state.stats.peak_sessions == n
    assert (OPEN[0], CLOSED[0]) == (n, n)


@pytest.mark.slow
async def test_thousands_of_episodes_leave_no_residue(serve_app):
    """3000 episodes over 600 connections (20 at a time): the session table ends empty,
    every env is closed, and traced memory does not grow with the episode count."""
    app = create_app(Walker, max_sessions=64)
    url = serve_app(app)
    server = app.state.env_server

    async def connection(c: int, episodes: int) -> None:
        async with websockets.connect(ws_url(url), compression=None) as ws:
            for e in range(episodes):
                await ask(ws, {"type": "reset", "data": {"seed": c * 10 + e}})
                for _ in range(3):
                    await ask(ws, {"type": "step", "data": {"dx": 1}})
            await ws.send(json.dumps({"type": "close"}))

    async def run(connections: int, episodes_each: int) -> None:
        sem = asyncio.Semaphore(20)

        async def one(c: int) -> None:
            async with sem:
                await connection(c, episodes_each)

        async with asyncio.timeout(120):
            await asyncio.gather(*(one(c) for c in range(connections)))
            while server.manager.sessions:
                await asyncio.sleep(0.05)

    def load(connections: int) -> None:
        # The client runs on its own loop in another thread, so that what stays
        # allocated after it finishes is the server's.
        asyncio.run(run(connections, 5))

    await asyncio.to_thread(load, 100)  # warm-up: imports, caches, pools at steady size
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        await asyncio.to_thread(load, 600)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert server.manager.sessions == {}
    stats = app.state.stats
    assert stats.active_sessions == 0
    assert stats.total_sessions == 700 and stats.closed_sessions == 700
    assert stats.resets == 3500 and stats.steps == 10500
    assert (OPEN[0], CLOSED[0]) == (700, 700)
    # A per-episode leak of even 100 bytes would add 300 kB over these 3000 episodes.
    print(f"traced memory growth over 3000 episodes: {after - before} bytes")
    assert after - before < 256 * 1024, f"traced memory grew by {after - before} bytes"
