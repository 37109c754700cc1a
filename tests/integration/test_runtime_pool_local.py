"""EnvPool over real subprocess servers: leases spread across servers, a server killed with
SIGKILL mid-episode fails that lease clearly, is restarted, and later leases work."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from forge_env import ConnectionClosedError, EnvTimeoutError
from runtime_test_env import alive, counter_env_source

from forge_env.runtime import EnvPool, LocalProcessRuntime

pytestmark = pytest.mark.slow

COUNTER_SOURCE = counter_env_source(done_at=100)


async def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


@pytest.fixture
def counter_spec(tmp_path) -> str:
    path = tmp_path / "rt_pool_counter_env.py"
    path.write_text(COUNTER_SOURCE)
    return f"{path}:CounterEnv"


async def test_pool_spreads_leases_survives_a_killed_server_and_counts_the_restart(counter_spec):
    pool = EnvPool(
        lambda: LocalProcessRuntime(counter_spec, stop_timeout=2.0),
        size=3,
        max_sessions_per_server=2,
        health_interval=0.5,
        lease_timeout=10.0,
    )
    started = time.monotonic()
    async with pool:
        startup_s = time.monotonic() - started
        pids = [r.pid for r in pool.runtimes]
        assert len(set(pids)) == 3 and all(alive(p) for p in pids)

        # 6 concurrent leases fill 3 servers x 2 sessions: two per server.
        hold = asyncio.Event()
        served: list[int] = []

        async def episode() -> None:
            async with pool.lease() as env:
                obs, _ = await env.reset(seed=0)
                served.append(obs.pid)
                await hold.wait()
                result = await env.step({"by": 2})
                assert result.observation.n == 2 and result.observation.pid == obs.pid

        tasks = [asyncio.create_task(episode()) for _ in range(6)]
        assert await wait_for(lambda: len(served) == 6, timeout=15)
        assert sorted(served.count(p) for p in pids) == [2, 2, 2]
        assert pool.stats()["leases_active"] == 6
        # The pool is full: one more lease waits, then times out naming the capacity.
        with pytest.raises(EnvTimeoutError, match="capacity 6 sessions, 6 leased"):
            async with pool.lease(timeout=0.3):
                pass
        hold.set()
        await asyncio.gather(*tasks)

        # Kill -9 the server under an in-flight episode.
        with pytest.raises(ConnectionClosedError) as info:
            async with pool.lease() as env:
                obs, _ = await env.reset(seed=0)
                victim = obs.pid
                os.kill(victim, signal.SIGKILL)
                assert await wait_for(lambda: not alive(victim), timeout=5)
                await env.step({"by": 1})
        message = str(info.value)
        assert "died during this lease" in message and "episode is lost" in message
        index = pids.index(victim)
        assert f"env server #{index}" in message

        killed_at = time.monotonic()
        assert await wait_for(lambda: pool.stats()["restarts"] == 1 and pool.stats()["healthy"] == 3, timeout=15)
        recovery_s = time.monotonic() - killed_at
        new_pid = pool.runtimes[index].pid
        assert new_pid != victim and alive(new_pid)
        stats = pool.stats()
        assert stats["failures"] == 1 and stats["per_server"][index]["restarts"] == 1

        # Later leases work on every server, the restarted one included.
        later: set[int] = set()
        for _ in range(6):
            async with pool.lease() as env:
                obs, _ = await env.reset(seed=5)
                assert (await env.step({"by": 1})).observation.n == 6
                later.add(obs.pid)
        assert later == {new_pid, *(p for p in pids if p != victim)}

        # A server killed while idle is found by the health loop and restarted too.
        idle_victim = pool.runtimes[(index + 1) % 3].pid
        os.kill(idle_victim, signal.SIGKILL)
        assert await wait_for(lambda: pool.stats()["restarts"] == 2 and pool.stats()["healthy"] == 3, timeout=15)
        final_pids = [r.pid for r in pool.runtimes]
        stats = pool.stats()
        assert stats["leases_total"] == 6 + 1 + 6 and stats["leases_active"] == 0
        assert stats["lease_timeouts"] == 1 and 0 <= stats["lease_wait_p50_s"] <= stats["lease_wait_max_s"] < 5
    assert not any(alive(p) for p in final_pids + pids)
    print(f"\npool of 3: startup {startup_s:.2f}s, kill-to-healthy {recovery_s:.2f}s, stats {stats}")
