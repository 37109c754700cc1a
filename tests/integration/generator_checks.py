"""The generator contract, checked the same way for VLLMGenerator and TorchGenerator.

Not a test module: test_generator_vllm.py and test_generator_torch.py call these checks on
their own generator. The reference is a fresh fp32 transformers forward pass over prompt +
completion (teacher forcing): its log_softmax(logits / T) at the sampled ids must match the
generator's logprobs.
"""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from typing import Any

import torch

from forge_env.generator import Completion, Generator, SamplingParams, TorchGenerator, VLLMGenerator

#: Both take update_weights(..., in_flight=...), an extension of the Generator contract.
Switchable = VLLMGenerator | TorchGenerator

#: Logprobs must match the teacher-forced fp32 reference this closely (nats). Measured:
#: ~1e-6 for both generators on the tiny model (fp32 reductions in another order).
LOGPROB_TOL = 1e-3
#: Sampled tokens per request for the in-flight checks: long enough that the requests are
#: still generating when the update starts.
LONG_TOKENS = 384


def make_prompts(n: int, *, vocab: int, seed: int = 0, eos: int = 2) -> list[list[int]]:
    """``n`` prompts of 1..40 random ids (no EOS: the copy model would answer it)."""
    rng = random.Random(seed)
    ids = [t for t in range(3, vocab)]
    return [[rng.choice(ids) for _ in range(rng.randint(1, 40))] for _ in range(n)]


def load_reference(folder: Path, state: dict[str, torch.Tensor] | None = None) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    if state is not None:
        model.load_state_dict(state, strict=False)
    return model


def state_of(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def perturbed(state: dict[str, torch.Tensor], *, scale: float = 0.05, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every weight plus seeded noise (the tied lm_head follows the embedding)."""
    g = torch.Generator().manual_seed(seed)
    out = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items() if k != "lm_head.weight"}
    if "lm_head.weight" in state:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def copy_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Attention and MLP outputs zeroed: the residual stream is the current token's
    embedding, so (tied embeddings) the greedy next token is always the last token."""
    return {k: torch.zeros_like(v) if ("o_proj" in k or "down_proj" in k) else v.clone() for k, v in state.items()}


def reference_logprobs(model: Any, prompt: list[int], completion: Completion, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of the reference at each sampled id (T=0: untempered)."""
    ids = torch.tensor([prompt + completion.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    logprobs = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    return logprobs.gather(-1, torch.tensor(completion.token_ids).unsqueeze(1)).squeeze(1)


def max_logprob_diff(model: Any, prompt: list[int], completion: Completion, temperature: float) -> float:
    ref = reference_logprobs(model, prompt, completion, temperature)
    return float((ref - torch.tensor(completion.logprobs)).abs().max())


def check_completion(gen: Generator, prompt: list[int], out: Completion, params: SamplingParams) -> None:
    """The shape of a valid completion."""
    assert out.prompt_len == len(prompt)
    assert 1 <= len(out.token_ids) == len(out.logprobs) <= params.max_tokens
    assert all(math.isfinite(lp) and lp <= 1e-6 for lp in out.logprobs), out.logprobs
    stops = set(params.stop_token_ids) | (set() if params.ignore_eos else set(gen.eos_token_ids))
    assert not stops & set(out.token_ids[:-1]), "a stop id before the end"
    if out.finish_reason == "stop":
        assert out.token_ids[-1] in stops
    else:
        assert out.finish_reason == "length"
        assert len(out.token_ids) == min(params.max_tokens, gen.max_model_len - len(prompt))
    assert out.seconds > 0


async def concurrent_generation(gen: Generator, ref: Any, prompts: list[list[int]]) -> float:
    """Many requests at once, of different lengths (rows leave a batch at different steps):
    valid completions whose logprobs match the reference. Returns the max difference."""
    params = [SamplingParams(max_tokens=8 + i % 9, seed=i) for i in range(len(prompts))]
    outs = await asyncio.gather(*(gen.generate(p, sp) for p, sp in zip(prompts, params)))
    for prompt, sp, out in zip(prompts, params, outs):
        check_completion(gen, prompt, out, sp)
        assert out.version == gen.version
    worst = max(max_logprob_diff(ref, p, o, 1.0) for p, o in zip(prompts, outs))
    assert worst < LOGPROB_TOL
    return worst


async def parity(gen: Generator, ref: Any, prompts: list[list[int]], params: SamplingParams) -> float:
    """Max |generator - reference| logprob over the completions of ``prompts``."""
    outs = await asyncio.gather(
        *(gen.generate(p, SamplingParams(**{**_fields(params), "seed": i})) for i, p in enumerate(prompts))
    )
    return max(max_logprob_diff(ref, p, o, params.temperature) for p, o in zip(prompts, outs))


def _fields(params: SamplingParams) -> dict[str, Any]:
    return {f: getattr(params, f) for f in params.__dataclass_fields__}


async def greedy_is_argmax(gen: Generator, ref: Any, prompts: list[list[int]]) -> float:
    """Greedy twice gives the same ids; each greedy logprob is the reference's max logprob
    (robust to near-ties, unlike comparing ids). Returns the max logprob difference."""
    params = SamplingParams(max_tokens=16, temperature=0.0)
    first = await asyncio.gather(*(gen.generate(p, params) for p in prompts))
    again = await asyncio.gather(*(gen.generate(p, params) for p in prompts))
    assert [o.token_ids for o in first] == [o.token_ids for o in again]
    worst = 0.0
    for prompt, out in zip(prompts, first):
        ids = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            logits = ref(ids).logits[0, len(prompt) - 1 : -1].float()
        best = torch.log_softmax(logits, dim=-1).max(dim=-1).values
        worst = max(worst, float((best - torch.tensor(out.logprobs)).abs().max()))
    return worst


async def copy_model_stops(gen: Generator, original: dict[str, torch.Tensor], prompt: list[int]) -> None:
    """On the copy model the greedy answer repeats the last token: EOS stops at once,
    stop_token_ids stop, ignore_eos runs past EOS, and the rest runs to max_tokens."""
    (eos, *_) = gen.eos_token_ids
    version = gen.version + 1
    await gen.update_weights(copy_model(original).items(), version=version)
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    out = await gen.generate([*prompt, eos], greedy)
    assert (out.token_ids, out.finish_reason, out.version) == ([eos], "stop", version)
    last = prompt[-1]
    out = await gen.generate(prompt, greedy)
    assert (out.token_ids, out.finish_reason) == ([last] * 6, "length")
    out = await gen.generate(prompt, SamplingParams(max_tokens=6, temperature=0.0, stop_token_ids=(last,)))
    assert (out.token_ids, out.finish_reason) == ([last], "stop")
    out = await gen.generate([*prompt, eos], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    assert (out.token_ids, out.finish_reason) == ([eos] * 4, "length")
    await gen.update_weights(original.items(), version=version + 1)


async def update_changes_and_restores(
    gen: Generator, folder: Path, original: dict[str, torch.Tensor], prompt: list[int]
) -> dict[str, float]:
    """New weights: new version, new logprobs matching the new reference; the original
    weights again: the original completion again. Returns measured differences."""
    params = SamplingParams(max_tokens=24, temperature=1.0, seed=7)
    before = await gen.generate(prompt, params)
    v = gen.version
    assert before.version == v
    new_state = perturbed(original)
    await gen.update_weights(new_state.items(), version=v + 1)
    assert gen.version == v + 1
    after = await gen.generate(prompt, params)
    assert after.version == v + 1
    new_ref = load_reference(folder, new_state)
    new_diff = max_logprob_diff(new_ref, prompt, after, 1.0)
    assert new_diff < LOGPROB_TOL
    old_ref = load_reference(folder)
    # The completion is not the one the old weights would give.
    assert after.token_ids != before.token_ids or max_logprob_diff(old_ref, prompt, after, 1.0) > 0.1
    await gen.update_weights(original.items(), version=v + 2)
    restored = await gen.generate(prompt, params)
    assert restored.version == v + 2
    assert restored.token_ids == before.token_ids
    restore_diff = max(abs(a - b) for a, b in zip(restored.logprobs, before.logprobs))
    assert restore_diff < 1e-5
    return {"new_weights_max_diff": new_diff, "restore_max_diff": restore_diff}


async def in_flight_finish(
    gen: Switchable, folder: Path, original: dict[str, torch.Tensor], prompts: list[list[int]]
) -> float:
    """in_flight="finish": requests running when the update starts complete on the old
    weights with the old version; requests sent during the update are stamped with the
    version whose weights sampled them. Returns the max logprob difference seen."""
    v = gen.version
    long = SamplingParams(max_tokens=LONG_TOKENS, temperature=1.0, ignore_eos=True)
    running = [asyncio.create_task(gen.generate(p, long)) for p in prompts]
    await asyncio.sleep(0.3)
    assert not any(t.done() for t in running), "requests finished before the update: raise LONG_TOKENS"
    new_state = perturbed(original, seed=1)
    update = asyncio.create_task(gen.update_weights(new_state.items(), version=v + 1, in_flight="finish"))
    during = []
    short = SamplingParams(max_tokens=8, temperature=1.0)
    for _ in range(3):  # sent while the update waits for the running requests
        await asyncio.sleep(0.05)
        during.append(asyncio.create_task(gen.generate(prompts[0], short)))
    await update
    assert all(t.done() for t in running), "an update with in_flight='finish' returned before its in-flight requests"
    refs = {v: load_reference(folder), v + 1: load_reference(folder, new_state)}
    worst = 0.0
    for prompt, task in zip(prompts, running):
        out = task.result()
        assert out.version == v and len(out.token_ids) == LONG_TOKENS
        worst = max(worst, max_logprob_diff(refs[v], prompt, out, 1.0))
    for task in during:
        out = await task
        assert out.version in refs
        worst = max(worst, max_logprob_diff(refs[out.version], prompts[0], out, 1.0))
    assert [(await t).version for t in during][-1] == v + 1
    assert worst < LOGPROB_TOL
    await gen.update_weights(original.items(), version=v + 2)
    return worst


async def in_flight_abort(
    gen: Switchable, folder: Path, original: dict[str, torch.Tensor], prompts: list[list[int]]
) -> float:
    """in_flight="abort": requests running when the update starts are sampled again from
    the start on the new weights: new version, logprobs of the new weights, counted as
    resampled. Returns the max logprob difference seen."""
    v = gen.version
    resampled = gen.metrics["generator/resampled"]
    long = SamplingParams(max_tokens=LONG_TOKENS, temperature=1.0, ignore_eos=True)
    running = [asyncio.create_task(gen.generate(p, long)) for p in prompts]
    await asyncio.sleep(0.3)
    assert not any(t.done() for t in running), "requests finished before the update: raise LONG_TOKENS"
    new_state = perturbed(original, seed=2)
    await gen.update_weights(new_state.items(), version=v + 1, in_flight="abort")
    new_ref = load_reference(folder, new_state)
    worst = 0.0
    for prompt, task in zip(prompts, running):
        out = await task
        assert out.version == v + 1 and len(out.token_ids) == LONG_TOKENS and out.finish_reason == "length"
        worst = max(worst, max_logprob_diff(new_ref, prompt, out, 1.0))
    assert gen.metrics["generator/resampled"] - resampled == len(prompts)
    assert worst < LOGPROB_TOL
    await gen.update_weights(original.items(), version=v + 2)
    return worst
