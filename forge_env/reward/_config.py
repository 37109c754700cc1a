"""RewardConfig: which reward function to apply to finished trajectories, and how."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from forge_env.reward._load import normalize_spec

__all__ = ["RewardConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RewardConfig:
    """A reward function applied to every finished trajectory, on top of the env's own rewards.

    The score is added to the last turn's reward: ``turns[-1].reward += weight * fn(trajectory)``.

    >>> cfg = RewardConfig(fn="forge_env.reward:length_penalty", kwargs={"budget": 64})
    >>> cfg.weight, cfg.timeout_s, cfg.concurrency, cfg.skip_failed
    (1.0, 30.0, 8, True)
    """

    fn: str
    """``"package.module:function"`` or ``"path/to/file.py:function"``: a function taking a
    :class:`~forge_env.rollout.Trajectory` and returning a float, sync or ``async def``. Reward
    worker processes import it by this name, so it must be importable there too."""
    weight: float = 1.0
    """Scale of the score: the reward added is ``weight * fn(trajectory)``."""
    timeout_s: float = 30.0
    """Deadline of one call (one trajectory), counted from when the call starts to run."""
    concurrency: int = 8
    """Trajectories scored at once in one process (threads for a sync function, concurrent
    calls for an async one)."""
    skip_failed: bool = True
    """Leave trajectories that ended by a failure (env or generator error, deadline) unscored."""
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of every call: ``fn(trajectory, **kwargs)`` (picklable values)."""

    def __post_init__(self) -> None:
        # The spec's shape only (a RewardSpecError, also a ValueError): importing it is the
        # workers' job, in every process that runs it.
        normalize_spec(self.fn)
        if not math.isfinite(self.weight):
            raise ValueError(f"RewardConfig.weight must be a finite number, got {self.weight}")
        if not self.timeout_s > 0:
            raise ValueError(f"RewardConfig.timeout_s must be > 0 seconds, got {self.timeout_s}")
        if self.concurrency < 1:
            raise ValueError(f"RewardConfig.concurrency must be >= 1, got {self.concurrency}")
        if not isinstance(self.kwargs, dict) or not all(isinstance(k, str) for k in self.kwargs):
            raise ValueError(f"RewardConfig.kwargs must be a dict with string keys, got {self.kwargs!r}")
