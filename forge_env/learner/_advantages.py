"""Group-relative advantages, per token, from the rewards of a group of trajectories.

GRPO needs no value model: each sample is scored against the other samples of the same task.

``episode`` mode (one score per trajectory, its total reward R_i)::

    A_i = (R_i - mean_j R_j) / (std_j R_j + eps)         std: population std (ddof=0)

``per_turn`` mode (one score per turn: the discounted return-to-go of the per-turn rewards)::

    G_it = r_it + gamma * G_i,t+1                         G after the last turn = 0
    A_it = (G_it - mean_jk G_jk) / (std_jk G_jk + eps)    mean/std over every turn of the group

Every sampled token of trajectory i (``loss_mask == 1``) gets A_i; in ``per_turn`` mode the
tokens of turn t (``completion_start..completion_end``) get A_it. Other tokens get 0.
Pure Python: importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

from forge_env.rollout._trajectory import Trajectory, TrajectoryGroup

__all__ = ["AdvantageConfig", "AdvantageMode", "group_advantages", "is_degenerate"]

AdvantageMode = Literal["episode", "per_turn"]

# Scores closer than this are equal: the group carries no signal and gets exact zeros.
_EQUAL_TOL = 1e-9


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AdvantageConfig:
    """How rewards become advantages.

    >>> AdvantageConfig(mode="per_turn", gamma=0.9).gamma
    0.9
    """

    mode: AdvantageMode = "episode"
    """``episode``: the total reward, one advantage per trajectory. ``per_turn``: discounted
    returns-to-go of the per-turn rewards, one advantage per turn (multi-turn credit assignment)."""
    normalize_std: bool = True
    """Divide by the group's std. Dr.GRPO turns it off (it biases towards too easy / too hard tasks)."""
    gamma: float = 1.0
    """Discount of later turns' rewards in ``per_turn`` mode (1: every later reward counts fully)."""
    eps: float = 1e-6
    """Added to the std so a small spread cannot blow up."""
    include_failed: bool = False
    """Score failed trajectories (env error, generator error, deadline: ``traj.failed``) like the
    others. By default they get advantage 0 and stay out of the group's mean and std: their
    reward says how the infrastructure did, not how the policy did."""

    def __post_init__(self) -> None:
        if self.mode not in ("episode", "per_turn"):
            raise ValueError(f"AdvantageConfig.mode must be 'episode' or 'per_turn', got {self.mode!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"AdvantageConfig.gamma must be in [0, 1], got {self.gamma}")
        if self.eps < 0.0:
            raise ValueError(f"AdvantageConfig.eps must be >= 0, got {self.eps}")


def _returns_to_go(rewards: Sequence[float], gamma: float) -> list[float]:
    """G_t = r_t + gamma * G_{t+1}, a short reversed loop."""
    out = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def _scores(trajectories: Sequence[Trajectory], config: AdvantageConfig) -> list[list[float] | None]:
    """Per trajectory: its scores (one, or one per turn), or None when it is left out."""
    out: list[list[float] | None] = []
    for traj in trajectories:
        if traj.failed and not config.include_failed:
            out.append(None)
        elif config.mode == "episode":
            out.append([traj.total_reward])
        else:
            out.append(_returns_to_go(traj.rewards, config.gamma))
    return out


def _trajectories(group: TrajectoryGroup | Sequence[Trajectory]) -> Sequence[Trajectory]:
    return group.trajectories if isinstance(group, TrajectoryGroup) else group


def _pool_is_degenerate(pool: Sequence[float]) -> bool:
    return len(pool) < 2 or max(pool) - min(pool) <= _EQUAL_TOL


def is_degenerate(group: TrajectoryGroup | Sequence[Trajectory], config: AdvantageConfig | None = None) -> bool:
    """True when every advantage of the group would be 0: all scores equal, or fewer than two.

    Such a group has no GRPO signal (e.g. every sample solved the task, or none did).

    >>> from forge_env.rollout import Task, Trajectory, Turn
    >>> def traj(r): return Trajectory(env_name="e", task=Task(), turns=[
    ...     Turn(index=0, completion_start=0, completion_end=0, text="", finish_reason="stop",
    ...          version=0, reward=r)])
    >>> is_degenerate([traj(1.0), traj(1.0)]), is_degenerate([traj(1.0), traj(0.0)])
    (True, False)
    """
    config = config or AdvantageConfig()
    pool = [s for scores in _scores(_trajectories(group), config) if scores is not None for s in scores]
    return _pool_is_degenerate(pool)


def group_advantages(
    group: TrajectoryGroup | Sequence[Trajectory], config: AdvantageConfig | None = None
) -> list[list[float]]:
    """Per trajectory, one advantage per token, aligned with its ``token_ids``.

    >>> from forge_env.rollout import Task, Trajectory, Turn
    >>> def traj(r): return Trajectory(env_name="e", task=Task(), token_ids=[7, 8, 9],
    ...     logprobs=[0.0, -0.5, -0.5], loss_mask=[0, 1, 1], turns=[Turn(index=0,
    ...     completion_start=1, completion_end=3, text="", finish_reason="stop", version=0, reward=r)])
    >>> group_advantages([traj(1.0), traj(0.0)], AdvantageConfig(eps=0.0))
    [[0.0, 1.0, 1.0], [0.0, -1.0, -1.0]]

    Tokens outside the loss mask get 0, and so does every token of a degenerate group (see
    :func:`is_degenerate`) and of a failed trajectory unless ``config.include_failed``.
    """
    config = config or AdvantageConfig()
    trajectories = _trajectories(group)
    scores = _scores(trajectories, config)
    pool = [s for per_traj in scores if per_traj is not None for s in per_traj]
    degenerate = _pool_is_degenerate(pool)
    mean = math.fsum(pool) / len(pool) if pool else 0.0
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in pool) / len(pool)) if pool else 0.0
    scale = 1.0 / (std + config.eps) if config.normalize_std else 1.0

    out: list[list[float]] = []
    for traj, per_traj in zip(trajectories, scores):
        n = len(traj.token_ids)
        if len(traj.loss_mask) != n:
            raise ValueError(
                f"trajectory {traj.group_index} of {traj.env_name!r} has {len(traj.loss_mask)} loss_mask "
                f"entries for {n} token_ids: they must align one to one"
            )
        adv = [0.0] * n
        out.append(adv)
        if per_traj is None or degenerate:
            continue
        if config.mode == "episode":
            a = (per_traj[0] - mean) * scale
            for pos in range(n):
                if traj.loss_mask[pos]:
                    adv[pos] = a
            continue
        for turn, ret in zip(traj.turns, per_traj):
            if not 0 <= turn.completion_start <= turn.completion_end <= n:
                raise ValueError(
                    f"turn {turn.index} of trajectory {traj.group_index} ({traj.env_name!r}) spans tokens "
                    f"{turn.completion_start}..{turn.completion_end}, outside its {n} token_ids"
                )
            a = (ret - mean) * scale
            for pos in range(turn.completion_start, turn.completion_end):
                if traj.loss_mask[pos]:
                    adv[pos] = a
    return out
