"""Run observability: a console progress line, jsonl metrics, tensorboard, optional wandb, a PNG plot.

- :class:`RunTracker` with :class:`TrackingConfig`: ``tracker.log(step, metrics, kind=...)``
  once per learner step (``kind="train"``) or held-out evaluation (``kind="eval"``) writes
  ``output_dir/metrics.jsonl`` (one flushed JSON line per record), tensorboard scalars, W&B,
  and one plain console line.
- :func:`read_metrics` reads ``metrics.jsonl`` back (a killed run's truncated tail is fine);
  :func:`plot_run` draws reward and success over steps into a PNG.
- :func:`write_summary` / :func:`format_summary`: the end-of-run summary as JSON and as text.

Importing this package is cheap: torch (tensorboard), wandb and matplotlib load on first use.

>>> import tempfile
>>> from forge_env.tracking import RunTracker, TrackingConfig, read_metrics
>>> config = TrackingConfig(output_dir=tempfile.mkdtemp(), console=False, tensorboard=False)
>>> with RunTracker(config, total_steps=2) as tracker:
...     tracker.log(1, {"reward/mean": 0.5, "success/rate": 0.5})
>>> [(r["step"], r["reward/mean"]) for r in read_metrics(tracker.metrics_path)]
[(1, 0.5)]
"""

from __future__ import annotations

from forge_env.tracking._config import TrackingConfig
from forge_env.tracking._plot import plot_run
from forge_env.tracking._records import read_metrics
from forge_env.tracking._summary import format_summary, write_summary
from forge_env.tracking._tracker import RunTracker

__all__ = ["RunTracker", "TrackingConfig", "format_summary", "plot_run", "read_metrics", "write_summary"]

for _obj in (RunTracker, TrackingConfig, format_summary, plot_run, read_metrics, write_summary):
    _obj.__module__ = "forge_env.tracking"
del _obj
