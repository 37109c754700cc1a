"""ReferencePolicy: the frozen KL reference on the tiny model (real torchtitan modules, CPU, fp32).

- its logprobs are a fresh Learner's (same config) and the learner's at step 0;
- fed to ``train_step`` with ``kl_coef > 0``: ``loss/kl_ref`` is 0 at step 1 (same weights) and
  grows once the learner moves, while the reference's answers stay the same;
- it holds no optimizer state and no gradients; it computes off the event loop;
- bad input names the trajectory; close is idempotent and final.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import torch

from forge_env.learner._learner import Learner, LearnerConfig
from forge_env.learner._losses import LossConfig
from forge_env.learner._reference import ReferencePolicy
from forge_env.rollout import Task, Trajectory

PROMPT_LEN = 4
LENGTHS = (12, 20, 7, 16, 3, 25)
#: Reference vs a fresh Learner: the same code, weights and micro-batches; measured 0.0.
TOL = 1e-6
#: The same sequences batched differently (other padding, other matmul shapes): float32 rounding,
#: up to one ulp of a logprob (9.5e-7 at |logp| ~ 8); measured 0.0 and 9.5e-7 here.
REBATCHED_TOL = 1e-5


def sequences(seed: int = 0, lengths: tuple[int, ...] = LENGTHS) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in lengths]


def trajectories(seqs: list[list[int]], behaviour: list[list[float]] | None = None) -> list[Trajectory]:
    """Prompt of PROMPT_LEN tokens, the rest 'sampled' (behaviour logprobs given, else -1)."""
    out = []
    for i, ids in enumerate(seqs):
        mask = [0] * min(PROMPT_LEN, len(ids) - 1) + [1] * (len(ids) - min(PROMPT_LEN, len(ids) - 1))
        lp = behaviour[i] if behaviour is not None else [-1.0] * len(ids)
        out.append(Trajectory(env_name="hand", task=Task(seed=i), token_ids=ids,
                              logprobs=[v if m else 0.0 for v, m in zip(lp, mask)], loss_mask=mask))
    return out


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def config(path: str, **overrides: object) -> LearnerConfig:
    # micro_batch_size 2: several micro-batches, so padding differs from call to call.
    base: dict[str, object] = {"model": path, "lr": 1e-2, "micro_batch_size": 2}
    base.update(overrides)
    return LearnerConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference(tiny_model_path: str) -> Iterator[ReferencePolicy]:
    ref = ReferencePolicy(config(tiny_model_path))
    yield ref
    asyncio.run(ref.aclose())


async def test_logprobs_equal_a_fresh_learners_and_align_with_the_token_ids(
    reference: ReferencePolicy, tiny_model_path: str
) -> None:
    seqs = sequences()
    ours = await reference.logprobs(trajectories(seqs))
    fresh = [lp.tolist() for lp in Learner(config(tiny_model_path)).logprobs(seqs)]
    assert [len(row) for row in ours] == list(LENGTHS)
    assert all(row[0] == 0.0 and all(isinstance(x, float) and x < 0 for x in row[1:]) for row in ours)
    assert max_diff(ours, fresh) <= TOL
    # The order of the batch does not matter: each trajectory gets its own row.
    backwards = await reference.logprobs(trajectories(seqs[::-1]))
    assert max_diff(backwards[::-1], ours) <= REBATCHED_TOL
    assert await reference.logprobs([]) == []


async def test_kl_to_the_reference_is_zero_at_step_one_then_grows(tiny_model_path: str) -> None:
    cfg = config(tiny_model_path, loss=LossConfig(kl_coef=0.1))
    learner = Learner(cfg)
    seqs = sequences(seed=3)
    async with ReferencePolicy(cfg) as reference:
        # Behaviour logprobs from the learner itself: on-policy at step 1.
        behaviour = [lp.tolist() for lp in learner.logprobs(seqs)]
        trajs = trajectories(seqs, behaviour)
        advantages = [[(1.0 if i % 2 else -1.0) * m for m in t.loss_mask] for i, t in enumerate(trajs)]
        first = await reference.logprobs(trajs)
        assert max_diff(first, behaviour) <= TOL  # the learner at step 0
        kl = []
        for _ in range(4):
            ref = await reference.logprobs(trajs)
            assert ref == first  # frozen: the learner's updates do not reach it
            kl.append(learner.train_step(trajs, advantages, ref_logprobs=ref)["loss/kl_ref"])
        metrics = reference.metrics()
    print(f"\nloss/kl_ref at steps 1-4: {', '.join(f'{k:.2e}' for k in kl)}")
    assert kl[0] <= 1e-12, kl  # identical weights: k3 of equal logprobs
    assert all(k > 1e-6 for k in kl[1:]), kl
    assert kl[-1] > kl[1], kl  # the policy keeps moving away at this learning rate
    assert learner.version == 4
    assert metrics["reference/calls"] == 5 and metrics["reference/sequences"] == 5 * len(seqs)
    assert metrics["reference/tokens"] == 5 * sum(LENGTHS) and metrics["reference/seconds_total"] > 0


async def test_holds_weights_only_no_optimizer_state_no_gradients(reference: ReferencePolicy) -> None:
    await reference.logprobs(trajectories(sequences()))
    learner = reference._learner
    assert learner is not None
    params = list(learner.model.parameters())
    assert not any(p.requires_grad or p.grad is not None for p in params)
    assert not learner.optimizer.state  # AdamW's moments are never allocated
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    assert param_bytes <= reference.weight_bytes <= 2 * param_bytes  # weights + the RoPE cache
    assert reference.metrics()["reference/weight_bytes"] == reference.weight_bytes
    print(f"\nreference holds {reference.weight_bytes / 1e6:.1f} MB ({param_bytes / 1e6:.1f} MB of weights)")


async def test_computes_on_a_worker_thread_while_the_event_loop_runs(reference: ReferencePolicy) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    original = reference._compute

    def spy(seqs: list[list[int]]) -> list[list[float]]:
        seen.append(threading.get_ident())
        return original(seqs)

    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    reference._compute = spy  # type: ignore[method-assign]
    task = asyncio.ensure_future(ticker())
    try:
        await asyncio.sleep(0)
        start_ticks = ticks
        seqs = sequences(seed=5, lengths=(200,) * 8)
        one, two = await asyncio.gather(reference.logprobs(trajectories(seqs[:4])),
                                        reference.logprobs(trajectories(seqs[4:])))
        during = ticks - start_ticks
    finally:
        done = True
        await task
        del reference._compute  # back to the class's method
    assert seen and all(ident != loop_thread for ident in seen)
    assert during >= 2  # the loop ran other tasks while the forward passes ran
    alone = await reference.logprobs(trajectories(seqs))
    assert max_diff(one + two, alone) <= REBATCHED_TOL  # concurrent calls queue, each gets its own rows


async def test_bad_input_names_the_trajectory(reference: ReferencePolicy) -> None:
    good = sequences(lengths=(5,))[0]
    with pytest.raises(ValueError, match=r"trajectory 1 \('hand'\) has token ids outside the vocabulary"):
        await reference.logprobs(trajectories([good, [1, 2, reference.vocab_size]]))
    with pytest.raises(ValueError, match=r"trajectory 0 \('empty'\) has no token ids"):
        await reference.logprobs([Trajectory(env_name="empty", task=Task())])
    long = [1] * (reference.max_seq_len + 1)
    with pytest.raises(ValueError, match="max_seq_len"):
        await reference.logprobs(trajectories([long]))


async def test_close_is_idempotent_and_final(tiny_model_path: str) -> None:
    reference = ReferencePolicy(config(tiny_model_path))
    assert "cpu" in repr(reference)
    await reference.aclose()
    await reference.aclose()
    assert reference.closed and "closed" in repr(reference)
    with pytest.raises(RuntimeError, match="closed"):
        await reference.logprobs(trajectories(sequences(lengths=(5,))))
