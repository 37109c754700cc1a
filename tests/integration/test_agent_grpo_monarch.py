"""``python -m apps.agent_grpo runtime=monarch`` as a user runs it, and a generator replica killed mid-run.

The app runs in a subprocess with its generator replicas (vLLM engines), learner, env pool,
replay buffer, reference policy (a KL term) and reward function in Monarch processes of their
own. Right after the first learner step the test SIGKILLs one generator replica's process (the
parent of a ``VLLM::EngineCore``): the run must finish every step on the other replica, respawn
the killed one, count the death, and lose no episode silently. Then no process of the run may
be left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import session_processes

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.monarch,
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: make venv"),
    pytest.mark.skipif(importlib.util.find_spec("monarch") is None,
                       reason="Monarch is not installed: pip install 'forge-env[monarch]' (make venv does)"),
]


def _generator_replicas(sid: int) -> list[psutil.Process]:
    """Processes of the run that own a vLLM engine core: the generator replicas."""
    replicas: dict[int, psutil.Process] = {}
    for proc in session_processes(sid):
        try:
            if "EngineCore" in proc.name() or any("EngineCore" in part for part in proc.cmdline()):
                parent = proc.parent()
                if parent is not None and parent.pid != sid:
                    replicas[parent.pid] = parent
        except psutil.Error:
            continue
    return list(replicas.values())


def _records(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


@pytest.mark.timeout(1500)
def test_monarch_run_survives_a_killed_generator_replica(tmp_path: Path) -> None:
    out = tmp_path / "run"
    steps = 24
    args = [sys.executable, "-m", "apps.agent_grpo", "runtime=monarch", f"output_dir={out}",
            "warm_start.steps=5", "eval.episodes=16", "eval.every=0", f"orchestrator.steps={steps}",
            "orchestrator.groups_per_step=2", "rollout.group_size=4", "checkpoint.every=0",
            "logging.tensorboard=false", "env_kwargs={progress_reward: 0.5}", "learner.loss.kl_coef=0.01",
            "reward.fn=forge_env.reward:length_penalty", "reward.kwargs={budget: 8, per_token: 0.01}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "run.log"
    log = log_path.open("w")
    run = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    killed: psutil.Process | None = None
    try:
        deadline = time.monotonic() + 900
        while not (out / "metrics.jsonl").exists() or not any(
                r.get("kind") == "train" for r in _records(out / "metrics.jsonl")):
            assert run.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "no learner step within 900 s:\n" + log_path.read_text()[-4000:]
            time.sleep(0.5)
        session = {p.pid for p in session_processes(run.pid)}
        buffer_pid = int(re.search(r"replay buffer in process (\d+)", log_path.read_text()).group(1))
        assert buffer_pid in session and buffer_pid != run.pid
        replicas = _generator_replicas(run.pid)
        assert len(replicas) == 2, [p.cmdline() for p in session_processes(run.pid)]
        killed = replicas[0]
        killed.send_signal(signal.SIGKILL)
        assert run.wait(timeout=1200) == 0, log_path.read_text()[-4000:]
        # Every process of the run ends with it: replicas, engines, learner, env pool.
        deadline = time.monotonic() + 30
        while (left := session_processes(run.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, [p.cmdline() for p in left]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        for proc in session_processes(run.pid):
            proc.kill()
        log.close()

    assert killed is not None and not killed.is_running()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runtime"] == "monarch" and summary["steps"] == steps
    generator = summary["generator"]
    assert generator["service/generator/replica_deaths"] >= 1
    assert generator["service/generator/respawns"] >= 1, log_path.read_text()[-4000:]
    assert generator["service/generator/healthy"] == 2      # the respawned replica serves again
    assert generator["generator/version"] == summary["policy_version"]
    # Calls that were on the dead replica were retried on the other one: no episode failed,
    # and every step trained on its full batch.
    assert summary["collector"]["failed"] == 0
    train = [r for r in _records(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert all(r["batch/groups"] == 2 for r in train)
    # The buffer (its own process) handed out every group trained on; the reward function's
    # processes scored every episode; the reference's logprobs fed the KL term of each update.
    assert summary["buffer"]["sampled"] == 2 * steps
    assert summary["reward_fn"]["reward_fn/scored"] >= 2 * steps * 4
    assert summary["reward_fn"]["reward_fn/errors"] == 0
    assert summary["reference"]["reference/sequences"] == sum(r["batch/trained_sequences"] for r in train)
    assert any(r["loss/kl_ref"] > 0 for r in train)
    assert 0.0 <= summary["final_success"] <= 1.0 and (out / "hf" / "config.json").exists()
