"""The console lines: one plain line per train step and per eval (no carriage returns, so CI
logs and pipes stay readable)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from forge_env.tracking._records import _scalar

__all__: list[str] = []


def _format_duration(seconds: float) -> str:
    """``45s``, ``6m40s``, ``1h02m``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "n/a"
    total = int(round(seconds))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    return f"{total // 3600}h{total % 3600 // 60:02d}m"


def _num(metrics: Mapping[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else _scalar(value)


def _pct(value: float) -> str:
    return f"{value * 100:.0f}%" if math.isfinite(value) else "n/a"


def _fixed(value: float, digits: int) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"


def _train_line(
    step: int, metrics: Mapping[str, Any], *, total_steps: int | None, eta_s: float | None,
    time_limited: bool = False,
) -> str:
    """``step  12/40 | reward 0.62 | success 62% | 1,834 tok/s | age 0.8 | learner 71% gen 93%
    | 14.2 s/step | eta 6m40s``; parts whose metric is missing are left out. ``util/*`` and
    ``success/rate`` are fractions in [0, 1]. ``time_limited``: the run's time limit, not its
    step count, ends it first (``eta 2m05s (time limit)``)."""
    if total_steps is not None:
        parts = [f"step {step:>{max(3, len(str(total_steps)))}}/{total_steps}"]
    else:
        parts = [f"step {step:>3}"]
    if (reward := _num(metrics, "reward/mean")) is not None:
        parts.append(f"reward {_fixed(reward, 2)}")
    if (success := _num(metrics, "success/rate")) is not None:
        parts.append(f"success {_pct(success)}")
    if (tps := _num(metrics, "throughput/tokens_per_s")) is not None:
        parts.append(f"{tps:,.0f} tok/s" if math.isfinite(tps) else "n/a tok/s")
    if (age := _num(metrics, "policy_age/mean")) is not None:
        parts.append(f"age {_fixed(age, 1)}")
    util = []
    if (learner := _num(metrics, "util/learner")) is not None:
        util.append(f"learner {_pct(learner)}")
    if (gen := _num(metrics, "util/generator")) is not None:
        util.append(f"gen {_pct(gen)}")
    if util:
        parts.append(" ".join(util))
    if (step_s := _num(metrics, "time/step_s")) is not None:
        parts.append(f"{_fixed(step_s, 1)} s/step")
    if eta_s is not None:
        parts.append(f"eta {_format_duration(eta_s)}" + (" (time limit)" if time_limited else ""))
    return " | ".join(parts)


def _eval_line(step: int, metrics: Mapping[str, Any]) -> str:
    """``eval @ step 10: success 71% (128 held-out episodes)``."""
    line = f"eval @ step {step}"
    success = _num(metrics, "eval/success_rate")
    episodes = _num(metrics, "eval/episodes")
    if success is not None:
        line += f": success {_pct(success)}"
    if episodes is not None and math.isfinite(episodes):
        line += f" ({episodes:,.0f} held-out episodes)"
    return line
