"""The end-of-run summary: a JSON file and a few human lines."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from forge_env.tracking._console import _format_duration
from forge_env.tracking._records import _atomic_write_bytes, _jsonable, _scalar

__all__ = ["format_summary", "write_summary"]


def write_summary(path: str | os.PathLike[str], summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` as indented JSON, atomically (NaN/inf become ``null``).

    >>> import json, pathlib, tempfile
    >>> p = write_summary(pathlib.Path(tempfile.mkdtemp()) / "summary.json", {"steps": 40})
    >>> json.loads(p.read_text())
    {'steps': 40}

    Returns:
        ``path`` as a :class:`~pathlib.Path` (parent folders are created).
    """
    path = Path(path)
    text = json.dumps(_jsonable(dict(summary)), indent=2, allow_nan=False) + "\n"
    _atomic_write_bytes(path, text.encode("utf-8"))
    return path


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few lines for a human at the end of a run; missing keys leave their line out.

    Understands ``baseline_success``, ``final_success`` (fractions), ``steps``,
    ``wall_seconds``, ``train_seconds``, ``tokens_per_s``, ``output_dir``, ``hf_path``,
    ``plot_path``; other keys are ignored.

    >>> print(format_summary({"baseline_success": 0.38, "final_success": 0.71, "steps": 40,
    ...                       "wall_seconds": 612, "tokens_per_s": 1834.2}))
    held-out success: 38.0% -> 71.0% (+33.0 points)
    steps: 40 in 10m12s
    throughput: 1,834 tokens/s
    """
    lines: list[str] = []
    baseline = _number(summary, "baseline_success")
    final = _number(summary, "final_success")
    if baseline is not None and final is not None:
        line = f"held-out success: {_pct(baseline)} -> {_pct(final)}"
        if math.isfinite(baseline) and math.isfinite(final):
            line += f" ({(final - baseline) * 100:+.1f} points)"
        lines.append(line)
    elif final is not None:
        lines.append(f"held-out success: {_pct(final)}")
    elif baseline is not None:
        lines.append(f"held-out success before training: {_pct(baseline)}")

    steps = _number(summary, "steps")
    wall = _number(summary, "wall_seconds")
    train = _number(summary, "train_seconds")
    wall_text = _format_duration(wall) if wall is not None else None
    train_text = f"(training {_format_duration(train)})" if train is not None else None
    if steps is not None and math.isfinite(steps):
        lines.append(" ".join(p for p in (f"steps: {steps:,.0f}", wall_text and f"in {wall_text}", train_text) if p))
    elif wall_text is not None:
        lines.append(" ".join(p for p in (f"wall time: {wall_text}", train_text) if p))
    elif train is not None:
        lines.append(f"training time: {_format_duration(train)}")

    tps = _number(summary, "tokens_per_s")
    if tps is not None:
        lines.append(f"throughput: {tps:,.0f} tokens/s" if math.isfinite(tps) else "throughput: n/a")

    for key, label in (("output_dir", "output"), ("hf_path", "model"), ("plot_path", "plot")):
        value = summary.get(key)
        if value is not None and str(value):
            lines.append(f"{label}: {os.fspath(value) if isinstance(value, os.PathLike) else value}")
    return "\n".join(lines)


def _number(summary: Mapping[str, Any], key: str) -> float | None:
    value = summary.get(key)
    return None if value is None else _scalar(value)


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%" if math.isfinite(value) else "n/a"
