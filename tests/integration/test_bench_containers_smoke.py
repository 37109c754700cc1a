"""Smoke test of bench/containers.py: a real --quick run against a real Docker engine.

No timing assertions (CI machines are noisy): the run must finish, report every part with
positive numbers for both runtimes, and leave no container and no server process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("docker", reason="the docker SDK is not installed: pip install docker")

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "containers.py"
KINDS = ("docker", "local")


def _engine_reachable_or_startable() -> bool:
    import docker

    host = os.environ.get("DOCKER_HOST")
    if host:
        try:
            docker.DockerClient(base_url=host, timeout=5).ping()
            return True
        except Exception:
            pass
    return os.geteuid() == 0  # the bench starts the engine itself as root


def test_quick_run_reports_every_part_and_leaves_nothing(tmp_path: Path) -> None:
    if not _engine_reachable_or_startable():
        pytest.skip("no Docker engine at DOCKER_HOST and not root (run `sudo scripts/docker_engine.sh start`)")
    out = tmp_path / "containers.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode == 2 and "docker_engine.sh" in proc.stderr:
        pytest.skip(f"no Docker engine or image here:\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    for title in ("1. cold start", "2. warm lease", "3. guess_number episodes", "4. sandbox exec"):
        assert title in proc.stdout, title

    report = json.loads(out.read_text())
    assert report["settings"]["quick"] is True
    assert report["leftovers"] == {"containers": [], "processes": []}

    cold, lease = report["cold_start"], report["warm_lease"]
    for kind in KINDS:
        assert cold[kind]["n"] == report["settings"]["starts"], kind
        assert 0 < cold[kind]["median_ms"] <= cold[kind]["p90_ms"], kind
        assert lease[kind]["n"] == report["settings"]["leases"], kind
        assert 0 < lease[kind]["median_ms"] <= lease[kind]["p99_ms"], kind
    assert cold["ratio_median"] > 0 and lease["ratio_median"] > 0

    episodes = report["episodes"]
    for kind in KINDS:
        assert [r["concurrency"] for r in episodes[kind]] == [1, 16], kind
        for row in episodes[kind]:
            where = f"{kind} x{row['concurrency']}"
            assert row["episodes"] >= row["concurrency"], where
            # The scripted binary search wins every game, in 1..5 guesses over 1..16.
            assert row["won"] == row["episodes"], where
            assert row["episodes"] <= row["steps"] <= 5 * row["episodes"], where
            assert row["episodes_per_s"] == pytest.approx(row["episodes"] / row["wall_s"]), where
            assert row["steps_per_s"] > row["episodes_per_s"] > 0 or row["steps"] == row["episodes"], where
    assert [r["concurrency"] for r in episodes["ratios"]] == [1, 16]
    assert all(r["episodes_per_s"] > 0 for r in episodes["ratios"])

    backends = report["sandbox"]["backends"]
    assert "python -c" in backends and "rlimit" in backends  # rlimit works everywhere
    for name, s in backends.items():
        assert s["n"] == report["settings"]["execs"], name
        assert 0 < s["median_ms"] <= s["p90_ms"], name
