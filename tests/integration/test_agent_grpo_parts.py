"""``python -m apps.agent_grpo`` with a reward function and a KL term to a frozen reference.

A real short run (torch generator, torchtitan learner, guess_number in-process): every
episode gets the reward function's score on its last turn, the learner's KL to the reference
is 0 while its weights equal the reference's and grows once they moved, and the reference's
and reward workers' metrics reach metrics.jsonl and summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.agent_grpo import main

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(900)
def test_reward_fn_and_kl_to_a_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    steps, groups, group_size = 4, 2, 4
    code = main([f"output_dir={out}", "warm_start.steps=5", "generator.kind=torch", "eval.episodes=8",
                 "eval.every=0", f"orchestrator.steps={steps}", f"orchestrator.groups_per_step={groups}",
                 f"rollout.group_size={group_size}", "orchestrator.mode=sync", "checkpoint.every=0",
                 "logging.tensorboard=false", "logging.plot=false", "learner.loss.kl_coef=0.05",
                 "reward.fn=forge_env.reward:length_penalty", "reward.kwargs={budget: 0, per_token: 0.01}"])
    assert code == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps

    # Every training episode was scored (sync mode: exactly the batches trained on).
    episodes = steps * groups * group_size
    reward_fn = summary["reward_fn"]
    assert reward_fn["reward_fn/scored"] == episodes - summary["collector"]["failed"]
    assert reward_fn["reward_fn/errors"] == 0 and reward_fn["reward_fn/timeouts"] == 0

    train = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if line.strip().endswith("}") and json.loads(line)["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    # budget 0: every sampled token costs 0.01, so the scores are negative and shape the reward
    assert all(r["reward_fn/mean"] < 0 for r in train)
    # The first update starts from the reference's own weights (KL exactly 0); later ones have moved.
    trained = [r for r in train if r["batch/trained_sequences"] > 0]
    assert trained and abs(trained[0]["loss/kl_ref"]) < 1e-6
    assert any(r["loss/kl_ref"] > 1e-6 for r in trained[1:])
    assert all(r["time/reference_s"] > 0 for r in trained)
    reference = summary["reference"]
    assert reference["reference/sequences"] == sum(r["batch/trained_sequences"] for r in train)
