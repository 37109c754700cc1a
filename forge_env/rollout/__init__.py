"""Multi-turn rollouts that keep the generator's exact tokens.

:func:`run_episode` plays one episode and returns a :class:`Trajectory`: every token id, the
generator's logprobs, a loss mask that is 1 exactly on sampled tokens, per-turn rewards and
policy versions, how it ended. :class:`RolloutCollector` runs many at once, G per task.

>>> from forge_env.rollout import Task, Trajectory
>>> Trajectory(env_name="echo", task=Task(seed=1)).total_reward
0.0
"""

from __future__ import annotations

from forge_env.rollout._collector import CollectorConfig, CollectorStats, EnvSource, RolloutCollector, open_env
from forge_env.rollout._episode import RolloutConfig, current_episode, run_episode
from forge_env.rollout._evaluate import EvalResult, evaluate
from forge_env.rollout._trajectory import (
    FAILURE_REASONS,
    Task,
    TerminationReason,
    Trajectory,
    TrajectoryGroup,
    Turn,
)

__all__ = [
    "FAILURE_REASONS",
    "CollectorConfig",
    "CollectorStats",
    "EnvSource",
    "EvalResult",
    "RolloutCollector",
    "RolloutConfig",
    "Task",
    "TerminationReason",
    "Trajectory",
    "TrajectoryGroup",
    "Turn",
    "current_episode",
    "evaluate",
    "open_env",
    "run_episode",
]
