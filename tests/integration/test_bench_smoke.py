"""Smoke test of bench/env_throughput.py: a real --quick run, real servers in subprocesses.

No timing assertions (CI machines are noisy): the run must finish, cover every
(server, client, sessions) row and report positive, self-consistent numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "env_throughput.py"
PAIRS = {("ours", "ours"), ("openenv", "openenv"), ("ours", "openenv"), ("openenv", "ours")}


@pytest.mark.slow
@pytest.mark.openenv
def test_quick_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "tp.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    # The table is printed, with the ratio section.
    assert "steps/s" in proc.stdout and "ours/ours vs openenv/openenv" in proc.stdout

    report = json.loads(out.read_text())
    assert report["settings"]["quick"] is True
    rows = report["rows"]
    assert {(r["server"], r["client"], r["sessions"]) for r in rows} == {(s, c, n) for s, c in PAIRS for n in (1, 16)}
    for r in rows:
        where = f"{r['server']}/{r['client']} x{r['sessions']}"
        assert r["steps_per_s"] > 0, where
        assert 0 < r["p50_ms"] <= r["p99_ms"], where
        assert r["client_cpu_us_per_step"] > 0, where
        assert len(r["repeats"]) == 1, where
        run = r["repeats"][0]
        # Every session stepped at least once, and throughput is steps over wall time.
        assert run["steps"] >= r["sessions"], where
        assert run["steps_per_s"] == pytest.approx(run["steps"] / run["wall_s"]), where

    ratios = {q["sessions"]: q for q in report["ratios"]}
    assert set(ratios) == {1, 16}
    for q in ratios.values():
        assert q["throughput_ratio"] > 0 and q["p50_ratio"] > 0 and q["p99_ratio"] > 0


def test_bad_pair_is_rejected_with_the_fix() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--pairs", "ours/gym", "--out", "/dev/null"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "must be SERVER/CLIENT" in proc.stderr and "ours/openenv" in proc.stderr
