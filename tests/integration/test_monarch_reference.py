"""MonarchReference: the KL reference on two real local Monarch replicas against the local one.

- the same numbers as a local ReferencePolicy, with the batch split over both replicas
  (per-replica counts in the metrics);
- a replica SIGKILLed mid-batch: its share is retried on the other, the results are complete
  and equal, and the replica comes back (same frozen weights) and serves again;
- every replica gone (respawn off): the Service's error names the role;
- no process is left behind.

Run with ``-s`` to see the measurements (start, call, detect/respawn times).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import torch

# forge_env.monarch first: it sets the supervision poll period that Monarch reads on import.
from forge_env.monarch import ReplicaDiedError, ServiceUnavailableError
from forge_env.learner._learner import LearnerConfig
from forge_env.learner._reference import ReferencePolicy
from forge_env.rollout import Task, Trajectory

pytest.importorskip("monarch.actor", reason="Monarch is not installed: pip install 'forge-env[monarch]'")

from forge_env.monarch._reference import MonarchReference  # noqa: E402  (after the skip)

pytestmark = [pytest.mark.monarch, pytest.mark.usefixtures("monarch_processes_reaped"),
              pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

#: Replica vs local reference: the same code and weights, and float32 values sent exactly, but a
#: replica's share is padded into other micro-batches: one float32 ulp of a logprob (9.5e-7 at
#: |logp| ~ 8) measured.
TOL = 1e-5
#: 32 sequences of 100-511 tokens: ~1 s of forward passes per replica with one thread each, so
#: a kill 0.2 s into the call lands while the replica computes.
BATCH = 32


def batch(seed: int) -> list[Trajectory]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(100, 512, (BATCH,), generator=g).tolist()
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, 1000, (n,), generator=g).tolist()
        mask = [0] * 8 + [1] * (n - 8)
        out.append(Trajectory(env_name="hand", task=Task(seed=i), token_ids=ids, logprobs=[0.0] * n,
                              loss_mask=mask))
    return out


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


async def _until(condition: Any, poll_s: float = 0.01) -> None:
    while not condition():
        await asyncio.sleep(poll_s)


@pytest.fixture(scope="module")
def config(tiny_model_path: str) -> LearnerConfig:
    return LearnerConfig(model=tiny_model_path, micro_batch_size=4)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def expected(config: LearnerConfig) -> dict[int, list[list[float]]]:
    """The local ReferencePolicy's answers for the batches the tests use."""
    async with ReferencePolicy(config) as local:
        return {seed: await local.logprobs(batch(seed)) for seed in (0, 1, 2)}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reference(config: LearnerConfig) -> AsyncIterator[MonarchReference]:
    ref = MonarchReference(config, replicas=2, health_check_interval_s=0.5)
    started = time.perf_counter()
    async with ref:
        print(f"\n2 reference replicas up in {time.perf_counter() - started:.1f} s")
        yield ref


async def test_same_numbers_as_local_with_the_batch_split_over_both_replicas(
    reference: MonarchReference, expected: dict[int, list[list[float]]]
) -> None:
    started = time.perf_counter()
    remote = await reference.logprobs(batch(0))
    call_s = time.perf_counter() - started
    worst = max_diff(remote, expected[0])
    assert worst <= TOL
    assert all(row[0] == 0.0 for row in remote)
    m = reference.metrics()
    per = [m[f"reference/replica{i}/sequences"] for i in range(2)]
    assert all(n > 0 for n in per) and sum(per) == BATCH
    tokens = [m[f"reference/replica{i}/tokens"] for i in range(2)]
    assert sum(tokens) == sum(len(t.token_ids) for t in batch(0))
    assert max(tokens) <= 1.1 * min(tokens)  # split by token count, not by sequence count
    assert [m[f"service/reference/replica{i}/calls"] for i in range(2)] == [1, 1]
    assert m["reference/calls"] == 1 and m["reference/sequences"] == BATCH
    assert m["reference/weight_bytes"] > 0 and m["reference/replicas_healthy"] == 2
    with pytest.raises(ValueError, match=r"trajectory 1 \('bad'\) has token ids outside the vocabulary"):
        await reference.logprobs([batch(0)[0], Trajectory(env_name="bad", task=Task(), token_ids=[1, 10**6])])
    print(f"\n{BATCH} sequences on 2 replicas: {call_s:.2f} s, split {per[0]:.0f}/{per[1]:.0f} sequences, "
          f"{tokens[0]:.0f}/{tokens[1]:.0f} tokens; max |diff| vs local {worst:.1e}")


async def test_a_replica_killed_mid_batch_loses_nothing_and_comes_back(
    reference: MonarchReference, expected: dict[int, list[list[float]]]
) -> None:
    service = reference.service
    m0 = reference.metrics()
    victim = service.replicas[0]
    assert victim is not None
    pid = victim.pids[0]
    call = asyncio.ensure_future(reference.logprobs(batch(1)))
    await asyncio.wait_for(_until(lambda: service.metrics["service/reference/replica0/in_flight"] > 0), 30)
    await asyncio.sleep(0.2)  # replica 0 is computing its share now
    killed = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    remote = await asyncio.wait_for(call, 120)
    done_s = time.perf_counter() - killed
    assert max_diff(remote, expected[1]) <= TOL  # complete and equal: the share ran on replica 1
    m = reference.metrics()
    delta = {k: m[f"service/reference/{k}"] - m0[f"service/reference/{k}"]
             for k in ("retries", "failures", "replica_deaths")}
    assert delta == {"retries": 1, "failures": 0, "replica_deaths": 1}
    assert m["reference/replica1/sequences"] - m0["reference/replica1/sequences"] == BATCH

    await service.wait_healthy(timeout_s=120)
    back_s = time.perf_counter() - killed
    respawned = service.replicas[0]
    assert respawned is not None and respawned.pids[0] != pid
    assert respawned.generation == victim.generation + 1
    before = reference.metrics()
    again = await reference.logprobs(batch(2))
    assert max_diff(again, expected[2]) <= TOL  # the respawned replica has the same frozen weights
    after = reference.metrics()
    key = "reference/replica{}/sequences"
    assert all(after[key.format(i)] > before[key.format(i)] for i in range(2))  # both served
    print(f"\nreplica 0 killed mid-batch: the batch finished {done_s:.2f} s after the kill (1 share "
          f"retried), replica 0 serving again {back_s:.1f} s after the kill")


async def test_every_replica_gone_is_a_clear_error_naming_the_role(config: LearnerConfig) -> None:
    async with MonarchReference(config, replicas=2, respawn=False, health_check_interval_s=0.2) as ref:
        service = ref.service
        pids = [r.pids[0] for r in service.replicas if r is not None]
        call = asyncio.ensure_future(ref.logprobs(batch(0)))
        await asyncio.wait_for(_until(lambda: service.metrics["service/reference/in_flight"] >= 2), 30)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        # Mid-call: the last replica died under it (or was already known dead): either way the role is named.
        with pytest.raises((ReplicaDiedError, ServiceUnavailableError), match="reference"):
            await asyncio.wait_for(call, 60)
        await asyncio.wait_for(_until(lambda: service.replica_states() == ["failed", "failed"]), 30)
        with pytest.raises(ServiceUnavailableError) as info:
            await ref.logprobs(batch(0))
    message = str(info.value)
    assert "reference: no replica of ReferenceActor is left" in message
    assert "Killed(sig=9)" in message and "respawn is off" in message
    with pytest.raises(RuntimeError, match="closed"):
        await ref.logprobs(batch(0))
