"""Held-out evaluation: success rate of a policy on fixed env seeds."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from forge_env.rollout._collector import CollectorConfig, EnvSource, RolloutCollector
from forge_env.rollout._episode import RolloutConfig
from forge_env.rollout._trajectory import Task

__all__ = ["EvalResult", "evaluate"]


@dataclasses.dataclass(slots=True)
class EvalResult:
    """Held-out evaluation of one policy."""

    episodes: int
    success_rate: float
    invalid_reply_rate: float
    """Invalid replies per turn played."""
    mean_turns: float
    seconds: float
    mean_reward: float = 0.0
    failed: int = 0
    """Episodes ended by an infrastructure failure (env error, deadline), counted as unsuccessful."""
    version: int = 0
    """Policy version of the generator's weights (the oldest turn's)."""


async def evaluate(
    agent: Any,
    generator: Any,
    envs: EnvSource,
    *,
    episodes: int,
    rollout: RolloutConfig | None = None,
    first_seed: int = 0,
    max_concurrent_episodes: int = 128,
) -> EvalResult:
    """Play one episode per seed ``first_seed .. first_seed + episodes - 1`` and score them.

    Training tasks must use other seeds for the result to be held out (``apps.sft`` trains from
    seed 1,000,000, ``apps.agent_grpo`` from 2,000,000).

    Example::

        result = await evaluate(agent, generator, make_env, episodes=128,
                                rollout=RolloutConfig(max_turns=6))
        print(f"{result.success_rate:.0%} of {result.episodes} held-out episodes")
    """
    if episodes < 1:
        raise ValueError(f"evaluate needs episodes >= 1, got {episodes}")
    collector = RolloutCollector(agent, generator, envs, CollectorConfig(
        max_concurrent_episodes=max_concurrent_episodes, rollout=rollout or RolloutConfig()))
    started = time.perf_counter()
    groups = await collector.collect([Task(seed=first_seed + s) for s in range(episodes)])
    trajs = [t for g in groups for t in g.trajectories]
    turns = sum(t.num_turns for t in trajs)
    return EvalResult(
        episodes=len(trajs),
        success_rate=sum(t.success for t in trajs) / len(trajs),
        invalid_reply_rate=sum(t.invalid_actions for t in trajs) / max(turns, 1),
        mean_turns=turns / len(trajs),
        seconds=time.perf_counter() - started,
        mean_reward=sum(t.total_reward for t in trajs) / len(trajs),
        failed=sum(t.failed for t in trajs),
        version=min((min(t.versions, default=0) for t in trajs), default=0),
    )
