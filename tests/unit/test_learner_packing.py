"""The packed batch layout (``LearnerConfig.layout="packed"``) against a plain reference.

The packed layout runs a batch as one prefix tree (shared prefixes computed once, inputs cut
after their last loss token, the output head only where a loss token is predicted). These
tests check that it computes what the straightforward way computes: every sequence through
the model on its own, log-softmax at every position, the policy loss on [B, T] tensors,
backward, clip, AdamW. Losses, gradient norms, gradients and updated weights agree within
1e-5, on multi-turn GRPO-like groups (a shared prompt, replies with masked-out observations
between them, shared first turns, a duplicate, a trailing observation, a sequence with no
loss token), for every loss kind, with a KL reference, a temperature, and micro-batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from forge_env.learner._learner import Learner, LearnerConfig
from forge_env.learner._losses import LossConfig, policy_loss
from forge_env.learner._model import TitanModel, pack_sequences, select_output_rows
from forge_env.models import TinyModelConfig, build_tiny_model
from forge_env.rollout import Task, Trajectory

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama",
                                TinyModelConfig(architecture="llama")))


def multi_turn_batch(seed: int = 0) -> tuple[list[Trajectory], list[list[float]]]:
    """Three groups of four episodes: a system prompt shared by all, a task line per group,
    then up to three turns of (reply: loss tokens, observation: masked out). Within a group
    some episodes repeat the first reply (a longer shared prefix); one episode is duplicated,
    one ends on an observation (tokens after the last loss token), one has no reply at all."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 1000, (n,), generator=g).tolist()

    system = ids(12)
    trajs: list[Trajectory] = []
    advs: list[list[float]] = []
    for group in range(3):
        prompt = system + ids(6 + group)
        first_reply = ids(3)
        for member in range(4):
            tokens, mask = list(prompt), [0] * len(prompt)
            turns = 1 + (member + group) % 3
            for turn in range(turns):
                reply = first_reply if turn == 0 and member % 2 == 0 else ids(2 + (member + turn) % 3)
                tokens += reply
                mask += [1] * len(reply)
                if turn + 1 < turns or member == 3:            # member 3 ends on an observation
                    obs = ids(5 + turn)
                    tokens += obs
                    mask += [0] * len(obs)
            if group == 2 and member == 3:                     # no reply: nothing to learn from
                mask = [0] * len(tokens)
            behaviour = (-2.5 * torch.rand(len(tokens), generator=g)).tolist()
            scale = float(torch.randn((), generator=g))
            trajs.append(Trajectory(env_name="multi", task=Task(seed=group), token_ids=tokens,
                                    logprobs=[v * m for v, m in zip(behaviour, mask)], loss_mask=mask))
            advs.append([scale * m * (1.0 + 0.1 * t) for t, m in enumerate(mask)])
    duplicate = dataclasses.replace(trajs[0], token_ids=list(trajs[0].token_ids),
                                    logprobs=list(trajs[0].logprobs), loss_mask=list(trajs[0].loss_mask))
    trajs.append(duplicate)
    advs.append([-a for a in advs[0]])
    return trajs, advs


def reference_step(
    path: str, config: LearnerConfig, trajs: list[Trajectory], advs: list[list[float]],
    ref: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, float, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The step done the plain way: returns (loss, grad norm, clipped grads, updated weights)."""
    model = TitanModel(path).model
    width = max(len(t.token_ids) for t in trajs) - 1
    logp = []
    for t in trajs:
        logits = model(torch.tensor([t.token_ids]))[0, :-1].float() / config.temperature
        lp = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(t.token_ids[1:]).unsqueeze(1)).squeeze(1)
        logp.append(torch.nn.functional.pad(lp, (0, width - lp.numel())))

    def padded(rows: list[list[float]]) -> torch.Tensor:
        return torch.tensor([r[1:] + [0.0] * (width + 1 - len(r)) for r in rows])

    loss, _ = policy_loss(
        torch.stack(logp), padded([t.logprobs for t in trajs]), padded(advs),
        padded([[float(m) for m in t.loss_mask] for t in trajs]), config.loss,
        ref_logprobs=None if ref is None else padded([r.tolist() for r in ref]),
    )
    loss.backward()
    params = list(model.parameters())
    norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                  weight_decay=config.weight_decay)
    optimizer.step()
    return loss.detach(), norm, grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_matches_reference(learner: Learner, metrics: dict[str, float], expected: tuple[Any, ...]) -> None:
    loss, norm, grads, weights = expected
    assert abs(metrics["loss/total"] - float(loss)) <= TOL * max(1.0, abs(float(loss)))
    assert abs(metrics["learner/grad_norm"] - norm) <= TOL * max(1.0, norm)
    for name, p in learner.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=0, atol=TOL, msg=name)
        torch.testing.assert_close(p.detach(), weights[name], rtol=0, atol=TOL, msg=name)


# Adam's first update is lr * g / (|g| + eps): with a tiny eps, float rounding of a near-zero
# gradient can flip its sign and move a weight by up to 2 * lr in any layout. A larger eps
# keeps the update Lipschitz in the gradient, so weights are comparable to TOL.
BASE: dict[str, Any] = {"lr": 1e-3, "eps": 1e-3}


@pytest.mark.parametrize("loss", [
    LossConfig(),                                                      # grpo: seq_mean_token_mean
    LossConfig(kind="dapo"),                                           # token_mean, clip-higher
    LossConfig(kind="dr_grpo", max_completion_tokens=16),              # seq_mean_token_sum_norm
    LossConfig(kind="gspo"),                                           # sequence-level ratio
], ids=["grpo", "dapo", "dr_grpo", "gspo"])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_train_step_equals_the_reference(tiny_model_path: str, loss: LossConfig, layout: Any) -> None:
    config = LearnerConfig(model=tiny_model_path, loss=loss, layout=layout, **BASE)
    trajs, advs = multi_turn_batch()
    learner = Learner(config)
    metrics = learner.train_step(trajs, advs)
    assert_matches_reference(learner, metrics, reference_step(tiny_model_path, config, trajs, advs))
    assert metrics["learner/sequences"] == len(trajs)
    assert metrics["loss/tokens"] == sum(sum(t.loss_mask) for t in trajs)


def test_packed_runs_on_far_fewer_tokens_with_the_same_metrics(tiny_model_path: str) -> None:
    trajs, advs = multi_turn_batch()
    out = {}
    for layout in ("packed", "padded"):
        out[layout] = Learner(LearnerConfig(model=tiny_model_path, layout=layout, **BASE)).train_step(trajs, advs)
    timing = ("learner/step_seconds", "learner/tokens_per_second", "learner/padded_tokens")
    for key, value in out["padded"].items():
        if key not in timing:
            assert out["packed"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # Padded: 13 sequences x the longest. Packed: the distinct prefixes (up to each last loss token).
    assert out["padded"]["learner/padded_tokens"] == len(trajs) * max(len(t.token_ids) for t in trajs)
    inputs = {tuple(t.token_ids[: max(i for i, m in enumerate(t.loss_mask) if m)])
              for t in trajs if any(t.loss_mask)}
    trie = {s[:n] for s in inputs for n in range(1, len(s) + 1)}
    assert out["packed"]["learner/padded_tokens"] == len(trie)
    assert len(trie) < 0.5 * out["padded"]["learner/padded_tokens"]


def test_kl_reference_temperature_and_micro_batches_on_llama(tiny_llama_path: str) -> None:
    # Llama's complex RoPE, a KL term, a temperature and three packed micro-batches at once.
    config = LearnerConfig(model=tiny_llama_path, temperature=0.7, micro_batch_tokens=60,
                           loss=LossConfig(kl_coef=0.2), **BASE)
    trajs, advs = multi_turn_batch(seed=3)
    learner = Learner(config)
    # A reference policy near the current one: its logprobs, perturbed.
    g = torch.Generator().manual_seed(5)
    ref = [lp + 0.3 * torch.randn(lp.shape, generator=g) for lp in learner.logprobs([t.token_ids for t in trajs])]
    metrics = learner.train_step(trajs, advs, ref_logprobs=ref)
    assert metrics["learner/micro_batches"] >= 3
    assert metrics["loss/kl_ref"] > 0
    assert_matches_reference(learner, metrics, reference_step(tiny_llama_path, config, trajs, advs, ref))


def test_micro_batch_limits_hold_in_the_packed_layout(tiny_model_path: str) -> None:
    trajs, advs = multi_turn_batch()
    one = Learner(LearnerConfig(model=tiny_model_path, **BASE))
    split = Learner(LearnerConfig(model=tiny_model_path, micro_batch_size=3, **BASE))
    m_one, m_split = one.train_step(trajs, advs), split.train_step(trajs, advs)
    # 12 sequences with a loss token, 3 at most per micro-batch.
    assert (m_one["learner/micro_batches"], m_split["learner/micro_batches"]) == (1, 4)
    assert m_split["learner/padded_tokens"] > m_one["learner/padded_tokens"]  # fewer prefixes shared
    assert m_split["loss/total"] == pytest.approx(m_one["loss/total"], abs=TOL)
    assert m_split["learner/grad_norm"] == pytest.approx(m_one["learner/grad_norm"], rel=TOL)
    for (name, a), (_, b) in zip(one.named_parameters(), split.named_parameters()):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=TOL, msg=name)


def test_sft_step_equals_the_reference_nll(tiny_model_path: str) -> None:
    trajs, _ = multi_turn_batch()
    out = {}
    for layout in ("packed", "padded"):
        learner = Learner(LearnerConfig(model=tiny_model_path, layout=layout, **BASE))
        out[layout] = (learner.sft_step(trajs), {n: p.detach().clone() for n, p in learner.named_parameters()})
    model = TitanModel(tiny_model_path).model
    nll = torch.zeros(())
    with torch.no_grad():
        for t in trajs:
            lp = torch.log_softmax(model(torch.tensor([t.token_ids]))[0, :-1], dim=-1)
            picked = lp.gather(-1, torch.tensor(t.token_ids[1:]).unsqueeze(1)).squeeze(1)
            nll = nll - (picked * torch.tensor(t.loss_mask[1:], dtype=torch.float32)).sum()
    tokens = sum(sum(t.loss_mask) for t in trajs)
    for layout, (metrics, weights) in out.items():
        assert metrics["loss/nll"] == pytest.approx(float(nll) / tokens, abs=TOL), layout
        assert metrics["loss/tokens"] == tokens
    for name, value in out["padded"][1].items():
        torch.testing.assert_close(out["packed"][1][name], value, rtol=0, atol=TOL, msg=name)


def test_a_batch_without_loss_tokens_still_steps(tiny_model_path: str) -> None:
    trajs, advs = multi_turn_batch()
    silent = [dataclasses.replace(t, loss_mask=[0] * len(t.token_ids)) for t in trajs]
    metrics = Learner(LearnerConfig(model=tiny_model_path, **BASE)).train_step(silent, advs)
    assert metrics["loss/tokens"] == 0 and metrics["loss/total"] == 0.0
    assert metrics["learner/sequences"] == len(trajs) and metrics["learner/grad_norm"] == 0.0


# --- the prefix tree itself ---------------------------------------------------------------


def test_pack_sequences_shares_prefixes_and_maps_every_position() -> None:
    seqs = [[5, 6, 7, 8], [5, 6, 9], [5, 6, 7, 8], [5, 6], [2, 3, 4], [5]]
    packed = pack_sequences(seqs)
    trie = {tuple(s[:n]) for s in seqs for n in range(1, len(s) + 1)}
    assert packed.num_tokens == len(trie) == 8
    for i, s in enumerate(seqs):
        nodes = packed.node_ids(i, range(len(s)))
        assert packed.tokens[0, nodes].tolist() == s
        assert packed.positions[0, nodes].tolist() == list(range(len(s)))
    # The same sequences in another order give the same tree.
    again = pack_sequences(list(reversed(seqs)))
    assert torch.equal(again.tokens, packed.tokens) and torch.equal(again.positions, packed.positions)
    with pytest.raises(ValueError, match="non-empty"):
        pack_sequences([[1], []])


def test_packed_forward_equals_one_forward_per_sequence(tiny_model_path: str) -> None:
    model = TitanModel(tiny_model_path).model
    trajs, _ = multi_turn_batch(seed=1)
    seqs = [t.token_ids for t in trajs]
    packed = pack_sequences(seqs)
    rows = torch.tensor([n for i, s in enumerate(seqs) for n in packed.node_ids(i, range(len(s)))])
    with torch.no_grad(), select_output_rows(model, rows):
        logits = model(packed.tokens, positions=packed.positions, attention_masks=packed.tree)
    assert logits.shape == (sum(len(s) for s in seqs), 1024)
    start = 0
    with torch.no_grad():
        for s in seqs:
            torch.testing.assert_close(logits[start:start + len(s)], model(torch.tensor([s]))[0],
                                       rtol=0, atol=TOL)
            start += len(s)


def test_logprobs_in_the_packed_layout_equal_one_forward_per_sequence(tiny_model_path: str,
                                                                      tiny_llama_path: str) -> None:
    # What ReferencePolicy asks for: every position's teacher-forced logprob. Shared prefixes,
    # a duplicate, a one-token sequence, a temperature and several packed micro-batches.
    trajs, _ = multi_turn_batch(seed=2)
    seqs = [list(t.token_ids) for t in trajs] + [[7]]
    for path in (tiny_model_path, tiny_llama_path):
        model = TitanModel(path).model
        packed = Learner(LearnerConfig(model=path, micro_batch_tokens=80, **BASE))
        padded = Learner(LearnerConfig(model=path, layout="padded", **BASE))
        ours, theirs = packed.logprobs(seqs, temperature=0.7), padded.logprobs(seqs, temperature=0.7)
        with torch.no_grad():
            for s, a, b in zip(seqs, ours, theirs):
                logits = model(torch.tensor([s]))[0, :-1].float() / 0.7
                plain = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(s[1:]).unsqueeze(-1)).squeeze(-1)
                assert a.shape == b.shape == (len(s),) and a[0] == b[0] == 0.0
                torch.testing.assert_close(a[1:], plain, rtol=0, atol=TOL)
                torch.testing.assert_close(b[1:], plain, rtol=0, atol=TOL)
