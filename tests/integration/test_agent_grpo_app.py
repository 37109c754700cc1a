"""``python -m apps.agent_grpo`` as a user runs it: bad configs, a short real run, kill -9, --resume.

The slow test runs the real app in a subprocess (vLLM engine, torchtitan learner, guess_number),
SIGKILLs it right after its first checkpoint, checks that no engine process outlives it, resumes
it with ``--resume`` and checks that the run finished with every step logged exactly once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import session_processes

from apps.agent_grpo import main

REPO = Path(__file__).resolve().parents[2]


def test_a_bad_key_is_named_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["learner.lrr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "learner.lrr" in err and "learner.lr" in err


def test_a_bad_value_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["orchestrator.steps=0"]) == 2
    assert "orchestrator.steps" in capsys.readouterr().err


def test_print_config_shows_the_overridden_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--print-config", "orchestrator.steps=7", "learner.lr=2e-4"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out and "0.0002" in out


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from forge_env.checkpoint import CheckpointConfig, Checkpointer

    Checkpointer(CheckpointConfig(directory=str(tmp_path / "checkpoints"))).save(3, {"run": {"x": 1}})
    assert main([f"output_dir={tmp_path}", "warm_start.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "step_000003" in err


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(1200)
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: make venv")
def test_kill_9_then_resume_finishes_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "apps.agent_grpo", f"output_dir={out}", "warm_start.steps=5",
            "eval.episodes=16", "eval.every=0", "orchestrator.steps=6", "orchestrator.groups_per_step=2",
            "rollout.group_size=4", "checkpoint.every=2", "logging.tensorboard=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (out / "checkpoints" / "step_000002" / "COMPLETE").exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)   # the main process only, as `kill -9 PID` does
        first.wait(timeout=30)
        # The vLLM engine processes end themselves once their owner is gone.
        deadline = time.monotonic() + 30
        while (left := session_processes(first.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, [p.cmdline() for p in left]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        for proc in session_processes(first.pid):
            proc.kill()
        log.close()

    killed_at = max(int(json.loads(line)["step"]) for line in (out / "metrics.jsonl").read_text().splitlines()
                    if line.strip().endswith("}") and json.loads(line)["kind"] == "train")
    assert killed_at >= 2
    resumed = subprocess.run([*args[:3], "--resume", f"output_dir={out}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "step_00000" in resumed.stdout
    assert "warm start: reusing" in resumed.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["resumed"] is True
    assert 0.0 <= summary["baseline_success"] <= 1.0 and 0.0 <= summary["final_success"] <= 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 6]   # baseline kept, final added
    assert (out / "hf" / "config.json").exists() and (out / "plot.png").stat().st_size > 1000
