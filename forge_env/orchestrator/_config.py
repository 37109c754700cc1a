"""How the loop runs: async or sync, batch shape, weight-push cadence, seeds."""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["OrchestratorConfig", "OrchestratorMode"]

OrchestratorMode = Literal["async", "sync"]


@dataclasses.dataclass(kw_only=True, slots=True)
class OrchestratorConfig:
    """The training loop's shape.

    >>> OrchestratorConfig(steps=40, groups_per_step=16).mode
    'async'
    """

    mode: OrchestratorMode = "async"
    """``async``: collectors keep generating while the learner trains (samples at most
    ``BufferConfig.max_policy_age`` versions old); ``sync``: generate a batch, train on it,
    push, repeat (on-policy; for comparison and debugging)."""
    steps: int = 40
    """Learner steps (optimizer updates) of the run."""
    groups_per_step: int = 16
    """Task groups (each ``CollectorConfig.group_size`` episodes of one task) per learner step."""
    weight_push_every: int = 1
    """Push the learner's weights to the generator every this many learner steps."""
    max_groups_in_flight: int | None = None
    """Async mode: groups generating at once. None: ``groups_per_step``. More keeps the
    generator busier and the samples older."""
    first_task_seed: int = 2_000_000
    """Env seed of the first training task; task ``i`` uses ``first_task_seed + i`` (held-out
    evaluation uses seeds from 0, the SFT warm start from 1,000,000)."""
    batch_timeout_s: float | None = 900.0
    """The learner waits at most this long for a batch; passing it raises
    :class:`~forge_env.orchestrator.LoopStalledError` naming what the collectors did."""

    def __post_init__(self) -> None:
        if self.mode not in ("async", "sync"):
            raise ValueError(f"OrchestratorConfig.mode must be 'async' or 'sync', got {self.mode!r}")
        for name in ("steps", "groups_per_step", "weight_push_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"OrchestratorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_groups_in_flight is not None and self.max_groups_in_flight < 1:
            raise ValueError(
                f"OrchestratorConfig.max_groups_in_flight must be >= 1 or None, got {self.max_groups_in_flight}"
            )
        if self.first_task_seed < 0:
            raise ValueError(f"OrchestratorConfig.first_task_seed must be >= 0, got {self.first_task_seed}")
        if self.batch_timeout_s is not None and not self.batch_timeout_s > 0:
            raise ValueError(f"OrchestratorConfig.batch_timeout_s must be > 0 or None, got {self.batch_timeout_s}")

    @property
    def groups_in_flight(self) -> int:
        """Async groups generating at once."""
        return self.max_groups_in_flight or self.groups_per_step
