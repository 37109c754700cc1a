"""Smoke test of bench/learner_step.py: its main() in quick mode (2 groups of the default run).

A real learner per layout on real guess_number demo episodes: the run must finish, report
positive step times for both layouts, pass its check (the packed layout's first step has the
padded layout's loss and gradient norm), and run the packed layout on fewer tokens. No timing
assertions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow]


def test_quick_run_times_both_layouts_and_they_agree(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from bench.learner_step import main
    finally:
        sys.path.remove(str(REPO_ROOT))
    out = tmp_path / "learner_step.json"

    assert main(["--quick", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["benchmark"] == "learner_step" and report["check_passed"] is True
    assert report["machine"]["cpus"] >= 1 and report["machine"]["python"]
    settings, batch = report["settings"], report["batch"]
    assert settings["quick"] is True and settings["groups"] == 2 and settings["layouts"] == ["padded", "packed"]
    assert batch["sequences"] == settings["groups"] * settings["group_size"] == 16
    assert batch["padded"] == batch["sequences"] * batch["longest"] >= batch["tokens"] > batch["loss_tokens"] > 0
    rows = {r["layout"]: r for r in report["rows"]}
    assert set(rows) == {"padded", "packed"}
    for name, row in rows.items():
        assert row["step_s"] > 0 and row["min_s"] > 0 and row["batch_tokens_per_s"] > 0, name
        assert len(row["repeats"]) == settings["repeats"] == 2, name
        assert row["micro_batches"] == 1, name
        assert row["first_step"]["loss/tokens"] == batch["loss_tokens"], name
        assert row["check"]["passed"] is True, (name, row["check"])
        assert row["logprobs_s"] > 0 and len(row["logprobs_repeats"]) == 2, name
        assert row["check"]["logprobs_max_abs_diff"] <= 1e-5, name
    # The padded layout runs on every padded position; the packed one on the prefix tree.
    assert rows["padded"]["computed_tokens"] == batch["padded"]
    assert rows["packed"]["computed_tokens"] < 0.5 * batch["tokens"]
    assert rows["padded"]["speedup"] == 1.0
