"""Reward functions applied to finished trajectories, on top of the env's own per-turn rewards.

A reward function is any ``fn(trajectory) -> float`` (or ``async def``) named by
``"module:function"``: a verifier, an LLM judge, a length penalty. :class:`RewardWorkers`
applies it to every trajectory of a group: the score, times ``weight``, is added to the last
turn's reward, and ``trajectory.info["reward_fn"]`` records it. A call that raises or passes
its deadline adds nothing: ``info["reward_fn_error"]`` says why, the metrics count it, and the
run goes on. ``forge_env.monarch.MonarchRewardWorkers`` does the same with the function in
replica processes of its own.

>>> import asyncio
>>> from forge_env.reward import RewardConfig, RewardWorkers
>>> from forge_env.rollout import Task, Trajectory, TrajectoryGroup, Turn
>>> turn = Turn(index=0, completion_start=0, completion_end=100, text="...", finish_reason="stop",
...             version=0, reward=1.0)
>>> group = TrajectoryGroup(task=Task(seed=0), trajectories=[
...     Trajectory(env_name="echo", task=Task(seed=0), loss_mask=[1] * 100, turns=[turn])])
>>> config = RewardConfig(fn="forge_env.reward:length_penalty", weight=1.0,
...                       kwargs={"budget": 50, "per_token": 0.01})
>>> async def main():
...     async with RewardWorkers(config) as workers:
...         await workers.score_group(group)
>>> asyncio.run(main())
>>> group.trajectories[0].total_reward  # 1.0 from the env, -0.5 for 50 tokens over budget
0.5

Your own function, in ``my_rewards.py`` on ``PYTHONPATH`` (or named by path,
``"path/to/my_rewards.py:exact_match"``)::

    def exact_match(trajectory: Trajectory) -> float:
        return float(trajectory.turns[-1].text.strip() == trajectory.task.options["answer"])
"""

from __future__ import annotations

from forge_env.reward._builtin import length_penalty
from forge_env.reward._config import RewardConfig
from forge_env.reward._load import RewardFn, RewardSpecError, load_reward_fn
from forge_env.reward._workers import RewardWorkers

__all__ = [
    "RewardConfig",
    "RewardFn",
    "RewardSpecError",
    "RewardWorkers",
    "length_penalty",
    "load_reward_fn",
]
