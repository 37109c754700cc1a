"""EnvPool logic with fast in-process runtimes: balancing, waiting, health, restarts, stats.

The same paths run against real subprocess servers in
tests/integration/test_runtime_pool_local.py.
"""

from __future__ import annotations

import asyncio

import pytest

from forge_env import (
    Action,
    AsyncEnv,
    ConnectError,
    ConnectionClosedError,
    EnvTimeoutError,
    Observation,
    RemoteExecutionError,
    ResetResult,
    StepResult,
)
from forge_env import RuntimeStartError
from forge_env.runtime import EnvPool, InProcessRuntime


async def eventually(predicate, timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true (generous timeout: CI machines are slow)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


class Ping(Action):
    pass


class Where(Observation):
    server: int


class FlakyRuntime(InProcessRuntime):
    """An in-process runtime we can 'kill': its sessions then raise ConnectionClosedError."""

    def __init__(self, index: int, *, restart_fails: int = 0) -> None:
        self.index = index
        self.dead = False
        self.restart_fails = restart_fails
        self.health_calls = 0
        self.sessions: list[AsyncEnv] = []
        runtime = self

        class ServerEnv(AsyncEnv[Where, Ping]):
            action_type = Ping
            observation_type = Where

            async def reset(self, *, seed=None, options=None):
                return ResetResult(Where(server=runtime._live_index()), {})

            async def step(self, action):
                return StepResult(Where(server=runtime._live_index()), 1.0, False, False, {})

        super().__init__(ServerEnv)

    @property
    def url(self) -> str:
        return f"fake://{self.index}"

    def _live_index(self) -> int:
        if self.dead:
            raise ConnectionClosedError("the server closed the session", url=self.url)
        return self.index

    async def health(self) -> bool:
        self.health_calls += 1
        return self.running and not self.dead

    async def _session(self):
        if self.dead:
            raise ConnectError("connection refused", url=self.url)
        env = await super()._session()
        self.sessions.append(env)
        return env

    async def _start(self) -> None:
        if self.restart_fails > 0 and self.state.value == "stopped":
            self.restart_fails -= 1
            raise RuntimeStartError("could not start")
        await super()._start()
        self.dead = False


async def test_concurrent_leases_spread_least_loaded():
    runtimes = [FlakyRuntime(i) for i in range(3)]
    async with EnvPool(runtimes, max_sessions_per_server=4, health_interval=60) as pool:
        seen: list[int] = []
        gate = asyncio.Event()

        async def one() -> None:
            async with pool.lease() as env:
                obs, _ = await env.reset()
                seen.append(obs.server)
                await gate.wait()

        tasks = [asyncio.create_task(one()) for _ in range(6)]
        assert await eventually(lambda: len(seen) == 6)
        assert sorted(seen) == [0, 0, 1, 1, 2, 2]
        stats = pool.stats()
        assert stats["leases_active"] == 6 and [s["active"] for s in stats["per_server"]] == [2, 2, 2]
        gate.set()
        await asyncio.gather(*tasks)
        stats = pool.stats()
        assert stats["leases_active"] == 0 and stats["leases_total"] == 6
        assert stats["servers"] == 3 and stats["healthy"] == 3


async def test_sequential_leases_rotate_and_sessions_are_closed():
    runtimes = [FlakyRuntime(i) for i in range(2)]
    async with EnvPool(runtimes, health_interval=60) as pool:
        order = []
        for _ in range(4):
            async with pool.lease() as env:
                order.append((await env.reset())[0].server)
        assert order == [0, 1, 0, 1]
        assert sum(len(r.sessions) for r in runtimes) == 4


async def test_lease_waits_for_a_slot_then_times_out_with_capacity_message():
    async with EnvPool([FlakyRuntime(0)], max_sessions_per_server=1, lease_timeout=0.2) as pool:
        async with pool.lease():
            with pytest.raises(EnvTimeoutError) as info:
                async with pool.lease():
                    pass
            message = str(info.value)
            assert "no env session free after 0.2s" in message
            assert "1 healthy of 1 servers" in message and "capacity 1 sessions, 1 leased" in message
            assert "raise size or max_sessions_per_server" in message

            # A waiter gets the slot as soon as it is returned.
            async def later():
                async with pool.lease(timeout=5.0) as env:
                    return (await env.reset())[0].server

            waiter = asyncio.create_task(later())
            await asyncio.sleep(0.05)
            assert not waiter.done()
        assert await waiter == 0
        stats = pool.stats()
        assert stats["lease_timeouts"] == 1
        assert 0.04 <= stats["lease_wait_max_s"] < 5.0


async def test_server_dying_mid_lease_raises_clear_error_and_is_restarted():
    runtimes = [FlakyRuntime(0), FlakyRuntime(1)]
    async with EnvPool(runtimes, health_interval=60) as pool:
        with pytest.raises(ConnectionClosedError) as info:
            async with pool.lease() as env:
                await env.reset()
                runtimes[0].dead = True  # killed -9 mid-episode
                await env.step(Ping())
        message = str(info.value)
        assert "env server #0 died during this lease" in message
        assert "episode is lost" in message and "take a new lease" in message
        assert isinstance(info.value.__cause__, ConnectionClosedError)
        assert await eventually(lambda: pool.stats()["restarts"] == 1)
        stats = pool.stats()
        assert stats["restarts"] == 1 and stats["failures"] == 1 and stats["healthy"] == 2
        assert runtimes[0].restarts == 1 and not runtimes[0].dead
        served = set()
        for _ in range(4):
            async with pool.lease() as env:
                served.add((await env.reset())[0].server)
        assert served == {0, 1}


async def test_env_error_on_a_live_server_passes_through_untouched():
    runtime = FlakyRuntime(0)
    async with EnvPool([runtime], health_interval=60) as pool:
        err = RemoteExecutionError("EXECUTION_ERROR: env raised")
        with pytest.raises(RemoteExecutionError) as info:
            async with pool.lease():
                raise err
        assert info.value is err
        with pytest.raises(ConnectionClosedError, match="idle") as info2:
            async with pool.lease():  # a session reaped as idle: server still healthy
                raise ConnectionClosedError("session reaped as idle")
        assert "died during this lease" not in str(info2.value)
        assert pool.stats()["restarts"] == 0 and pool.stats()["failures"] == 0


async def test_health_loop_restarts_a_dead_server():
    runtimes = [FlakyRuntime(0), FlakyRuntime(1)]
    async with EnvPool(runtimes, health_interval=0.02) as pool:
        runtimes[1].dead = True
        assert await eventually(lambda: pool.stats()["restarts"] == 1)
        assert pool.stats()["restarts"] == 1 and runtimes[1].restarts == 1
        assert pool.stats()["per_server"][1]["restarts"] == 1
        calls = runtimes[0].health_calls
        await asyncio.sleep(0.15)
        assert runtimes[0].health_calls >= calls + 2  # every server is checked periodically
        assert pool.stats()["restarts"] == 1  # a healthy server is left alone


async def test_session_open_failure_moves_to_another_server():
    runtimes = [FlakyRuntime(0), FlakyRuntime(1)]
    async with EnvPool(runtimes, health_interval=60) as pool:
        runtimes[0].dead = True
        async with pool.lease() as env:
            assert (await env.reset())[0].server == 1
        assert pool.stats()["failures"] == 1
        assert await eventually(lambda: pool.stats()["restarts"] == 1)
        assert pool.stats()["restarts"] == 1


async def test_failed_restart_builds_a_new_runtime_from_the_factory():
    built: list[FlakyRuntime] = []

    def factory() -> FlakyRuntime:
        runtime = FlakyRuntime(len(built), restart_fails=1 if not built else 0)
        built.append(runtime)
        return runtime

    async with EnvPool(factory, size=1, health_interval=0.02) as pool:
        first = built[0]
        first.dead = True
        assert await eventually(lambda: pool.stats()["restarts"] == 1)
        assert len(built) == 2 and pool.runtimes == [built[1]]
        assert pool.stats()["restarts"] == 1 and not first.running
        async with pool.lease() as env:
            assert (await env.reset())[0].server == 1


async def test_restart_failure_is_counted_and_retried():
    runtime = FlakyRuntime(0, restart_fails=2)
    async with EnvPool([runtime], health_interval=0.02, lease_timeout=0.05) as pool:
        runtime.dead = True
        assert await eventually(lambda: pool.stats()["restarts"] == 1)
        stats = pool.stats()
        assert stats["restart_failures"] == 2 and stats["restarts"] == 1 and stats["healthy"] == 1


async def test_lease_while_all_servers_down_times_out_naming_them():
    runtime = FlakyRuntime(0, restart_fails=1000)
    async with EnvPool([runtime], health_interval=0.02, lease_timeout=0.3) as pool:
        runtime.dead = True
        assert await eventually(lambda: pool.stats()["healthy"] == 0)
        with pytest.raises(EnvTimeoutError, match=r"0 healthy of 1 servers \(1 down/restarting\)"):
            async with pool.lease():
                pass


async def test_pool_misuse_errors():
    with pytest.raises(ValueError, match="size=3 but 1 runtimes"):
        EnvPool([FlakyRuntime(0)], size=3)
    with pytest.raises(ValueError, match="at least one runtime"):
        EnvPool([])
    with pytest.raises(TypeError, match="is not an EnvRuntime"):
        EnvPool([object()])  # type: ignore[list-item]
    pool = EnvPool([FlakyRuntime(0)])
    with pytest.raises(RuntimeError, match="not started"):
        async with pool.lease():
            pass


async def test_start_failure_stops_the_others():
    class Broken(FlakyRuntime):
        async def _start(self) -> None:
            raise RuntimeStartError("nope")

    good = FlakyRuntime(0)
    pool = EnvPool([good, Broken(1)])
    with pytest.raises(RuntimeStartError, match="nope"):
        await pool.start()
    assert not good.running
