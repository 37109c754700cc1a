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
    # Each server as its project ships it: ours on uvloop (a dependency of forge-env,
    # installed here), OpenEnv's on asyncio's loop; both clients on asyncio's loop.
    assert report["settings"]["server_loops"] == {"ours": "uvloop", "openenv": "asyncio"}
    assert report["settings"]["server_loop_classes"]["ours"] == "uvloop.Loop"
    assert report["settings"]["client_loop"] == "asyncio"
    assert "--loop asyncio" in report["settings"]["server_commands"]["openenv"]
    assert "event loops: openenv server asyncio, ours server uvloop; clients asyncio" in proc.stdout
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


def test_server_loops_and_flags_per_settings() -> None:
    sys.path.insert(0, str(REPO_ROOT))
    try:
        from bench.env_throughput import server_loop, uvicorn_flags
    finally:
        sys.path.remove(str(REPO_ROOT))
    from forge_env.server import UVICORN_WS_SETTINGS

    ours_loop = UVICORN_WS_SETTINGS["loop"]
    expected = {
        # (settings, --uvloop): {side: loop}
        ("shipped", False): {"ours": ours_loop, "openenv": "asyncio"},
        ("defaults", False): {"ours": "asyncio", "openenv": "asyncio"},
        ("tuned", False): {"ours": ours_loop, "openenv": ours_loop},
        ("shipped", True): {"ours": "uvloop", "openenv": "uvloop"},
        ("tuned", True): {"ours": "uvloop", "openenv": "uvloop"},
    }
    for (settings, uvloop), loops in expected.items():
        for side, loop in loops.items():
            assert server_loop(side, settings, uvloop=uvloop) == loop, (settings, uvloop, side)
            flags = uvicorn_flags(side, settings, uvloop=uvloop)
            # exactly one --loop, always explicit (uvicorn's "auto" would pick uvloop up)
            assert flags.count("--loop") == 1 and flags[flags.index("--loop") + 1] == loop
            tuned = settings == "tuned" or (settings == "shipped" and side == "ours")
            assert ("--ws" in flags) is tuned, (settings, side)
