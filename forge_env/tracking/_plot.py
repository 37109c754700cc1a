"""plot_run: the reward and success curves of a run, as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

from forge_env.tracking._records import _atomic_write_bytes, _scalar, read_metrics

__all__ = ["plot_run"]

_REWARD_COLOR = "tab:blue"
_TRAIN_SUCCESS_COLOR = "tab:orange"
_EVAL_COLOR = "tab:green"
_BASELINE_COLOR = "0.35"


def plot_run(
    metrics_jsonl: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    *,
    title: str | None = None,
    baseline: float | None = None,
) -> Path:
    """Plot a run's ``metrics.jsonl`` into a PNG with two panels over learner steps.

    Top: the training reward (``reward/mean`` of ``train`` records) per step, and a smoothed
    line (trailing mean). Bottom, on a percent axis: the training success rate
    (``success/rate``, sampled episodes) per step with its smoothed line, the held-out success
    (``eval/success_rate`` of ``eval`` records) as markers and line, and ``baseline`` as a
    dashed line. Missing or NaN values leave gaps; a run with no eval yet plots without it.
    When a step was logged twice (a resumed run without truncation), its last record wins.
    The file is written atomically (a reader never sees half a PNG).

    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "metrics.jsonl").write_text(
    ...     '{"step": 1, "kind": "train", "reward/mean": 0.2, "success/rate": 0.25}\\n')
    >>> plot_run(d / "metrics.jsonl", d / "run.png", baseline=0.38).name
    'run.png'

    Args:
        metrics_jsonl: the run's ``metrics.jsonl`` (a truncated last line is fine).
        png_path: where to write the PNG (parent folders are created).
        title: figure title; None: the run folder's name.
        baseline: held-out success before training (e.g. after SFT), in [0, 1].

    Returns:
        ``png_path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator, PercentFormatter
    except ImportError as e:
        raise ImportError("plot_run needs matplotlib: `pip install matplotlib`") from e

    metrics_jsonl = Path(metrics_jsonl)
    png_path = Path(png_path)
    records = read_metrics(metrics_jsonl)
    train = _by_step(records, "train")
    evals = _by_step(records, "eval")
    train_steps = sorted(train)
    reward = [_value(train[s], "reward/mean") for s in train_steps]
    success = [_value(train[s], "success/rate") for s in train_steps]
    eval_steps = [s for s in sorted(evals) if math.isfinite(_value(evals[s], "eval/success_rate"))]
    eval_success = [_value(evals[s], "eval/success_rate") for s in eval_steps]

    # A Figure without pyplot: no global backend switch, no display; savefig renders with Agg.
    fig = Figure(figsize=(9.0, 7.0), dpi=110, layout="constrained")
    ax_reward, ax_success = fig.subplots(2, 1, sharex=True)
    fig.suptitle(title if title is not None else f"run: {metrics_jsonl.parent.name or metrics_jsonl.name}")

    # -- top: training reward ----------------------------------------------------------------
    ax_reward.set_title("Training reward (sampled episodes)", fontsize=10, loc="left")
    ax_reward.set_ylabel("mean episode reward")
    if any(math.isfinite(v) for v in reward):
        ax_reward.plot(train_steps, reward, color=_REWARD_COLOR, alpha=0.35, linewidth=1, marker=".",
                       label="reward/mean per step")
        smooth, window = _smooth(reward)
        if smooth is not None:
            ax_reward.plot(train_steps, smooth, color=_REWARD_COLOR, linewidth=2.2,
                           label=f"smoothed (mean of last {window})")
        ax_reward.legend(loc="best", fontsize=8)
    else:
        _empty_note(ax_reward, "no reward/mean logged yet")

    # -- bottom: success, training and held-out ----------------------------------------------
    ax_success.set_title("Success rate", fontsize=10, loc="left")
    ax_success.set_ylabel("success rate")
    ax_success.set_xlabel("learner step")
    ax_success.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    drew = False
    if any(math.isfinite(v) for v in success):
        ax_success.plot(train_steps, success, color=_TRAIN_SUCCESS_COLOR, alpha=0.3, linewidth=1,
                        marker=".", label="training (sampled, per step)")
        smooth, window = _smooth(success)
        if smooth is not None:
            ax_success.plot(train_steps, smooth, color=_TRAIN_SUCCESS_COLOR, linewidth=2,
                            label=f"training, smoothed (last {window})")
        drew = True
    if eval_steps:
        ax_success.plot(eval_steps, eval_success, color=_EVAL_COLOR, linewidth=2, marker="o",
                        markersize=6, label="held-out eval")
        last_step, last = eval_steps[-1], eval_success[-1]
        ax_success.annotate(f"{last:.0%}", (last_step, last), textcoords="offset points", xytext=(6, 6),
                            color=_EVAL_COLOR, fontsize=9, fontweight="bold")
        drew = True
    if baseline is not None and math.isfinite(baseline):
        ax_success.axhline(baseline, color=_BASELINE_COLOR, linestyle="--", linewidth=1.3,
                           label=f"baseline {baseline:.0%}")
        drew = True
    if drew:
        ax_success.legend(loc="best", fontsize=8)
    else:
        _empty_note(ax_success, "no success rate logged yet")
    ax_success.set_ylim(-0.03, 1.03)
    ax_success.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_reward, ax_success):
        ax.grid(True, alpha=0.3)

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _atomic_write_bytes(png_path, buffer.getvalue())
    return png_path


def _by_step(records: list[dict[str, Any]], kind: str) -> dict[int, dict[str, Any]]:
    """The last record of each step of one kind."""
    out: dict[int, dict[str, Any]] = {}
    for record in records:
        step = record.get("step")
        if record.get("kind") == kind and isinstance(step, int) and not isinstance(step, bool):
            out[step] = record
    return out


def _value(record: dict[str, Any], key: str) -> float:
    """A metric as a float; missing, null (NaN/inf) and non-numbers are NaN (a gap in the line)."""
    value = record.get(key)
    number = None if value is None else _scalar(value)
    return number if number is not None else math.nan


def _smooth(values: list[float]) -> tuple[list[float] | None, int]:
    """Trailing mean over a window that grows with the run (None: too few points to bother)."""
    if sum(math.isfinite(v) for v in values) < 6:
        return None, 0
    window = min(25, max(3, len(values) // 8))
    smooth: list[float] = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1): i + 1] if math.isfinite(v)]
        smooth.append(sum(recent) / len(recent) if recent else math.nan)
    return smooth, window


def _empty_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.5")
