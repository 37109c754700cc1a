"""Reward workers as Monarch actors (MonarchRewardWorkers) on real local process meshes.

Two replicas score exactly like the in-process RewardWorkers and share the work; a replica
killed with SIGKILL mid-group loses no score (its calls are retried on the other one, and it
is respawned); every replica gone is a clear error naming the role; no process is left behind.
The reward functions are real ones from tests/unit/reward_fns.py, loaded by spec in each process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# forge_env.monarch first: it sets the supervision poll period that Monarch reads on import.
from forge_env.monarch import ServiceUnavailableError
from forge_env.monarch._reward import MonarchRewardWorkers
from forge_env.reward import RewardConfig, RewardWorkers
from forge_env.rollout import Task, Trajectory, TrajectoryGroup, Turn

from runtime_test_env import alive

pytestmark = [pytest.mark.monarch, pytest.mark.usefixtures("monarch_processes_reaped"),
              pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

UNIT = Path(__file__).resolve().parents[1] / "unit"
REWARD_FNS_FILE = UNIT / "reward_fns.py"


@pytest.fixture
def reward_fns_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``reward_fns`` importable here by module name (as a user's script folder is); the replicas
    must then get its folder on PYTHONPATH from MonarchRewardWorkers."""
    monkeypatch.syspath_prepend(str(UNIT))


def _groups(seeds: range, n: int = 4) -> list[TrajectoryGroup]:
    groups = []
    for seed in seeds:
        trajectories = [
            Trajectory(env_name="echo", task=Task(seed=seed), token_ids=list(range(20)), logprobs=[0.0] * 20,
                       loss_mask=[0] * 5 + [1] * 15, prompt_len=5, group_index=i,
                       turns=[Turn(index=0, completion_start=5, completion_end=20, text="x", finish_reason="stop",
                                   version=0, reward=0.25 * i)])
            for i in range(n)
        ]
        groups.append(TrajectoryGroup(task=Task(seed=seed), trajectories=trajectories))
    return groups


def _summary(groups: list[TrajectoryGroup]) -> list[tuple[Any, ...]]:
    return [(t.task.seed, t.group_index, tuple(t.rewards), t.info.get("reward_fn"), t.info.get("reward_fn_error"))
            for g in groups for t in g.trajectories]


async def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_two_replicas_score_like_local_and_share_the_work(reward_fns_on_path: None) -> None:
    config = RewardConfig(fn="reward_fns:sleepy_seed_score", weight=0.5, kwargs={"seconds": 0.05}, concurrency=4)
    local_groups, remote_groups = _groups(range(3)), _groups(range(3))
    async with RewardWorkers(config) as local:
        for group in local_groups:
            await local.score_group(group)
    async with MonarchRewardWorkers(config, replicas=2, threads_per_proc=1) as remote:
        for group in remote_groups:
            await remote.score_group(group)
        metrics = remote.metrics()
        health = await remote.replica_health()

    assert _summary(remote_groups) == _summary(local_groups)
    assert all(t.info["reward_fn"] == (t.task.seed or 0) + 0.1 * t.group_index
               for g in remote_groups for t in g.trajectories)
    assert metrics["reward_fn/scored"] == 12 and metrics["reward_fn/errors"] == 0
    assert metrics["reward_fn/replicas_healthy"] == 2
    calls = [metrics["service/reward/replica0/calls"], metrics["service/reward/replica1/calls"]]
    assert sum(calls) == 12 and min(calls) >= 3  # least-loaded routing spreads every group
    pids = [h["pid"] for h in health]
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert sorted(h["calls"] for h in health) == sorted(calls)
    assert not any(alive(pid) for pid in pids)


async def test_a_replica_killed_mid_group_loses_no_score() -> None:
    # By path: each process imports the file itself (no PYTHONPATH needed).
    config = RewardConfig(fn=f"{REWARD_FNS_FILE}:sleepy_seed_score", kwargs={"seconds": 0.5}, concurrency=2)
    (group,) = _groups(range(7, 8), n=8)
    async with MonarchRewardWorkers(config, replicas=2, threads_per_proc=1,
                                    health_check_interval_s=0.5) as rewards:
        service = rewards.service
        victim = service.replicas[0]
        assert victim is not None
        scoring = asyncio.ensure_future(rewards.score_group(group))
        await _until(lambda: service.metrics["service/reward/replica0/in_flight"] > 0)
        await asyncio.sleep(0.2)  # its first calls are inside the function now
        os.kill(victim.pids[0], signal.SIGKILL)
        await asyncio.wait_for(scoring, 60)
        metrics = rewards.metrics()
        await service.wait_healthy(timeout_s=60)
        respawned = service.replicas[0]
        assert respawned is not None and respawned.generation == 1 and respawned.pids[0] != victim.pids[0]
        assert service.metrics["service/reward/respawns"] == 1

    assert [t.info.get("reward_fn") for t in group.trajectories] == pytest.approx([7 + 0.1 * i for i in range(8)])
    assert all("reward_fn_error" not in t.info for t in group.trajectories)
    assert metrics["reward_fn/scored"] == 8 and metrics["reward_fn/errors"] == 0
    assert metrics["service/reward/replica_deaths"] == 1 and metrics["service/reward/retries"] >= 1
    assert metrics["service/reward/failures"] == 0
    assert not alive(victim.pids[0])


async def test_every_replica_gone_is_a_clear_error() -> None:
    config = RewardConfig(fn=f"{REWARD_FNS_FILE}:seed_score")
    rewards = MonarchRewardWorkers(config, replicas=2, respawn=False, health_check_interval_s=0.2)
    try:
        await rewards.start()
        service = rewards.service
        pids = [r.pids[0] for r in service.replicas if r is not None]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        await _until(lambda: service.replica_states() == ["failed", "failed"])
        (group,) = _groups(range(1))
        with pytest.raises(ServiceUnavailableError) as info:
            await rewards.score_group(group)
    finally:
        await rewards.aclose()
    message = str(info.value)
    assert message.startswith("reward: every reward process of") and "seed_score" in message
    assert "respawn is off" in message and "no replica of RewardActor is left" in message
    assert all("reward_fn" not in t.info for t in group.trajectories)
    assert not any(alive(pid) for pid in pids)


async def test_a_function_that_does_not_load_in_the_replicas_fails_the_start(tmp_path: Path) -> None:
    fragile = tmp_path / "fragile_rewards.py"
    fragile.write_text(
        "import os\n"
        "if os.environ.get('FRAGILE_REWARDS'):\n"
        "    raise RuntimeError('no judge model in this process')\n"
        "def score(trajectory):\n"
        "    return 1.0\n"
    )
    rewards = MonarchRewardWorkers(RewardConfig(fn=f"{fragile}:score"), env={"FRAGILE_REWARDS": "1"})
    try:
        with pytest.raises(ServiceUnavailableError) as info:
            await rewards.start()
    finally:
        await rewards.aclose()
    message = str(info.value)
    assert "failed to start" in message and "loads here but not in reward process" in message
    assert "no judge model in this process" in message
