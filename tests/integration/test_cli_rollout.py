"""`forge-env rollout` with TorchGenerator (fast): transcripts, summary, JSONL, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import running_server
from forge_env.cli import main
from forge_env.rollout import Trajectory

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_path: str) -> str:
    return tiny_model_path


def test_rollout_guess_number_in_process(cache: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.jsonl"
    code = main(["rollout", "guess_number", "--model", cache, "--generator", "torch", "--episodes", "3",
                 "--max-turns", "3", "--max-tokens", "6", "--seed", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [line.split(":")[0] for line in captured.out.splitlines() if line.startswith("===")] == [
        "=== guess_number seed=5", "=== guess_number seed=6", "=== guess_number seed=7"]
    assert "ChatAgent on TorchGenerator" in captured.out and "success rate" in captured.out
    assert "[3/3]" in captured.err  # progress, one line per finished episode
    trajs = [Trajectory.from_dict(json.loads(line)) for line in out.read_text().splitlines()]
    assert [t.task.seed for t in trajs] == [5, 6, 7]
    assert all(1 <= t.num_turns <= 3 and sum(t.loss_mask) == sum(u.num_completion_tokens for u in t.turns)
               for t in trajs)


def test_rollout_tool_agent_against_a_url(cache: str, capsys: pytest.CaptureFixture[str]) -> None:
    from envs.countdown.server.app import app

    with running_server(app) as url:
        code = main(["rollout", url, "--model", cache, "--generator", "torch", "--episodes", "2",
                     "--max-turns", "2", "--max-tokens", "8"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ToolCallingAgent on TorchGenerator" in captured.out  # countdown offers MCP tools
    assert captured.out.count("=== countdown") == 2


@pytest.mark.slow
def test_rollout_with_a_server_process(cache: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "forge_env.cli", "rollout", "echo", "--model", cache, "--generator", "torch",
         "--runtime", "process", "--episodes", "2", "--max-turns", "2", "--max-tokens", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("=== echo") == 2 and "failed episodes    0" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rollout", "guess_number", "--episodes", "0"], "--episodes must be at least 1"),
        (["rollout", "guess_number", "--model", "no-such-model"], "no model 'no-such-model'"),
        (["rollout", "no_such_env"], "no_such_env"),
        (["rollout", "http://127.0.0.1:9", "--generator", "torch"], "no OpenEnv server answers"),
    ],
)
def test_rollout_errors_name_the_fix(argv: list[str], message: str, cache: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    if "--model" not in argv:
        argv = [*argv, "--model", cache]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
