"""Real reward functions for the reward-worker tests, imported by spec ("reward_fns:seed_score",
or by path) in the test process and in Monarch reward processes."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from forge_env.rollout import Trajectory


def seed_score(trajectory: Trajectory) -> float:
    """A deterministic score: the task seed plus a tenth per sample index."""
    return float(trajectory.task.seed or 0) + 0.1 * trajectory.group_index


async def async_seed_score(trajectory: Trajectory) -> float:
    await asyncio.sleep(0)
    return seed_score(trajectory)


def sleepy_seed_score(trajectory: Trajectory, *, seconds: float = 0.3) -> float:
    """``seed_score`` after a sleep, so calls stay in flight for a while."""
    time.sleep(seconds)
    return seed_score(trajectory)


def boom_on_odd(trajectory: Trajectory) -> float:
    if trajectory.group_index % 2:
        raise ValueError(f"sample {trajectory.group_index} is odd")
    return 1.0


def slow_first(trajectory: Trajectory, *, seconds: float = 1.0) -> float:
    """Sample 0 sleeps ``seconds`` (past a short deadline); the others answer at once."""
    if trajectory.group_index == 0:
        time.sleep(seconds)
    return 1.0


async def async_slow_first(trajectory: Trajectory, *, seconds: float = 30.0) -> float:
    if trajectory.group_index == 0:
        await asyncio.sleep(seconds)
    return 1.0


async def async_blocking_first(trajectory: Trajectory, *, seconds: float = 2.0) -> float:
    """An ``async def`` that blocks its event loop (sample 0 sleeps without awaiting)."""
    if trajectory.group_index == 0:
        time.sleep(seconds)
    return 1.0


def bad_return(trajectory: Trajectory) -> Any:
    return [None, "1.0", float("nan"), 2][trajectory.group_index % 4]


# Two calls must meet here (a Barrier of two) or both fail: scored at all proves they ran at once.
_pair = threading.Barrier(2, timeout=20)
_lock = threading.Lock()
_running = 0
max_running = 0


def pair_up(trajectory: Trajectory) -> float:
    global _running, max_running
    with _lock:
        _running += 1
        max_running = max(max_running, _running)
    try:
        _pair.wait()
        time.sleep(0.05)  # linger, so a third call (if any were let in) would overlap
        return 1.0
    finally:
        with _lock:
            _running -= 1


def scaled(trajectory: Trajectory, *, factor: float) -> float:
    return factor * seed_score(trajectory)


def two_args(trajectory: Trajectory, other: Any) -> float:
    return 0.0


class Judge:
    def __call__(self, trajectory: Trajectory) -> float:
        return 0.5


judge = Judge()
not_a_function = 42
