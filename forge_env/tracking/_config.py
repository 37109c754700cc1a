"""Where a run's metrics go: console, jsonl, tensorboard, wandb."""

from __future__ import annotations

import dataclasses

__all__ = ["TrackingConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class TrackingConfig:
    """Which sinks a :class:`~forge_env.tracking.RunTracker` writes to, and where.

    >>> TrackingConfig(output_dir="runs/demo").tensorboard
    True
    """

    output_dir: str
    """Folder of the run: ``metrics.jsonl``, ``tensorboard/``, ``wandb/`` go here (created)."""
    console: bool = True
    """Print one progress line per train step (every ``console_every``) and one per eval."""
    jsonl: bool = True
    """Append every logged record to ``output_dir/metrics.jsonl`` (flushed per line)."""
    tensorboard: bool = True
    """Write scalars under ``output_dir/tensorboard/`` (needs torch and tensorboard; when they
    are missing the tracker warns once and goes on without)."""
    wandb: bool = False
    """Log scalars to Weights & Biases (needs ``pip install wandb``; ``WANDB_MODE=offline``
    keeps the run in ``output_dir/wandb/``)."""
    wandb_project: str = "forge-env"
    """W&B project name."""
    run_name: str | None = None
    """W&B run name; None lets W&B pick one."""
    console_every: int = 1
    """Print the train progress line every this many steps (the last step always prints)."""

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(
                f"TrackingConfig.output_dir must be a non-empty folder path (str), got {self.output_dir!r}"
            )
        if self.console_every < 1:
            raise ValueError(f"TrackingConfig.console_every must be >= 1, got {self.console_every}")
        if self.wandb and not self.wandb_project:
            raise ValueError("TrackingConfig.wandb_project must be a non-empty name when wandb=True")
