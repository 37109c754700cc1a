"""policy_loss against hand-computed values: clipping, masking, aggregation, GSPO, KL, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from forge_env.learner import LossConfig, loss_normalizer, policy_loss

# A 2x3 batch. Row 0: ratios 1.5 / 0.9 / 1.1 with A = +1. Row 1: ratios 0.5 / 1.0 / 2.0 with
# A = -2, its last token masked out. With eps 0.2, per-token losses -min(r*A, clip(r)*A):
#   row 0: r=1.5 clipped high -> -1.2; r=0.9 -> -0.9; r=1.1 -> -1.1      (sum -3.2, 3 tokens)
#   row 1: r=0.5 clipped low -> -(0.8 * -2) = 1.6; r=1.0 -> 2.0; masked  (sum  3.6, 2 tokens)
RATIOS = [[1.5, 0.9, 1.1], [0.5, 1.0, 2.0]]
OLD = [[-1.0, -1.5, -2.0], [-0.5, -1.0, -3.0]]
ADV = [[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]]
MASK = [[1, 1, 1], [1, 1, 0]]


def batch(requires_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    old = torch.tensor(OLD, dtype=torch.float64)
    logp = (old + torch.log(torch.tensor(RATIOS, dtype=torch.float64))).float()
    logp.requires_grad_(requires_grad)
    return logp, old.float(), torch.tensor(ADV), torch.tensor(MASK)


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("token_mean", (-3.2 + 3.6) / 5),                  # 0.08
        ("seq_mean_token_mean", (-3.2 / 3 + 3.6 / 2) / 2),  # 0.3666...
        ("seq_mean_token_sum", (-3.2 + 3.6) / 2),           # 0.2
        ("seq_mean_token_sum_norm", (-3.2 / 4 + 3.6 / 4) / 2),  # 0.05 with max_completion_tokens 4
    ],
)
def test_clipped_surrogate_and_each_aggregation(aggregation: str, expected: float) -> None:
    logp, old, adv, mask = batch()
    cfg = LossConfig(aggregation=aggregation, max_completion_tokens=4)  # type: ignore[arg-type]
    loss, metrics = policy_loss(logp, old, adv, mask, cfg)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["loss/policy"].item() == pytest.approx(expected, abs=1e-6)
    assert metrics["loss/clipfrac_low"].item() == pytest.approx(1 / 5)   # row 1, r = 0.5
    assert metrics["loss/clipfrac_high"].item() == pytest.approx(1 / 5)  # row 0, r = 1.5
    assert metrics["loss/ratio_mean"].item() == pytest.approx((1.5 + 0.9 + 1.1 + 0.5 + 1.0) / 5)
    assert metrics["loss/ratio_max"].item() == pytest.approx(1.5)          # the masked 2.0 is not seen
    approx_kl = sum((r - 1) - math.log(r) for r in (1.5, 0.9, 1.1, 0.5, 1.0)) / 5
    assert metrics["loss/approx_kl"].item() == pytest.approx(approx_kl, rel=1e-5)
    assert metrics["loss/tokens"].item() == 5


def test_gradients_zero_where_clipped_and_only_into_logprobs() -> None:
    logp, old, adv, mask = batch()
    old.requires_grad_(True)
    adv.requires_grad_(True)
    ref = logp.detach().clone().requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, LossConfig(kind="dapo", clip_eps_high=0.2, kl_coef=0.5),
                          ref_logprobs=ref)
    loss.backward()
    # token_mean over 5 tokens: d/dlogp of -r*A is -r*A; clipped tokens and the masked one get 0.
    # (The KL term's gradient is 1 - exp(ref - logp) = 0 at ref == logp.)
    expected = torch.tensor([[0.0, -0.9 / 5, -1.1 / 5], [0.0, 2.0 / 5, 0.0]])
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, expected, atol=1e-6, rtol=1e-5)
    assert old.grad is None and adv.grad is None and ref.grad is None


def test_masked_tokens_change_nothing_even_when_huge_or_nan() -> None:
    logp, old, adv, mask = batch()
    base, base_metrics = policy_loss(logp, old, adv, mask, LossConfig(kl_coef=0.1), ref_logprobs=old)
    base.backward()
    base_grad = logp.grad.clone()  # type: ignore[union-attr]

    logp2 = logp.detach().clone()
    logp2[1, 2] = 1e9
    logp2.requires_grad_(True)
    old2, adv2, ref2 = old.clone(), adv.clone(), old.clone()
    old2[1, 2], adv2[1, 2], ref2[1, 2] = -1e9, float("inf"), float("nan")
    loss, metrics = policy_loss(logp2, old2, adv2, mask, LossConfig(kl_coef=0.1), ref_logprobs=ref2)
    loss.backward()
    assert loss.item() == pytest.approx(base.item(), abs=1e-7)
    torch.testing.assert_close(logp2.grad, base_grad)
    for key, value in metrics.items():
        assert math.isfinite(value.item()), key
        assert value.item() == pytest.approx(base_metrics[key].item(), abs=1e-7), key


def test_dapo_clip_higher_is_asymmetric() -> None:
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.25, 0.7]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    grpo, _ = policy_loss(logp, old, adv, mask, LossConfig(aggregation="token_mean"))
    dapo, metrics = policy_loss(logp, old, adv, mask, LossConfig(kind="dapo"))
    # r = 1.25, A = +1: GRPO clips at 1.2, DAPO's upper bound 1.28 leaves it. r = 0.7, A = -1:
    # both clip at 0.8 -> loss +0.8.
    assert grpo.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert dapo.item() == pytest.approx((-1.25 + 0.8) / 2)
    assert metrics["loss/clipfrac_high"].item() == 0.0
    assert metrics["loss/clipfrac_low"].item() == pytest.approx(0.5)


def test_gspo_sequence_ratio_value_clip_and_gradient() -> None:
    old = torch.tensor([[-1.0, -2.0, -1.0]])
    log_ratio = torch.tensor([[0.2, -0.1, 100.0]])   # the last token is masked: never seen
    mask = torch.tensor([[1, 1, 0]])
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    s = math.exp((0.2 - 0.1) / 2)                    # sequence ratio: exp(mean log ratio) = 1.0513

    # Paper defaults (3e-4 / 4e-4): s > 1.0004 with A > 0 is clipped, every token at 1.0004.
    logp = (old + log_ratio).requires_grad_(True)
    loss, metrics = policy_loss(logp, old, adv, mask, LossConfig(kind="gspo"))
    assert loss.item() == pytest.approx(-1.0004, abs=1e-6)
    assert metrics["loss/clipfrac_high"].item() == 1.0
    assert metrics["loss/ratio_mean"].item() == pytest.approx(s, rel=1e-6)
    loss.backward()
    assert logp.grad is not None and torch.count_nonzero(logp.grad) == 0

    # Inside a wide clip: loss -s * A, and the gradient is the sequence-level objective's:
    # d(-s)/dlogp_t = -s / |y| on each loss token (not -r_t / |y| as with token ratios).
    logp = (old + log_ratio).requires_grad_(True)
    loss, _ = policy_loss(logp, old, adv, mask, LossConfig(kind="gspo", clip_eps=0.2, clip_eps_high=0.2))
    assert loss.item() == pytest.approx(-s, rel=1e-6)
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-s / 2, -s / 2, 0.0]]))


def test_k3_kl_value_and_gradient() -> None:
    logp = torch.tensor([[-1.0]], requires_grad=True)
    ref = torch.tensor([[-1.5]])
    k3 = math.exp(-0.5) - (-0.5) - 1                 # exp(ref - logp) - (ref - logp) - 1 = 0.10653
    loss, metrics = policy_loss(logp, logp.detach(), torch.zeros(1, 1), torch.ones(1, 1),
                                LossConfig(kl_coef=0.1), ref_logprobs=ref)
    assert metrics["loss/kl_ref"].item() == pytest.approx(k3, rel=1e-6)
    assert metrics["loss/policy"].item() == 0.0
    assert loss.item() == pytest.approx(0.1 * k3, rel=1e-6)
    loss.backward()
    assert logp.grad is not None
    assert logp.grad.item() == pytest.approx(0.1 * (1 - math.exp(-0.5)), rel=1e-5)


def test_kl_is_reported_without_kl_coef_and_required_with_it() -> None:
    logp, old, adv, mask = batch()
    loss, metrics = policy_loss(logp, old, adv, mask, LossConfig(), ref_logprobs=old)
    assert metrics["loss/kl_ref"].item() > 0
    assert loss.item() == pytest.approx(metrics["loss/policy"].item())
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, old, adv, mask, LossConfig(kl_coef=0.1))


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum",
                                         "seq_mean_token_sum_norm"])
def test_global_normalizer_makes_micro_batches_add_up(aggregation: str) -> None:
    # Data parallelism / gradient accumulation: with the global denominator, the losses (and so
    # the summed gradients) of the pieces equal the whole batch's.
    cfg = LossConfig(aggregation=aggregation, max_completion_tokens=4)  # type: ignore[arg-type]
    logp, old, adv, mask = batch()
    full, _ = policy_loss(logp, old, adv, mask, cfg)
    full.backward()
    full_grad = logp.grad.clone()  # type: ignore[union-attr]

    logp.grad = None
    total = loss_normalizer(mask[:1], cfg) + loss_normalizer(mask[1:], cfg)   # "all-reduce"
    assert total.item() == (5 if aggregation == "token_mean" else 2)
    parts = [policy_loss(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], cfg,
                         global_normalizer=total)[0] for i in range(2)]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), abs=1e-6)
    for p in parts:
        p.backward()
    torch.testing.assert_close(logp.grad, full_grad)

    # Without it each piece normalises locally, and their mean is not the batch loss.
    if aggregation == "token_mean":
        local = [policy_loss(logp[i:i + 1], old[i:i + 1], adv[i:i + 1], mask[i:i + 1], cfg)[0].item()
                 for i in range(2)]
        assert sum(local) / 2 != pytest.approx(full.item(), abs=1e-3)


def test_sequences_without_loss_tokens_do_not_count() -> None:
    logp, old, adv, mask = batch()
    pad = torch.zeros(1, 3)
    loss, _ = policy_loss(torch.cat([logp, pad]), torch.cat([old, pad]), torch.cat([adv, pad]),
                          torch.cat([mask, pad.long()]), LossConfig())
    assert loss.item() == pytest.approx((-3.2 / 3 + 3.6 / 2) / 2, abs=1e-6)


@pytest.mark.parametrize("kind", ["grpo", "dapo", "dr_grpo", "gspo"])
def test_empty_mask_gives_zero_loss_with_a_graph(kind: str) -> None:
    logp = torch.randn(2, 3, requires_grad=True)
    loss, metrics = policy_loss(logp, torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2, 3),
                                LossConfig(kind=kind, max_completion_tokens=8, kl_coef=0.1),  # type: ignore[arg-type]
                                ref_logprobs=torch.randn(2, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert logp.grad is not None and torch.count_nonzero(logp.grad) == 0
    assert all(math.isfinite(v.item()) for v in metrics.values())


def test_per_sequence_advantages_broadcast() -> None:
    logp, old, _, mask = batch()
    per_seq, _ = policy_loss(logp, old, torch.tensor([1.0, -2.0]), mask, LossConfig())
    per_token, _ = policy_loss(logp, old, torch.tensor(ADV), mask, LossConfig())
    assert per_seq.item() == pytest.approx(per_token.item())


def test_bf16_inputs_are_computed_in_float32() -> None:
    logp, old, adv, mask = batch(requires_grad=False)
    loss, _ = policy_loss(logp.bfloat16(), old.bfloat16(), adv, mask, LossConfig(aggregation="token_mean"))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.08, abs=0.05)


def test_config_defaults_per_kind() -> None:
    assert (LossConfig().effective_clip_eps, LossConfig().effective_clip_eps_high) == (0.2, 0.2)
    assert LossConfig().effective_aggregation == "seq_mean_token_mean"
    dapo = LossConfig(kind="dapo")
    assert (dapo.effective_clip_eps, dapo.effective_clip_eps_high, dapo.effective_aggregation) == (
        0.2, 0.28, "token_mean")
    gspo = LossConfig(kind="gspo")
    assert (gspo.effective_clip_eps, gspo.effective_clip_eps_high) == (3e-4, 4e-4)
    # clip_eps set alone: a symmetric clip, for every kind.
    assert LossConfig(clip_eps=0.1).effective_clip_eps_high == 0.1
    assert LossConfig(kind="dapo", clip_eps=0.1).effective_clip_eps_high == 0.1
    assert LossConfig(kind="gspo", clip_eps=1e-3).effective_clip_eps_high == 1e-3
    assert LossConfig(kind="dapo", clip_eps_high=0.3).effective_clip_eps == 0.2
    assert LossConfig(kind="dr_grpo", max_completion_tokens=256).effective_aggregation == "seq_mean_token_sum_norm"


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="max_completion_tokens"):
        LossConfig(kind="dr_grpo")
    with pytest.raises(ValueError, match="kind"):
        LossConfig(kind="ppo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aggregation"):
        LossConfig(aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clip_eps"):
        LossConfig(clip_eps=1.5)
    with pytest.raises(ValueError, match="kl_coef"):
        LossConfig(kl_coef=-1.0)


def test_shape_mismatch_is_an_error() -> None:
    logp, old, adv, mask = batch()
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\)"):
        policy_loss(logp, old, adv, mask[:, :2], LossConfig())
    with pytest.raises(ValueError, match=r"\[batch, tokens\]"):
        policy_loss(logp[0], old[0], adv[0], mask[0], LossConfig())
