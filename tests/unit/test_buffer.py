"""ReplayBuffer: staleness, capacity, sampling orders, filters, JSON state round trip, wait_for."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from forge_env.buffer import BufferConfig, ReplayBuffer
from forge_env.rollout import Task, TerminationReason, Trajectory, TrajectoryGroup, Turn


def make_group(key: int, version: int = 0, rewards: tuple[float, ...] = (1.0, 0.0), *,
               versions: tuple[int, ...] | None = None,
               terminations: tuple[TerminationReason, ...] | None = None) -> TrajectoryGroup:
    trajs = []
    for i, r in enumerate(rewards):
        v = versions[i] if versions else version
        turn = Turn(index=0, completion_start=1, completion_end=3, text="ab", finish_reason="stop",
                    version=v, reward=r)
        trajs.append(Trajectory(env_name="t", task=Task(seed=key, options={"k": key}), token_ids=[5, 6, 7],
                                logprobs=[0.0, -0.25, -0.5], loss_mask=[0, 1, 1], prompt_len=1, turns=[turn],
                                termination=terminations[i] if terminations else "terminated",
                                group_index=i, info={"key": key}))
    return TrajectoryGroup(task=Task(seed=key, options={"k": key}), trajectories=trajs)


def seeds(groups: list[TrajectoryGroup]) -> list[int]:
    out = []
    for g in groups:
        assert g.task.seed is not None
        out.append(g.task.seed)
    return out


def check_accounting(buffer: ReplayBuffer) -> None:
    s = buffer.stats()
    assert s["added"] == (s["size"] + s["sampled"] + s["dropped_stale"] + s["dropped_capacity"]
                          + s["dropped_degenerate"] + s["dropped_empty"])


def test_stale_groups_are_dropped_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    buffer = ReplayBuffer(BufferConfig(max_policy_age=1))
    for v in range(4):
        buffer.add(make_group(key=v, version=v))
    with caplog.at_level(logging.INFO, logger="forge_env.buffer"):
        got = buffer.sample(10, current_version=3)      # versions < 3 - 1 = 2 are stale
    assert seeds(got) == [2, 3]
    stats = buffer.stats()
    assert (stats["dropped_stale"], stats["sampled"], stats["size"]) == (2, 2, 0)
    assert any("dropped 2 stale groups" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    check_accounting(buffer)


def test_staleness_is_judged_by_the_oldest_turn() -> None:
    buffer = ReplayBuffer(BufferConfig(max_policy_age=0))
    buffer.add(make_group(key=0, versions=(3, 2)))
    buffer.add(make_group(key=1, version=3))
    assert buffer.num_fresh(3) == 1
    assert buffer.stats()["oldest_version"] == 2 and buffer.stats()["newest_version"] == 3
    assert buffer.evict_stale(3) == 1
    assert buffer.evict_stale(3) == 0
    assert seeds(buffer.sample(5, current_version=3)) == [1]


def test_capacity_evicts_the_oldest() -> None:
    buffer = ReplayBuffer(BufferConfig(capacity=2))
    for k in range(3):
        assert buffer.add(make_group(key=k))
    assert len(buffer) == 2 and buffer.stats()["dropped_capacity"] == 1
    assert seeds(buffer.sample(5, current_version=0)) == [1, 2]
    check_accounting(buffer)


@pytest.mark.parametrize(("sampling", "expected"), [("fifo", [[0, 1], [2, 3], [4]]),
                                                    ("lifo", [[4, 3], [2, 1], [0]])])
def test_fifo_and_lifo(sampling: str, expected: list[list[int]]) -> None:
    buffer = ReplayBuffer(BufferConfig(sampling=sampling))  # type: ignore[arg-type]
    for k in range(5):
        buffer.add(make_group(key=k))
    assert [seeds(buffer.sample(2, current_version=0)) for _ in range(3)] == expected
    assert buffer.sample(2, current_version=0) == []


def test_uniform_is_seeded_and_without_replacement() -> None:
    def draws(seed: int) -> list[list[int]]:
        buffer = ReplayBuffer(BufferConfig(sampling="uniform", seed=seed))
        for k in range(20):
            buffer.add(make_group(key=k))
        return [seeds(buffer.sample(4, current_version=0)) for _ in range(5)]

    a, b = draws(7), draws(7)
    assert a == b
    assert sorted(k for batch in a for k in batch) == list(range(20))     # each group exactly once
    assert a != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    assert draws(8) != a


def test_degenerate_groups_dropped_only_when_asked() -> None:
    keep = ReplayBuffer(BufferConfig())
    assert keep.add(make_group(key=0, rewards=(1.0, 1.0)))
    drop = ReplayBuffer(BufferConfig(drop_degenerate=True))
    assert not drop.add(make_group(key=0, rewards=(1.0, 1.0)))
    assert drop.add(make_group(key=1, rewards=(1.0, 0.0)))
    assert drop.stats()["dropped_degenerate"] == 1 and len(drop) == 1
    check_accounting(drop)


def test_failed_trajectories_removed_when_asked() -> None:
    buffer = ReplayBuffer(BufferConfig(drop_failed=True))
    buffer.add(make_group(key=0, rewards=(1.0, 0.0, 0.5), terminations=("terminated", "env_error", "max_turns")))
    assert not buffer.add(make_group(key=1, terminations=("env_error", "episode_deadline")))
    stats = buffer.stats()
    assert (stats["dropped_failed"], stats["dropped_empty"], stats["size"]) == (3, 1, 1)
    (group,) = buffer.sample(1, current_version=0)
    assert [t.termination for t in group.trajectories] == ["terminated", "max_turns"]
    check_accounting(buffer)
    # Failed trajectories are kept by default (the advantages leave them out).
    default = ReplayBuffer()
    default.add(make_group(key=0, terminations=("terminated", "env_error")))
    assert len(default.sample(1, current_version=0)[0].trajectories) == 2


def test_state_round_trips_through_json_and_gives_the_same_future() -> None:
    cfg = BufferConfig(sampling="uniform", seed=3, max_policy_age=2, capacity=12)
    buffer = ReplayBuffer(cfg)
    for k in range(15):
        buffer.add(make_group(key=k, version=k // 3))
    buffer.sample(3, current_version=3)                    # evicts versions < 1, draws 3
    state = json.loads(json.dumps(buffer.state_dict()))

    restored = ReplayBuffer(cfg)
    restored.load_state_dict(state)
    assert restored.stats() == buffer.stats()
    for step in range(4):
        a = buffer.sample(2, current_version=4 + step // 2)
        b = restored.sample(2, current_version=4 + step // 2)
        assert [g.task for g in a] == [g.task for g in b]
        assert [[t.to_dict() for t in g.trajectories] for g in a] == [[t.to_dict() for t in g.trajectories] for g in b]
    assert restored.stats() == buffer.stats()
    assert restored.stats()["dropped_stale"] > 0


def test_load_state_checks_format_and_capacity() -> None:
    buffer = ReplayBuffer()
    for k in range(4):
        buffer.add(make_group(key=k))
    state = buffer.state_dict()
    small = ReplayBuffer(BufferConfig(capacity=2))
    small.load_state_dict(state)
    assert seeds(small.sample(5, current_version=0)) == [2, 3]
    assert small.stats()["dropped_capacity"] == 2
    with pytest.raises(ValueError, match="format"):
        ReplayBuffer().load_state_dict({**state, "format": 99})


async def test_wait_for_wakes_when_enough_fresh_groups_arrive() -> None:
    buffer = ReplayBuffer(BufferConfig(max_policy_age=0))
    waiter = asyncio.create_task(buffer.wait_for(2, current_version=1, timeout=5))
    buffer.add(make_group(key=0, version=0))     # stale at version 1: does not count
    buffer.add(make_group(key=1, version=1))
    await asyncio.sleep(0)
    assert not waiter.done()
    buffer.add(make_group(key=2, version=1))
    assert await waiter is True
    assert seeds(buffer.sample(2, current_version=1)) == [1, 2]


async def test_wait_for_times_out() -> None:
    buffer = ReplayBuffer()
    buffer.add(make_group(key=0))
    assert await buffer.wait_for(1, current_version=0, timeout=0.01) is True
    assert await buffer.wait_for(2, current_version=0, timeout=0.01) is False
    assert buffer._waiters == []


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BufferConfig(capacity=0)
    with pytest.raises(ValueError, match="max_policy_age"):
        BufferConfig(max_policy_age=-1)
    with pytest.raises(ValueError, match="sampling"):
        BufferConfig(sampling="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_groups"):
        ReplayBuffer().sample(-1, current_version=0)
