"""The learner's and TorchGenerator's GPU path, on a real CUDA device.

Every test here is marked ``gpu`` and skips on a machine without CUDA; they run on a lent GPU
machine through ``scripts/gpu_check.sh``. Two models: the tiny chat model (~2.6M parameters)
and a wider one of the same recipe (hidden 1024, 8 layers, ~100M parameters).

- teacher-forced logprobs equal a transformers fp32 forward on the GPU: fp32 to 1e-4 nats,
  bf16 (the GPU default: autocast over fp32 master weights) within bf16 rounding;
- GRPO on fixed synthetic trajectories moves the logprobs the way the advantages say;
- ``compile=True`` and activation checkpointing ("full", "selective") take the same steps as
  the plain config, and keep the checkpoint names;
- trained weights -> ``TorchGenerator.update_weights`` on the GPU: the generator's logprobs of
  its own samples equal the learner's; ``save_hf`` loads in transformers on the GPU.

Measured numbers are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import pytest
import torch

from forge_env.generator import Completion, Generator, SamplingParams, TorchGenerator, TorchGeneratorConfig
from forge_env.learner import Learner, LearnerConfig
from forge_env.models import TinyModelConfig, build_tiny_model
from forge_env.rollout import Task, Trajectory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="no CUDA device here: the GPU path is checked on a lent GPU machine (scripts/gpu_check.sh)",
    ),
]

#: Where everything runs. A constant, not a fixture: a CPU dry run of this module (the same
#: code paths minus the CUDA kernels) only needs to change it.
DEVICE: Literal["cpu", "cuda"] = "cuda"

DType = Literal["float32", "bfloat16"]

#: fp32 learner vs fp32 transformers / generator (nats); the same bound as on the CPU. H200:
#: 1e-6 (tiny), 4e-6 (wide).
FP32_TOL = 1e-4
#: bf16 learner (autocast, fp32 master weights) vs an fp32 reference, max over tokens (nats).
#: bf16 keeps 8 significant bits (relative rounding up to 2^-9); the roundings add up through
#: the layers. Measured on an H200 (torch 2.11): max 0.0072 on the tiny model, 0.030 on the wide
#: one, mean 0.0017 and 0.0066 (CPU autocast gives the same): a 3x margin. A wrong weight or a
#: wrong mask moves logprobs by whole nats.
BF16_TOL = 0.1
#: The same, for the mean |diff| over tokens: the typical token, not the worst one.
BF16_MEAN_TOL = 0.02
#: bf16 learner vs a generator holding bf16 weights (its norms and residual stream are bf16 too,
#: unlike autocast). H200, tiny model: 0.013 at most.
GEN_BF16_TOL = BF16_TOL

#: The wider model: the tiny recipe at ~100M parameters, wide enough that bf16 matmuls and
#: flash attention take their real GPU paths.
WIDE = TinyModelConfig(hidden_size=1024, intermediate_size=3072, num_hidden_layers=8,
                       num_attention_heads=16, num_key_value_heads=8)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("gpu_models") / "tiny"))


@pytest.fixture(scope="module")
def wide_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("gpu_models") / "wide", WIDE))


@pytest.fixture(scope="module")
def cache() -> dict[str, Any]:
    """Results shared between the tests of this module (references computed once)."""
    return {}


# --- helpers (device-agnostic: they run on the CPU too) ---------------------------------------


def random_sequences(
    n: int, *, seed: int, lengths: tuple[int, int] = (2, 64), vocab: int = 1000
) -> list[list[int]]:
    """``n`` random id sequences (ids 7..vocab-1: past the special tokens), lengths in ``lengths``."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = lengths
    sizes = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    return [torch.randint(7, vocab, (size,), generator=g).tolist() for size in sizes]


def hf_logprobs(folder: str, seqs: list[list[int]], device: str) -> list[torch.Tensor]:
    """Per sequence, ``[0.0, log p(ids[1] | ids[:1]), ...]`` from a transformers fp32 forward on
    ``device``, one sequence at a time (no padding); CPU tensors."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = model.to(device).eval()
    out = []
    with torch.no_grad():
        for ids in seqs:
            x = torch.tensor([ids], device=device)
            logits = model(x).logits[0, :-1].float()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, x[0, 1:].unsqueeze(1)).squeeze(1)
            out.append(torch.cat([torch.zeros(1), lp.cpu()]))
    del model
    return out


def logprob_diff(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> tuple[float, float]:
    """(max, mean) of |ours - theirs| over every token of every sequence."""
    diffs = torch.cat([(a - b).abs() for a, b in zip(ours, theirs)])
    return float(diffs.max()), float(diffs.mean())


def trajectories(seqs: list[list[int]], logprobs: list[torch.Tensor], prompt_len: int) -> list[Trajectory]:
    """One trajectory per sequence: the first ``prompt_len`` ids are the prompt, the rest
    "sampled" with the given behaviour logprobs."""
    return [
        Trajectory(env_name="gpu-path", task=Task(seed=i), token_ids=list(ids),
                   logprobs=[0.0] * prompt_len + lp[prompt_len:].tolist(),
                   loss_mask=[0] * prompt_len + [1] * (len(ids) - prompt_len), prompt_len=prompt_len)
        for i, (ids, lp) in enumerate(zip(seqs, logprobs))
    ]


def completion_mean(learner: Learner, seqs: list[list[int]], rows: list[int], prompt_len: int) -> float:
    """Mean logprob of the completion tokens of ``seqs[rows]`` under the learner now."""
    lps = learner.logprobs([seqs[i] for i in rows])
    return float(torch.cat([lp[prompt_len:] for lp in lps]).mean())


def finite(metrics: dict[str, float]) -> bool:
    return all(math.isfinite(v) for v in metrics.values())


def run_steps(
    config: LearnerConfig, seqs: list[list[int]], advantages: list[float], *, prompt_len: int, steps: int,
    behaviour: list[torch.Tensor] | None = None,
) -> tuple[Learner, list[dict[str, float]]]:
    """``steps`` GRPO steps on ``seqs``. ``behaviour``: fixed old logprobs (off-policy after the
    first step, so the ratio and the loss depend on the weights); None: the learner's own
    logprobs before each step (on-policy, as a fresh rollout would give)."""
    learner = Learner(config)
    history = []
    for _ in range(steps):
        old = behaviour if behaviour is not None else learner.logprobs(seqs)
        history.append(learner.train_step(trajectories(seqs, old, prompt_len), advantages))
    return learner, history


async def sample(
    gen: Generator, prompts: list[list[int]], *, temperature: float, seed: int
) -> list[Completion]:
    params = [SamplingParams(max_tokens=24, temperature=temperature, seed=seed + i)
              for i in range(len(prompts))]
    return list(await asyncio.gather(*(gen.generate(p, sp) for p, sp in zip(prompts, params))))


def generator_vs_learner(learner: Learner, prompts: list[list[int]], outs: list[Completion],
                         temperature: float) -> float:
    """Max |generator logprob - learner logprob| over the sampled tokens."""
    ours = learner.logprobs([p + o.token_ids for p, o in zip(prompts, outs)], temperature=temperature)
    return max(float((lp[len(p):] - torch.tensor(o.logprobs)).abs().max())
               for lp, p, o in zip(ours, prompts, outs))


# --- logprobs vs transformers -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model", ["tiny", "wide"])
def test_logprobs_match_transformers_on_cuda(
    model: str, dtype: DType, tiny_path: str, wide_path: str, cache: dict[str, Any]
) -> None:
    folder = tiny_path if model == "tiny" else wide_path
    seqs = random_sequences(12, seed=1)
    key = f"hf_reference_{model}"
    if key not in cache:
        cache[key] = hf_logprobs(folder, seqs, DEVICE)
    # micro_batch_size 5: right-padded batches of different widths, as in training.
    learner = Learner(LearnerConfig(model=folder, device=DEVICE, dtype=dtype, micro_batch_size=5))
    assert learner.device.type == DEVICE and learner.compute_dtype == getattr(torch, dtype)
    # Master weights stay fp32 whatever the compute dtype.
    assert all(p.dtype == torch.float32 and p.device.type == DEVICE for p in learner.model.parameters())
    worst, mean = logprob_diff(learner.logprobs(seqs), cache[key])
    print(f"\n[gpu] {model} learner {dtype} vs transformers fp32 on {DEVICE}: max |diff| {worst:.2e}, "
          f"mean {mean:.2e} nats")
    if dtype == "float32":
        assert worst < FP32_TOL
    else:
        assert worst < BF16_TOL and mean < BF16_MEAN_TOL
        assert worst > 10 * FP32_TOL, "bf16 gave fp32's numbers: is autocast on?"


def test_auto_dtype_is_bf16_on_cuda(tiny_path: str) -> None:
    learner = Learner(LearnerConfig(model=tiny_path))
    assert learner.device.type == DEVICE and learner.compute_dtype == torch.bfloat16


# --- training ---------------------------------------------------------------------------------


def test_grpo_moves_logprobs_the_right_way_on_cuda(tiny_path: str) -> None:
    prompt_len, steps = 8, 20
    seqs = random_sequences(8, seed=2, lengths=(32, 32))
    advantages = [1.0 if i % 2 == 0 else -1.0 for i in range(len(seqs))]
    pos, neg = list(range(0, 8, 2)), list(range(1, 8, 2))
    config = LearnerConfig(model=tiny_path, device=DEVICE, dtype="bfloat16", lr=1e-3)
    learner = Learner(config)
    before = completion_mean(learner, seqs, pos, prompt_len), completion_mean(learner, seqs, neg, prompt_len)
    del learner
    learner, history = run_steps(config, seqs, advantages, prompt_len=prompt_len, steps=steps)
    after = completion_mean(learner, seqs, pos, prompt_len), completion_mean(learner, seqs, neg, prompt_len)
    print(f"\n[gpu] GRPO bf16, {steps} steps: mean completion logprob "
          f"A=+1 {before[0]:.3f} -> {after[0]:.3f}, A=-1 {before[1]:.3f} -> {after[1]:.3f}; "
          f"grad_norm {history[0]['learner/grad_norm']:.3f} -> {history[-1]['learner/grad_norm']:.3f}")
    assert all(finite(m) for m in history)
    assert all(m["learner/skipped"] == 0.0 for m in history)
    assert learner.version == steps and learner.step == steps
    assert [m["learner/version"] for m in history] == [float(k + 1) for k in range(steps)]
    # On-policy: the behaviour logprobs are the learner's own, so the ratio starts at 1 (up to
    # the bf16 forward of train_step vs that of logprobs(), which are the same computation).
    assert history[0]["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-3)
    assert after[0] > before[0] + 0.5, "the positively-advantaged tokens did not become likelier"
    assert after[1] < before[1] - 0.5, "the negatively-advantaged tokens did not become less likely"
    assert all(p.isfinite().all() for p in learner.model.parameters())


# --- learner -> generator, learner -> HF folder -----------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trained_weights_reach_the_torch_generator_on_cuda(dtype: DType, tiny_path: str) -> None:
    learner = Learner(LearnerConfig(model=tiny_path, device=DEVICE, dtype=dtype, lr=1e-3))
    prompts = random_sequences(6, seed=4, lengths=(4, 16))
    tol = FP32_TOL if dtype == "float32" else GEN_BF16_TOL

    async def scenario() -> dict[str, float]:
        found: dict[str, float] = {}
        config = TorchGeneratorConfig(model=tiny_path, device=DEVICE, dtype=dtype, max_model_len=256)
        async with TorchGenerator(config) as gen:
            outs = await sample(gen, prompts, temperature=1.0, seed=0)
            found["before_update"] = generator_vs_learner(learner, prompts, outs, 1.0)
            trajs = [
                Trajectory(env_name="gpu-path", task=Task(seed=i), token_ids=p + o.token_ids,
                           logprobs=[0.0] * len(p) + o.logprobs,
                           loss_mask=[0] * len(p) + [1] * len(o.token_ids), prompt_len=len(p))
                for i, (p, o) in enumerate(zip(prompts, outs))
            ]
            metrics = learner.train_step(trajs, [1.0 if i % 2 == 0 else -1.0 for i in range(len(trajs))])
            assert finite(metrics) and learner.version == 1
            found["stale"] = generator_vs_learner(learner, prompts, outs, 1.0)
            named = learner.hf_named_tensors()
            assert all(t.device.type == DEVICE and t.dtype == torch.float32 for _, t in named)
            await gen.update_weights(named, version=learner.version)
            for temperature in (1.0, 0.7):
                outs = await sample(gen, prompts, temperature=temperature, seed=100)
                assert all(o.version == 1 and o.token_ids for o in outs)
                diff = generator_vs_learner(learner, prompts, outs, temperature)
                found[f"after_update_T{temperature}"] = diff
        return found

    found = asyncio.run(scenario())
    print(f"\n[gpu] TorchGenerator {dtype} on {DEVICE} vs learner {dtype}: "
          + ", ".join(f"{k} {v:.2e}" for k, v in found.items()))
    assert found["stale"] > 5 * tol, "training did not move the weights: the check below would prove nothing"
    assert max(v for k, v in found.items() if k != "stale") < tol


def test_save_hf_loads_in_transformers_on_cuda(tiny_path: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    learner = Learner(LearnerConfig(model=tiny_path, device=DEVICE, dtype="float32", lr=1e-3))
    seqs = random_sequences(6, seed=5, lengths=(24, 24))
    learner.train_step(trajectories(seqs, learner.logprobs(seqs), 8), [1.0, -1.0] * 3)
    snapshot = {name: t.cpu() for name, t in learner.hf_named_tensors()}

    folder = learner.save_hf(tmp_path / "hf")
    model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = model.to(DEVICE).eval()
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name].cpu(), tensor) for name, tensor in snapshot.items())
    worst, _ = logprob_diff(learner.logprobs(seqs), hf_logprobs(str(folder), seqs, DEVICE))
    print(f"\n[gpu] save_hf -> transformers on {DEVICE}: max |logprob diff| {worst:.2e}")
    assert worst < FP32_TOL

    # A bf16 export: half the bytes, weights rounded once, config says bfloat16.
    folder16 = learner.save_hf(tmp_path / "hf16", dtype=torch.bfloat16)
    model16: Any = AutoModelForCausalLM.from_pretrained(folder16, dtype="auto")
    model16 = model16.to(DEVICE)
    assert model16.dtype == torch.bfloat16
    loaded16 = model16.state_dict()
    assert all(torch.equal(loaded16[name].cpu(), tensor.to(torch.bfloat16))
               for name, tensor in snapshot.items())


# --- GPU options: compile, activation checkpointing --------------------------------------


#: The plain config and the GPU options compared with it (bf16, the GPU default).
VARIANTS: dict[str, dict[str, Any]] = {
    "ac_full": {"activation_checkpointing": "full"},
    "ac_selective": {"activation_checkpointing": "selective"},
    "compile": {"compile": True},
    "compile_ac_selective": {"compile": True, "activation_checkpointing": "selective"},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compile_and_activation_checkpointing_match_plain(
    variant: str, tiny_path: str, cache: dict[str, Any]
) -> None:
    prompt_len, steps = 8, 4
    # One length: compiled blocks see one shape (no recompiles) in training and in logprobs.
    seqs = random_sequences(8, seed=3, lengths=(40, 40))
    advantages = [1.0 if i % 2 == 0 else -1.0 for i in range(len(seqs))]
    base = LearnerConfig(model=tiny_path, device=DEVICE, dtype="bfloat16", lr=1e-3)
    if "plain" not in cache:
        behaviour = Learner(base).logprobs(seqs)
        plain, plain_history = run_steps(base, seqs, advantages, prompt_len=prompt_len, steps=steps,
                                         behaviour=behaviour)
        cache["plain"] = (behaviour, plain_history, plain.logprobs(seqs), set(plain.state_dict()["model"]))
    behaviour, plain_history, plain_after, plain_keys = cache["plain"]

    config = dataclasses.replace(base, **VARIANTS[variant])
    learner, history = run_steps(config, seqs, advantages, prompt_len=prompt_len, steps=steps,
                                 behaviour=behaviour)
    after_max, after_mean = logprob_diff(learner.logprobs(seqs), plain_after)
    _, moved = logprob_diff(plain_after, behaviour)  # how far the plain steps moved the logprobs
    norm_rel = abs(history[0]["learner/grad_norm"] / plain_history[0]["learner/grad_norm"] - 1.0)
    loss_diff = max(abs(m["loss/total"] - p["loss/total"]) for m, p in zip(history, plain_history))
    plain_losses = [round(p["loss/total"], 4) for p in plain_history]
    print(f"\n[gpu] {variant} vs plain (bf16, {steps} steps): first grad_norm rel diff {norm_rel:.2e}, "
          f"max |loss diff| {loss_diff:.2e} (plain losses {plain_losses}), logprobs after: "
          f"|diff| max {after_max:.2e} mean {after_mean:.2e} (plain moved them {moved:.2e})")
    assert all(finite(m) for m in history) and learner.version == steps
    # Off-policy from step 2: the loss depends on the updated weights, so equal losses mean
    # equal steps. The first loss is the same number either way (ratio 1).
    assert history[0]["loss/total"] == pytest.approx(plain_history[0]["loss/total"], abs=1e-3)
    assert norm_rel < 0.02
    assert loss_diff < 0.01
    # Compile fuses bf16 ops differently (other roundings), and AdamW's first steps turn a
    # gradient's sign into a full-size update, so the weights drift apart a little: the
    # drift must stay far below the steps themselves. (H200, compile: max 0.031, mean 0.004,
    # against a mean move of 0.77; activation checkpointing alone: bit-identical.)
    assert after_max < 2 * BF16_TOL and after_mean < 0.2 * moved
    # Checkpoints do not depend on the GPU options: no "_checkpoint_wrapped_module" in the names.
    assert set(learner.state_dict()["model"]) == plain_keys
