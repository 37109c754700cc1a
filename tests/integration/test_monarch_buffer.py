"""The replay buffer as a Monarch actor (MonarchReplayBuffer): the same answers as a local
ReplayBuffer fed the same calls, wait_for woken by adds, a state that loads into either, and
a clear error once its process is killed. Real Monarch processes on this host."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest

from conftest import descendant_processes

pytestmark = [pytest.mark.monarch, pytest.mark.usefixtures("monarch_processes_reaped"),
              pytest.mark.asyncio(loop_scope="module")]


def _group(seed: int, version: int, rewards: tuple[float, ...] = (0.0, 1.0)) -> Any:
    from forge_env.rollout import Task, Trajectory, TrajectoryGroup, Turn

    def traj(reward: float) -> Trajectory:
        turn = Turn(index=0, completion_start=1, completion_end=3, text="x", finish_reason="stop",
                    version=version, reward=reward)
        return Trajectory(env_name="e", task=Task(seed=seed), token_ids=[1, 2, 3], logprobs=[0.0, -0.5, -0.25],
                          loss_mask=[0, 1, 1], prompt_len=1, turns=[turn])

    return TrajectoryGroup(task=Task(seed=seed), trajectories=[traj(r) for r in rewards])


async def test_same_answers_as_a_local_buffer_and_state_loads_into_either() -> None:
    from forge_env.buffer import BufferConfig, InProcessBuffer, ReplayBuffer
    from forge_env.monarch._buffer import MonarchReplayBuffer

    config = BufferConfig(capacity=5, max_policy_age=1, sampling="uniform", seed=3, drop_degenerate=True)
    local = InProcessBuffer(ReplayBuffer(config))
    async with MonarchReplayBuffer(config) as remote:
        assert remote.pid is not None and remote.pid != os.getpid()
        assert remote.pid in descendant_processes()
        calls = [_group(0, 0), _group(1, 0, (1.0, 1.0)), _group(2, 1), _group(3, 2), _group(4, 2), _group(5, 3),
                 _group(6, 3), _group(7, 3)]
        for g in calls:
            assert await remote.add(g) == await local.add(g)
        assert await remote.num_fresh(3) == await local.num_fresh(3) == 5
        picked_remote = [g.task.seed for g in await remote.sample(3, current_version=3)]
        picked_local = [g.task.seed for g in await local.sample(3, current_version=3)]
        assert picked_remote == picked_local
        stats = await remote.stats()
        assert stats == await local.stats()
        # 8 added: 1 degenerate, 2 evicted for capacity (5), 0 stale left to drop at v3? v2 is fresh
        assert stats["added"] == 8 and stats["dropped_degenerate"] == 1 and stats["dropped_capacity"] == 2
        assert stats["sampled"] == 3 and stats["size"] == 2

        state = json.loads(json.dumps(await remote.state_dict()))
        assert state == await local.state_dict()
        # the remote state loads into a local buffer and vice versa
        restored = ReplayBuffer(config)
        restored.load_state_dict(state)
        assert restored.stats() == stats
        async with MonarchReplayBuffer(config, name="buffer2") as second:
            await second.load_state_dict(await local.state_dict())
            assert await second.stats() == stats
            assert [g.task.seed for g in await second.sample(5, current_version=3)] == \
                   [g.task.seed for g in restored.sample(5, current_version=3)]
        metrics = remote.metrics()
        assert metrics["buffer/calls"] == 13  # pid, 8 adds, num_fresh, sample, stats, state_dict
        assert metrics["buffer/call_ms_mean"] > 0


async def test_wait_for_wakes_on_add_and_times_out() -> None:
    from forge_env.buffer import BufferConfig
    from forge_env.monarch._buffer import MonarchReplayBuffer

    async with MonarchReplayBuffer(BufferConfig(max_policy_age=0), poll_s=30.0) as buffer:
        assert await buffer.wait_for(1, current_version=0, timeout=0.3) is False
        waiter = asyncio.ensure_future(buffer.wait_for(2, current_version=1, timeout=20))
        await buffer.add(_group(0, 0))          # stale at version 1: does not count
        await buffer.add(_group(1, 1))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        started = time.monotonic()
        await buffer.add(_group(2, 1))
        assert await waiter is True
        # woken by the add, not by the 30 s poll
        assert time.monotonic() - started < 10
        with pytest.raises(ValueError, match="n_groups"):  # the buffer's own error, as is
            await buffer.sample(-1, current_version=1)
        assert len(await buffer.sample(5, current_version=1)) == 2


async def test_a_killed_buffer_process_gives_a_clear_error() -> None:
    from forge_env.buffer import BufferConfig
    from forge_env.monarch._buffer import BufferProcessError, MonarchReplayBuffer

    buffer = MonarchReplayBuffer(BufferConfig())
    async with buffer:
        await buffer.add(_group(0, 0))
        assert buffer.pid is not None
        os.kill(buffer.pid, signal.SIGKILL)
        with pytest.raises(BufferProcessError, match=r"died.*--resume"):
            for _ in range(50):  # the kill lands within a few calls
                await buffer.add(_group(1, 0))
                await asyncio.sleep(0.1)
        with pytest.raises(BufferProcessError, match="--resume"):  # and stays dead
            await buffer.stats()
    assert "dead" in repr(buffer)
