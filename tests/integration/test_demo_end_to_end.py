"""``python -m apps.demo`` end to end: a real server subprocess, scripted play, clean exit."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "apps.demo", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)


@pytest.mark.slow
def test_demo_plays_every_episode_and_leaves_no_process():
    result = _run_demo("--episodes", "4", "--seed", "3")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert result.stderr == "", result.stderr

    match = re.search(r"server up at (http://127\.0\.0\.1:(\d+)) \(pid (\d+)\)", out)
    assert match, out
    port, pid = int(match.group(2)), int(match.group(3))
    # One transcript per episode, seeds 3..6, each won by binary search in <= 5 guesses.
    for i, seed in enumerate(range(3, 7), start=1):
        assert f"episode {i}/4 (seed {seed})" in out
    solved = re.findall(r"solved in (\d+) turn\(s\), return 1\n", out)
    assert len(solved) == 4 and all(1 <= int(t) <= 5 for t in solved), out
    assert re.search(r"turn 1  guess   8  -> (higher|lower|correct)", out)
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("summary: 4/4 solved, success rate 100%, mean turns ")
    mean = float(re.search(r"mean turns ([\d.]+)", summary).group(1))
    assert mean == pytest.approx(sum(int(t) for t in solved) / 4, abs=0.01)
    assert re.search(r"\d+ steps in [\d.]+ s \(\d+ steps/s over the WebSocket\)", summary)
    assert f"server stopped (pid {pid}: exited, no process left)" in out

    # Nothing is left behind: no process with that pid, nobody listening on the port.
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_demo_rejects_an_env_without_a_scripted_agent():
    result = _run_demo("--env", "echo")
    assert result.returncode == 2
    err = result.stderr.strip()
    assert err.startswith(
        "demo: error: env 'echo' has no scripted agent (envs.echo.solve); the demo can play: ")
    assert "guess_number" in err.rsplit(":", 1)[1]
    assert "starting" not in result.stdout  # refused before any server was started


async def test_demo_plays_a_running_server_with_remote(serve_app):
    import io

    from apps.demo import DemoArgs, run_demo
    from envs.guess_number import GuessNumberEnv
    from forge_env.server import create_app

    url = serve_app(create_app(GuessNumberEnv))
    out = io.StringIO()
    summary = await run_demo(DemoArgs(episodes=3, seed=10, remote=url), out=out)
    assert summary.success_rate == 1.0
    assert [e.seed for e in summary.episodes] == [10, 11, 12]
    assert summary.steps == sum(e.turns for e in summary.episodes)
    assert summary.server_start_seconds is None  # nothing was started
    assert out.getvalue().startswith(f"playing the server at {url}\n")
    assert all(e.transcript[-1].startswith("  solved in ") for e in summary.episodes)
