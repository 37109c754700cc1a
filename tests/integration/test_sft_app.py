"""apps.sft end to end on the tiny model, and Learner.sft_step's step-wide token mean."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from agents import ChatAgent
from apps.sft import SFTConfig, run_sft
from apps.sft._demos import demonstration, guess_number_policy
from envs import load_env_factory
from forge_env.learner import Learner, LearnerConfig
from forge_env.rollout import Task, Trajectory


async def _demos(path: str, n: int) -> list[Trajectory]:
    from transformers import AutoTokenizer

    agent = ChatAgent(AutoTokenizer.from_pretrained(path))
    rng = random.Random(0)
    return [await demonstration(agent, load_env_factory("guess_number")(), guess_number_policy, Task(seed=s),
                                rng=rng, expert_prob=0.5) for s in range(n)]


async def test_sft_step_is_a_token_mean_over_the_whole_step(tiny_model_path: str) -> None:
    demos = await _demos(tiny_model_path, 4)
    whole = Learner(LearnerConfig(model=tiny_model_path, lr=1e-3))
    split = Learner(LearnerConfig(model=tiny_model_path, lr=1e-3, micro_batch_size=1))
    # The reference: the masked NLL summed over every reply token, divided by their count.
    lps = whole.logprobs([d.token_ids for d in demos])
    tokens = sum(sum(d.loss_mask) for d in demos)
    expected = -sum(float((lp * torch.tensor(d.loss_mask, dtype=torch.float32)).sum())
                    for lp, d in zip(lps, demos, strict=True)) / tokens
    m1, m2 = whole.sft_step(demos), split.sft_step(demos)
    assert m1["loss/nll"] == pytest.approx(expected, rel=1e-4)
    assert m2["loss/nll"] == pytest.approx(expected, rel=1e-4)
    assert m1["loss/tokens"] == m2["loss/tokens"] == tokens
    assert m1["learner/grad_norm"] == pytest.approx(m2["learner/grad_norm"], rel=1e-4)
    assert (m1["learner/micro_batches"], m2["learner/micro_batches"]) == (1.0, 4.0)
    assert (whole.step, whole.version) == (1, 1)
    # Same update (Adam's first step is ~lr * sign(grad): a near-zero gradient element may
    # flip sign on float noise, so allow a handful of elements up to 2 * lr apart).
    pairs = list(zip(whole.hf_named_tensors(), split.hf_named_tensors(), strict=True))
    far = sum(int((~torch.isclose(a, b, rtol=1e-4, atol=1e-6)).sum()) for (_, a), (_, b) in pairs)
    assert far <= 1e-4 * sum(a.numel() for (_, a), _ in pairs)
    assert max(float((a - b).abs().max()) for (_, a), (_, b) in pairs) <= 2e-3 + 1e-6
    # Training on demonstrations lowers their NLL.
    for _ in range(5):
        last = whole.sft_step(demos)
    assert last["loss/nll"] < m1["loss/nll"]


@pytest.mark.slow
def test_short_sft_run_beats_the_random_init_on_held_out_seeds(tiny_model_path: str, tmp_path: Path) -> None:
    out = io.StringIO()
    config = SFTConfig(model=tiny_model_path, steps=30, eval_episodes=32, output_dir=str(tmp_path / "sft"),
                       log_every=10)
    result = run_sft(config, out=out)
    log = out.getvalue()
    assert "step 10/30: loss" in log and "step 30/30" in log
    assert result.before is not None and result.after is not None
    assert result.after.success_rate > result.before.success_rate
    assert result.after.invalid_reply_rate < result.before.invalid_reply_rate
    assert len(result.losses) == 30 and result.losses[-1] < result.losses[0]
    summary: dict[str, Any] = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["steps"] == 30 and len(summary["loss_curve"]) == 30
    assert summary["after"]["success_rate"] == result.after.success_rate
    assert (tmp_path / "sft" / "hf" / "config.json").exists()
    assert any((tmp_path / "sft" / "hf").glob("*.safetensors"))
    assert result.learner.version == 30


def test_demonstrations_are_played_on_the_env_kwargs_given(tiny_model_path: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import apps.sft._sft as sft_module

    played: list[Any] = []

    async def recording(agent: Any, env: Any, *args: Any, **kwargs: Any) -> Trajectory:
        played.append(env)
        return await demonstration(agent, env, *args, **kwargs)

    monkeypatch.setattr(sft_module, "demonstration", recording)
    config = SFTConfig(model=tiny_model_path, steps=1, episodes_per_step=3, eval_episodes=0, output_dir=None,
                       env_kwargs={"hi": 8, "progress_reward": 0.5})
    run_sft(config, out=io.StringIO())
    assert len(played) == 3
    assert all((env.config.hi, env.config.progress_reward) == (8, 0.5) for env in played)


def test_cli_rejects_env_kwargs_the_env_does_not_take(capsys: pytest.CaptureFixture[str]) -> None:
    from apps.sft import main

    assert main(["--env-kwargs", '{"nope": 1}', "--steps", "1"]) == 2
    assert "--env-kwargs {\"nope\": 1}: guess_number refused them" in capsys.readouterr().err
    assert main(["--env-kwargs", "[1]"]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_cli_rejects_an_unknown_env(capsys: pytest.CaptureFixture[str]) -> None:
    from apps.sft import main

    assert main(["--env", "nope"]) == 2
    assert "supported: guess_number" in capsys.readouterr().err
