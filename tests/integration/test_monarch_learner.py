"""MonarchLearner: the learner over a real local Monarch mesh (FSDP2 over gloo) against one process.

- two processes take the same steps as one local Learner on the whole batch (losses, metrics,
  weights after two steps);
- checkpoints are full: a local Learner resumes from a MonarchLearner's state and continues
  identically, and a MonarchLearner loads a local Learner's state;
- ``push_weights`` reaches a local TorchGenerator (``update_weights`` fallback) and the replicas
  of a MonarchGenerator (rank 0 writes /dev/shm, ``load_weights_from``): their greedy logprobs
  equal the learner's;
- bad input is refused on every rank without breaking the learner; ``close()`` leaves no process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from dp_batches import dp_batch

from forge_env.generator import SamplingParams, TorchGenerator, TorchGeneratorConfig
from forge_env.learner import Learner, LearnerConfig
# Before Monarch's import: forge_env.monarch sets Monarch's supervision poll interval (1 s).
from forge_env.monarch import ServiceConfig
from forge_env.rollout import Task, Trajectory

psutil = pytest.importorskip("psutil")
pytest.importorskip("monarch.actor", reason="Monarch is not installed: pip install 'forge-env[monarch]'")

from forge_env.monarch._learner import MonarchLearner, _balance, _split_by_prefix  # noqa: E402  (after the skip)

#: Losses and metrics of two processes vs one (float summation order differs): measured ~1e-7.
TOL = 1e-5
#: Weights after two AdamW steps at lr 1e-3, two processes vs one: measured ~1e-7.
WEIGHT_TOL = 5e-5
#: Learner vs generator logprobs (nats), as in test_learner_parity.
LOGPROB_TOL = 1e-4
#: Metrics that must agree between one process and two (the others are per-rank or timings).
SHARED_METRICS = ("loss/total", "loss/policy", "loss/kl_ref", "loss/clipfrac_low", "loss/clipfrac_high",
                  "loss/ratio_mean", "loss/ratio_max", "loss/approx_kl", "loss/tokens", "learner/grad_norm",
                  "learner/lr", "learner/step", "learner/version", "learner/sequences", "learner/skipped")


def config(path: str) -> LearnerConfig:
    # micro_batch_size 2: several micro-batches per rank, and uneven counts across ranks.
    return LearnerConfig(model=path, lr=1e-3, micro_batch_size=2)


def max_weight_diff(a: list[tuple[str, torch.Tensor]], b: list[tuple[str, torch.Tensor]]) -> float:
    da, db = dict(a), dict(b)
    assert da.keys() == db.keys()
    return max(float((da[k] - db[k]).abs().max()) for k in da)


def assert_same_metrics(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for key in SHARED_METRICS:
        assert ours[key] == pytest.approx(theirs[key], rel=TOL, abs=TOL), key


def learner_pids() -> set[int]:
    """Live child processes of this test process (the mesh's processes among them)."""
    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


@pytest.fixture(scope="module")
def mesh_guard() -> Iterator[None]:
    """Monarch's fault hook replaced for the module; no process left behind at the end."""
    from forge_env.monarch._mesh import install_fault_hook

    install_fault_hook()
    before = learner_pids()
    yield
    _, alive = psutil.wait_procs([psutil.Process(p) for p in learner_pids() - before if psutil.pid_exists(p)],
                                 timeout=10)
    assert not alive, f"processes left behind: {alive}"


@pytest.fixture(scope="module")
def trained(mesh_guard: None, tiny_model_path: str) -> Iterator[dict[str, Any]]:
    """A MonarchLearner(procs=2) and a local Learner, two train steps each on the same batches."""
    local = Learner(config(tiny_model_path))
    remote = MonarchLearner(config(tiny_model_path), procs=2, name="test-learner")
    try:
        steps = []
        for seed in (0, 1):
            trajs, adv = dp_batch(seed)
            steps.append((remote.train_step(trajs, adv), local.train_step(trajs, adv)))
        yield {"local": local, "remote": remote, "steps": steps}
    finally:
        remote.close()


def test_balance_splits_by_tokens() -> None:
    assert _balance([10, 3, 8, 2, 5], 2) == [[0, 1, 3], [2, 4]]  # 15 vs 13 tokens
    assert _balance([4, 4, 4], 3) == [[0], [1], [2]]
    assert _balance([7], 3) == [[0], [], []]  # a rank with nothing still takes the step
    shares = _balance([12, 20, 7, 16, 9, 14], 2)
    assert sorted(i for s in shares for i in s) == list(range(6))
    assert [sum((12, 20, 7, 16, 9, 14)[i] for i in s) for s in shares] == [39, 39]


def test_split_by_prefix_keeps_each_group_on_one_rank() -> None:
    # 6 GRPO-like groups of 4: a 30-token prompt each, then replies; shuffled as a batch comes.
    from forge_env.learner._model import pack_sequences

    g = torch.Generator().manual_seed(0)
    seqs: list[list[int]] = []
    for _ in range(6):
        prompt = torch.randint(3, 1000, (30,), generator=g).tolist()
        seqs += [prompt + torch.randint(3, 1000, (int(n),), generator=g).tolist()
                 for n in torch.randint(3, 9, (4,), generator=g)]
    seqs = [seqs[i] for i in torch.randperm(len(seqs), generator=g).tolist()]

    def nodes(share: list[int]) -> int:   # what a rank's packed layout runs on
        return pack_sequences([seqs[i] for i in share]).num_tokens if share else 0

    shares = _split_by_prefix(seqs, 2)
    assert sorted(i for s in shares for i in s) == list(range(24)) and all(s == sorted(s) for s in shares)
    whole = nodes(list(range(24)))
    assert sum(nodes(s) for s in shares) <= whole + 30        # one prompt computed twice at most
    assert abs(nodes(shares[0]) - nodes(shares[1])) <= 30 + 2 * 8
    by_length = _balance([len(s) for s in seqs], 2)          # token-balanced: groups split up
    assert sum(nodes(s) for s in by_length) >= whole + 4 * 30
    assert sorted(_split_by_prefix([[1, 2]], 3)) == [[], [], [0]] and _split_by_prefix([], 2) == [[], []]


@pytest.mark.monarch
@pytest.mark.slow
def test_two_processes_take_the_one_process_steps(trained: dict[str, Any]) -> None:
    remote: MonarchLearner = trained["remote"]
    local: Learner = trained["local"]
    assert [info["backend"] for info in remote.rank_info] == ["gloo", "gloo"]
    assert len(set(remote.pids)) == 2
    for ours, theirs in trained["steps"]:
        assert_same_metrics(ours, theirs)
        assert ours["learner/procs"] == 2.0 and ours["learner/call_seconds"] >= ours["learner/step_seconds"]
    assert (remote.step, remote.version, remote.lr) == (local.step, local.version, local.lr) == (2, 2, 1e-3)
    worst = max_weight_diff(remote.hf_named_tensors(), local.hf_named_tensors())
    print(f"\nMonarchLearner(procs=2) vs Learner after 2 steps: loss {trained['steps'][1][0]['loss/total']:.6f} "
          f"vs {trained['steps'][1][1]['loss/total']:.6f}, max |weight diff| {worst:.1e}")
    assert worst < WEIGHT_TOL
    trajs, _ = dp_batch(5)
    ids = [t.token_ids for t in trajs]
    lp_remote, lp_local = remote.logprobs(ids), local.logprobs(ids)
    assert [len(x) for x in lp_remote] == [len(x) for x in ids]
    assert max(float((a - b).abs().max()) for a, b in zip(lp_remote, lp_local)) < LOGPROB_TOL


@pytest.mark.monarch
@pytest.mark.slow
def test_bad_input_is_refused_on_every_rank(trained: dict[str, Any]) -> None:
    remote: MonarchLearner = trained["remote"]
    trajs, adv = dp_batch(2)
    bad = Trajectory(env_name="bad", task=Task(), token_ids=[1, 2, 10**7], logprobs=[0.0] * 3, loss_mask=[0, 1, 1])
    version = remote.version
    with pytest.raises(ValueError, match="outside the vocabulary"):
        remote.train_step([*trajs, bad], [*adv, 1.0])  # one rank's share is bad: all ranks refuse
    with pytest.raises(ValueError, match="advantage rows"):
        remote.train_step(trajs, adv[:2])
    assert remote.version == version
    remote.logprobs([[1, 2, 3]])  # still usable: no rank went ahead alone


@pytest.mark.monarch
@pytest.mark.slow
def test_checkpoints_move_between_runtimes(trained: dict[str, Any], tiny_model_path: str) -> None:
    remote: MonarchLearner = trained["remote"]
    local: Learner = trained["local"]
    # MonarchLearner -> local Learner: the state is full; the local one continues identically.
    state = remote.state_dict()
    resumed = Learner(config(tiny_model_path))
    resumed.load_state_dict(state)
    assert (resumed.step, resumed.version) == (remote.step, remote.version)
    assert max_weight_diff(resumed.hf_named_tensors(), remote.hf_named_tensors()) == 0.0
    trajs, adv = dp_batch(3)
    ours, theirs = remote.train_step(trajs, adv), resumed.train_step(trajs, adv)
    assert_same_metrics(ours, theirs)
    assert max_weight_diff(remote.hf_named_tensors(), resumed.hf_named_tensors()) < WEIGHT_TOL

    # Local Learner -> MonarchLearner (rank 0 gets the state and broadcasts it).
    remote.load_state_dict(local.state_dict())
    assert (remote.step, remote.version, remote.lr) == (local.step, local.version, local.lr)
    assert max_weight_diff(remote.hf_named_tensors(), local.hf_named_tensors()) == 0.0
    ours, theirs = remote.train_step(trajs, adv), local.train_step(trajs, adv)
    assert_same_metrics(ours, theirs)
    with pytest.raises(ValueError, match="not a forge-env learner state"):
        remote.load_state_dict({"model": {}})


@pytest.mark.monarch
@pytest.mark.slow
async def test_push_weights_reaches_a_local_generator(trained: dict[str, Any], tiny_model_path: str) -> None:
    remote: MonarchLearner = trained["remote"]
    prompts = [t.token_ids[:6] for t in dp_batch(4)[0]]
    async with TorchGenerator(TorchGeneratorConfig(model=tiny_model_path, max_model_len=256)) as gen:
        await remote.push_weights(gen)
        assert remote.weight_transport == "tensors"  # a plain Generator: update_weights
        assert gen.version == remote.version > 0
        greedy = SamplingParams(max_tokens=10, temperature=0.0)
        outs = await asyncio.gather(*(gen.generate(p, greedy) for p in prompts))
    ours = remote.logprobs([p + o.token_ids for p, o in zip(prompts, outs)], temperature=1.0)
    worst = max(float((lp[len(p):] - torch.tensor(o.logprobs)).abs().max())
                for lp, p, o in zip(ours, prompts, outs))
    print(f"\npush_weights -> TorchGenerator in {remote.push_seconds:.3f} s; greedy logprobs vs learner "
          f"max |diff| {worst:.1e}")
    assert all(o.version == remote.version for o in outs)
    assert worst < LOGPROB_TOL


@pytest.mark.monarch
@pytest.mark.slow
async def test_push_weights_reaches_monarch_generator_replicas(trained: dict[str, Any],
                                                               tiny_model_path: str) -> None:
    """Rank 0 writes the weights under /dev/shm, both replicas load that path (no tensor
    passes through this process), and they sample with the learner's logprobs."""
    from forge_env.monarch._generator import MonarchGenerator

    remote: MonarchLearner = trained["remote"]
    trajs, adv = dp_batch(6)
    remote.train_step(trajs, adv)  # weights no replica has seen
    prompts = [t.token_ids[:6] for t in dp_batch(4)[0]]
    gen = MonarchGenerator(TorchGeneratorConfig(model=tiny_model_path, max_model_len=256),
                           service=ServiceConfig(replicas=2), env={"OMP_NUM_THREADS": "1"})
    async with gen:
        await remote.push_weights(gen)
        assert remote.weight_transport == "shared_folder"
        assert gen.version == remote.version
        assert {h["version"] for h in await gen.replica_health()} == {remote.version}
        greedy = SamplingParams(max_tokens=10, temperature=0.0)
        outs = await asyncio.gather(*(gen.generate(p, greedy) for p in prompts))
    # The pushed version's folder is removed once loaded (the root keeps only its owner marker).
    assert remote._weights_root is not None and not any(p.is_dir() for p in remote._weights_root.iterdir())
    ours = remote.logprobs([p + o.token_ids for p, o in zip(prompts, outs)], temperature=1.0)
    worst = max(float((lp[len(p):] - torch.tensor(o.logprobs)).abs().max())
                for lp, p, o in zip(ours, prompts, outs))
    print(f"\npush_weights -> MonarchGenerator (2 replicas, shared folder) in {remote.push_seconds:.3f} s; "
          f"greedy logprobs vs learner max |diff| {worst:.1e}")
    assert all(o.version == remote.version for o in outs)
    assert worst < LOGPROB_TOL


@pytest.mark.monarch
@pytest.mark.slow
def test_save_hf_writes_the_gathered_weights(trained: dict[str, Any], tmp_path: Any) -> None:
    from safetensors.torch import load_file

    remote: MonarchLearner = trained["remote"]
    folder = remote.save_hf(tmp_path / "hf")
    saved = load_file(str(folder / "model.safetensors"))
    assert (folder / "config.json").is_file()
    named = dict(remote.hf_named_tensors())
    assert saved.keys() == named.keys()
    assert all(torch.equal(saved[k], named[k]) for k in named)


@pytest.mark.monarch
@pytest.mark.slow
def test_close_leaves_no_process(trained: dict[str, Any]) -> None:
    remote: MonarchLearner = trained["remote"]
    pids = list(remote.pids)
    assert all(psutil.pid_exists(p) for p in pids)
    remote.close()
    remote.close()  # idempotent
    _, alive = psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=10)
    assert not alive
    with pytest.raises(RuntimeError, match="closed"):
        remote.train_step(*dp_batch(0))


@pytest.mark.monarch
@pytest.mark.slow
def test_a_killed_rank_fails_the_learner_clearly(mesh_guard: None, tiny_model_path: str) -> None:
    """A dead learner process: the next step raises LearnerProcessError at once (it does not
    hang in a collective), later calls say to restart from a checkpoint, close() cleans up."""
    import os
    import signal
    import time

    from forge_env.monarch._learner import LearnerProcessError

    learner = MonarchLearner(config(tiny_model_path), procs=2, name="test-learner-kill")
    try:
        trajs, adv = dp_batch(0)
        learner.train_step(trajs, adv)
        os.kill(learner.pids[1], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(LearnerProcessError, match="rank . of 2 failed in train_step"):
            learner.train_step(trajs, adv)
        print(f"\nkilled rank noticed in {time.monotonic() - started:.1f} s")
        with pytest.raises(LearnerProcessError, match="close\\(\\) it and start a new one from the last checkpoint"):
            learner.state_dict()
    finally:
        learner.close()
    _, alive = psutil.wait_procs([psutil.Process(p) for p in learner.pids if psutil.pid_exists(p)], timeout=10)
    assert not alive


@pytest.mark.monarch
@pytest.mark.slow
def test_a_rank_that_cannot_start_raises_the_learners_own_error(mesh_guard: None) -> None:
    before = learner_pids()
    with pytest.raises(FileNotFoundError, match="no model '/nonexistent/model'"):
        MonarchLearner(LearnerConfig(model="/nonexistent/model"), procs=2, name="test-learner-bad")
    _, alive = psutil.wait_procs([psutil.Process(p) for p in learner_pids() - before], timeout=10)
    assert not alive
