"""Reward functions shipped with forge-env, to point a :class:`RewardConfig` at."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.rollout import Trajectory

__all__ = ["length_penalty"]


def length_penalty(
    trajectory: "Trajectory", *, budget: int = 256, per_token: float = 0.01, max_penalty: float = 1.0
) -> float:
    """A negative reward for completion tokens over a budget: ``-min(max_penalty, per_token * over)``.

    ``over`` counts the tokens the policy sampled in the whole episode (every turn, the
    ``loss_mask`` ones) beyond ``budget``; env-side tokens (observations, template glue) do
    not count. Within the budget the reward is 0.0, so it only pushes against rambling;
    ``max_penalty`` keeps one runaway episode from outweighing the task's own reward.

    Use it with ``RewardConfig(fn="forge_env.reward:length_penalty", kwargs={"budget": 64})``.

    >>> from forge_env.rollout import Task, Trajectory
    >>> t = Trajectory(env_name="echo", task=Task(seed=0), loss_mask=[0] * 5 + [1] * 80)
    >>> length_penalty(t, budget=64, per_token=0.01)
    -0.16
    >>> length_penalty(t, budget=100)
    0.0

    Args:
        trajectory: the finished episode.
        budget: completion tokens allowed without penalty (>= 0).
        per_token: penalty per token over the budget (>= 0).
        max_penalty: the largest penalty (>= 0); the result is never below ``-max_penalty``.
    """
    if budget < 0 or per_token < 0 or max_penalty < 0:
        raise ValueError(
            f"length_penalty needs budget, per_token and max_penalty >= 0, got budget={budget}, "
            f"per_token={per_token}, max_penalty={max_penalty} (set them in RewardConfig.kwargs)"
        )
    over = max(0, trajectory.num_completion_tokens - budget)
    penalty = min(max_penalty, per_token * over)
    return -penalty if penalty else 0.0
