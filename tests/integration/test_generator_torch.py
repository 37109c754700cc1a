"""TorchGenerator (plain torch + transformers) on the tiny model: the same contract checks
as the vLLM generator (generator_checks.py), plus its batching and top-k/top-p."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

import generator_checks as checks
from forge_env.generator import GeneratorError, SamplingParams, TorchGenerator, TorchGeneratorConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_MODEL_LEN = 512


@pytest.fixture(scope="module")
def model_dir(tiny_model_path: str) -> Path:
    """The session's tiny model folder (conftest); generators never write to it."""
    return Path(tiny_model_path)


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    return checks.load_reference(model_dir)


@pytest.fixture(scope="module")
def original(reference) -> dict:
    return checks.state_of(reference)


@pytest.fixture(scope="module")
def prompts(reference) -> list[list[int]]:
    return checks.make_prompts(16, vocab=reference.config.vocab_size)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gen(model_dir: Path):
    generator = TorchGenerator(TorchGeneratorConfig(model=str(model_dir), max_model_len=MAX_MODEL_LEN))
    await generator.start()
    yield generator
    await generator.close()


async def test_concurrent_requests_are_batched(gen: TorchGenerator, reference, prompts) -> None:
    batches = gen.metrics["generator/batches"]
    await checks.concurrent_generation(gen, reference, prompts)
    # 16 requests sent together: one batch (max_batch_size 32), not 16.
    assert gen.metrics["generator/batches"] - batches == 1


@pytest.mark.parametrize("temperature", [1.0, 0.7])
async def test_logprobs_match_a_transformers_forward(gen: TorchGenerator, reference, prompts, temperature) -> None:
    # Prompts of 1..40 tokens in one left-padded batch.
    diff = await checks.parity(gen, reference, prompts[:8], SamplingParams(max_tokens=32, temperature=temperature))
    print(f"\ntorch logprob max |diff| vs transformers fp32 at T={temperature}: {diff:.2e}")
    assert diff < checks.LOGPROB_TOL


async def test_greedy_is_deterministic_and_untempered(gen: TorchGenerator, reference, prompts) -> None:
    diff = await checks.greedy_is_argmax(gen, reference, prompts[:6])
    assert diff < checks.LOGPROB_TOL


async def test_same_seed_same_completion_whatever_the_batch(gen: TorchGenerator, prompts) -> None:
    params = SamplingParams(max_tokens=16, seed=123)
    alone = await gen.generate(prompts[0], params)
    together = await asyncio.gather(*(gen.generate(p, params) for p in prompts[:5]))
    assert together[0].token_ids == alone.token_ids
    assert max(abs(a - b) for a, b in zip(together[0].logprobs, alone.logprobs)) < 1e-4


async def test_top_k_and_top_p_restrict_and_renormalise(gen: TorchGenerator, reference, prompts) -> None:
    import torch

    prompt = prompts[3]
    out = await gen.generate(prompt, SamplingParams(max_tokens=24, top_k=3, seed=5))
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = reference(ids).logits[0, len(prompt) - 1 : -1]
    top3 = logits.topk(3, dim=-1)
    for j, token in enumerate(out.token_ids):
        assert token in top3.indices[j].tolist()
        # The logprob of the renormalised top-3 distribution.
        expected = torch.log_softmax(top3.values[j], dim=-1)[top3.indices[j].tolist().index(token)]
        assert abs(float(expected) - out.logprobs[j]) < checks.LOGPROB_TOL
    nucleus = await gen.generate(prompt, SamplingParams(max_tokens=24, top_p=0.05, seed=5))
    # With random weights the distribution is flat: a 5% nucleus keeps a few dozen tokens, each
    # renormalised to more than its full-distribution probability.
    assert all(lp > -6.0 for lp in nucleus.logprobs)


async def test_eos_stop_ids_and_ignore_eos(gen: TorchGenerator, original, prompts) -> None:
    await checks.copy_model_stops(gen, original, prompts[1])


async def test_update_changes_outputs_and_restoring_restores(gen: TorchGenerator, model_dir, original, prompts) -> None:
    diffs = await checks.update_changes_and_restores(gen, model_dir, original, prompts[2])
    print(f"\ntorch after update: {diffs}; update took {gen.metrics['generator/update_s']:.3f} s")


@pytest.mark.slow
async def test_in_flight_finish_keeps_old_version(gen: TorchGenerator, model_dir, original, prompts) -> None:
    await checks.in_flight_finish(gen, model_dir, original, prompts[:4])


@pytest.mark.slow
async def test_in_flight_abort_resamples_on_new_weights(gen: TorchGenerator, model_dir, original, prompts) -> None:
    await checks.in_flight_abort(gen, model_dir, original, prompts[:4])


async def test_bad_weight_names_are_refused(gen: TorchGenerator, original) -> None:
    bad = {k.replace("model.norm", "model.nrom"): v for k, v in original.items()}
    with pytest.raises(GeneratorError, match=r"unknown names.*model\.nrom\.weight"):
        await gen.update_weights(bad.items(), version=gen.version + 1)


async def test_prompt_limits(gen: TorchGenerator) -> None:
    with pytest.raises(GeneratorError, match="max_model_len"):
        await gen.generate([5] * MAX_MODEL_LEN, SamplingParams(max_tokens=4))
    out = await gen.generate([5] * (MAX_MODEL_LEN - 3), SamplingParams(max_tokens=50, ignore_eos=True))
    assert (len(out.token_ids), out.finish_reason) == (3, "length")


async def test_cancelled_request_leaves_the_batch(gen: TorchGenerator, prompts) -> None:
    task = asyncio.create_task(gen.generate(prompts[0], SamplingParams(max_tokens=400, ignore_eos=True)))
    other = asyncio.create_task(gen.generate(prompts[1], SamplingParams(max_tokens=8, ignore_eos=True)))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len((await other).token_ids) == 8


async def test_close_aborts_requests_in_flight(model_dir: Path) -> None:
    gen = TorchGenerator(TorchGeneratorConfig(model=str(model_dir), max_model_len=MAX_MODEL_LEN))
    running = asyncio.create_task(gen.generate([5, 6], SamplingParams(max_tokens=500, ignore_eos=True)))
    await asyncio.sleep(0.5)
    await gen.close()
    out = await running
    assert out.finish_reason == "abort" and out.token_ids == []
    with pytest.raises(GeneratorError, match="closed"):
        await gen.generate([5], SamplingParams())
    await gen.close()  # idempotent
