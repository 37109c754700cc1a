"""Policy-gradient losses for GRPO and its variants, one function of named terms.

Per sampled token t of sequence i (``mask == 1``), with behaviour logprobs ``old`` from the
generator (so samples from an older policy version are corrected, not ignored)::

    r_it   = exp(logp_it - old_it)                               token ratio (grpo, dapo, dr_grpo)
    r_it   = sg[s_i] * exp(logp_it - sg[logp_it]),               gspo: value s_i, gradient per token
             s_i = exp(mean_t(logp_it - old_it))
    pg_it  = -min(r_it * A_it, clip(r_it, 1 - eps_low, 1 + eps_high) * A_it)
    k3_it  = exp(ref_it - logp_it) - (ref_it - logp_it) - 1      KL to a frozen reference (>= 0)
    l_it   = pg_it + kl_coef * k3_it
    loss   = aggregate(l, mask)                                  see LossConfig.aggregation

``sg`` is stop-gradient. Advantages are per token ([B, T]), so per-turn credit assignment
passes straight through.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import torch

__all__ = ["Aggregation", "LossConfig", "LossKind", "loss_normalizer", "policy_loss"]

LossKind = Literal["grpo", "dapo", "dr_grpo", "gspo"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]

# Per-kind defaults: (clip_eps, clip_eps_high, aggregation).
_DEFAULTS: dict[str, tuple[float, float | None, Aggregation]] = {
    # GRPO (DeepSeekMath): symmetric PPO clip, each sequence's token mean, mean over sequences.
    "grpo": (0.2, None, "seq_mean_token_mean"),
    # DAPO: clip-higher (eps_high 0.28 > eps_low 0.2) and one mean over all tokens of the batch.
    "dapo": (0.2, 0.28, "token_mean"),
    # Dr.GRPO: no length normalisation: token sums divided by one constant.
    "dr_grpo": (0.2, None, "seq_mean_token_sum_norm"),
    # GSPO: sequence-level ratio; its log ratio is a per-token mean, so the paper's clip range
    # is tiny (3e-4 / 4e-4).
    "gspo": (3e-4, 4e-4, "seq_mean_token_mean"),
}


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LossConfig:
    """Which policy loss, its clip range, aggregation and KL penalty.

    Fields left as None take the kind's default (see ``effective_*``).

    >>> LossConfig(kind="dapo").effective_clip_eps_high
    0.28
    >>> LossConfig(kind="gspo").effective_clip_eps
    0.0003
    >>> LossConfig(kind="dr_grpo", max_completion_tokens=512).effective_aggregation
    'seq_mean_token_sum_norm'
    """

    kind: LossKind = "grpo"
    """``grpo`` (token ratio, symmetric clip), ``dapo`` (clip-higher, token mean), ``dr_grpo``
    (no length normalisation; pair it with ``AdvantageConfig(normalize_std=False)``), ``gspo``
    (sequence-level ratio)."""
    clip_eps: float | None = None
    """Lower clip range: the ratio is clipped below at ``1 - clip_eps``. None: 0.2, or 3e-4 for gspo."""
    clip_eps_high: float | None = None
    """Upper clip range (DAPO's clip-higher): clipped above at ``1 + clip_eps_high``. None: the
    kind's default when ``clip_eps`` is None too (0.28 dapo, 4e-4 gspo, 0.2 otherwise), else
    ``clip_eps`` (a symmetric clip)."""
    aggregation: Aggregation | None = None
    """How token losses become one number. ``token_mean``: sum over all loss tokens / their count.
    ``seq_mean_token_mean``: each sequence's token mean, mean over sequences.
    ``seq_mean_token_sum``: each sequence's token sum, mean over sequences.
    ``seq_mean_token_sum_norm``: each sequence's token sum / ``max_completion_tokens``, mean
    over sequences (Dr.GRPO). None: grpo and gspo ``seq_mean_token_mean``, dapo ``token_mean``,
    dr_grpo ``seq_mean_token_sum_norm``."""
    kl_coef: float = 0.0
    """Weight of the k3 KL estimate to a frozen reference policy (needs ``ref_logprobs``); 0 turns it off."""
    max_completion_tokens: int | None = None
    """Dr.GRPO's constant normaliser (the rollout's completion-token budget per sequence);
    required by ``seq_mean_token_sum_norm``."""

    def __post_init__(self) -> None:
        if self.kind not in _DEFAULTS:
            raise ValueError(f"LossConfig.kind must be one of {sorted(_DEFAULTS)}, got {self.kind!r}")
        if self.aggregation is not None and self.aggregation not in get_args(Aggregation):
            raise ValueError(
                f"LossConfig.aggregation must be one of {list(get_args(Aggregation))} or None, "
                f"got {self.aggregation!r}"
            )
        if not 0.0 < self.effective_clip_eps < 1.0:
            raise ValueError(f"LossConfig.clip_eps must be in (0, 1), got {self.clip_eps}")
        if not self.effective_clip_eps_high > 0.0:
            raise ValueError(f"LossConfig.clip_eps_high must be > 0, got {self.clip_eps_high}")
        if self.kl_coef < 0.0:
            raise ValueError(f"LossConfig.kl_coef must be >= 0, got {self.kl_coef}")
        if self.max_completion_tokens is not None and self.max_completion_tokens < 1:
            raise ValueError(f"LossConfig.max_completion_tokens must be >= 1, got {self.max_completion_tokens}")
        if self.effective_aggregation == "seq_mean_token_sum_norm" and self.max_completion_tokens is None:
            raise ValueError(
                f"LossConfig(kind={self.kind!r}) aggregates with 'seq_mean_token_sum_norm', which divides "
                "each sequence's token sum by a constant: set max_completion_tokens (the rollout's "
                "completion-token budget per sequence, e.g. max_turns * sampling.max_tokens)"
            )

    @property
    def effective_clip_eps(self) -> float:
        """The lower clip range in use."""
        return self.clip_eps if self.clip_eps is not None else _DEFAULTS[self.kind][0]

    @property
    def effective_clip_eps_high(self) -> float:
        """The upper clip range in use."""
        if self.clip_eps_high is not None:
            return self.clip_eps_high
        default_high = _DEFAULTS[self.kind][1]
        # clip_eps set alone means a symmetric clip, whatever the kind's default pair.
        if self.clip_eps is not None or default_high is None:
            return self.effective_clip_eps
        return default_high

    @property
    def effective_aggregation(self) -> Aggregation:
        """The aggregation mode in use."""
        return self.aggregation if self.aggregation is not None else _DEFAULTS[self.kind][2]


def loss_normalizer(mask: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """This batch's share of the loss denominator: loss tokens (``token_mean``) or sequences
    with at least one loss token (the sequence-mean modes).

    Under data parallelism and gradient accumulation, sum it over every micro-batch of the
    step and all-reduce (SUM) across ranks, then pass the total as ``global_normalizer`` to
    every :func:`policy_loss` call of the step: the micro-batch losses then add up to the
    loss of the whole global batch.

    >>> import torch
    >>> loss_normalizer(torch.tensor([[1, 1, 0], [0, 0, 0]]), LossConfig(kind="dapo"))
    tensor(2.)
    >>> loss_normalizer(torch.tensor([[1, 1, 0], [0, 0, 0]]), LossConfig())
    tensor(1.)
    """
    m = mask.bool()
    if config.effective_aggregation == "token_mean":
        return m.sum().to(torch.float32)
    return m.any(dim=-1).sum().to(torch.float32)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig,
    *,
    ref_logprobs: torch.Tensor | None = None,
    global_normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The policy loss of one (micro-)batch and its diagnostics.

    >>> import torch
    >>> lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    >>> loss, metrics = policy_loss(lp, lp.detach(), torch.tensor([[1.0, 1.0]]),
    ...                             torch.tensor([[1, 1]]), LossConfig())
    >>> loss.item(), metrics["loss/clipfrac_high"].item()
    (-1.0, 0.0)

    Args:
        logprobs: [B, T] logprobs of the sampled tokens under the policy being trained (the
            only input gradients flow into).
        old_logprobs: [B, T] behaviour logprobs, those the generator sampled with.
        advantages: [B, T] per-token advantages (or [B], one per sequence).
        mask: [B, T], nonzero exactly on loss tokens (sampled completion tokens). Whatever the
            other inputs hold off the mask (padding, even inf or NaN) changes nothing.
        config: the loss.
        ref_logprobs: [B, T] logprobs under a frozen reference policy; needed when
            ``config.kl_coef > 0`` (when given with ``kl_coef == 0`` the KL is only reported).
        global_normalizer: the loss denominator across all micro-batches and data-parallel
            ranks of the step (the summed :func:`loss_normalizer`); None uses this batch's own.

    Returns:
        ``(loss, metrics)``: a scalar loss to call ``backward()`` on (0, with a graph, when the
        mask is empty) and detached scalar diagnostics under ``loss/`` keys: ``total``,
        ``policy`` and ``kl_ref`` (aggregated terms; ``total = policy + kl_coef * kl_ref``),
        ``clipfrac_low`` / ``clipfrac_high`` (fraction of loss tokens whose clipped branch is
        active: ratio below ``1 - eps_low`` with A < 0, above ``1 + eps_high`` with A > 0),
        ``ratio_mean``, ``ratio_max``, ``approx_kl`` (KL(behaviour || policy), per token:
        ``(r - 1) - log r`` with the token ratio), ``tokens``. Token averages are over this
        batch's loss tokens.
    """
    shape = logprobs.shape
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [batch, tokens], got shape {tuple(shape)}")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand(shape)
    named = {"old_logprobs": old_logprobs, "advantages": advantages, "mask": mask}
    if ref_logprobs is not None:
        named["ref_logprobs"] = ref_logprobs
    for name, tensor in named.items():
        if tensor.shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but logprobs has {tuple(shape)}: "
                "every input is [batch, tokens], aligned token by token"
            )
    if config.kl_coef > 0 and ref_logprobs is None:
        raise ValueError(
            f"LossConfig.kl_coef is {config.kl_coef} but no ref_logprobs were given: pass the "
            "frozen reference policy's logprobs, or set kl_coef=0"
        )

    # Off the mask every input is replaced by 0 *before* any arithmetic: exp() of padding
    # could overflow, and inf * 0 would put NaN into the loss and its gradient.
    m = mask.bool()
    m_f = m.to(torch.float32)
    logp = torch.where(m, logprobs.float(), 0.0)                        # [B, T]
    old = torch.where(m, old_logprobs.detach().float(), 0.0)            # [B, T]
    adv = torch.where(m, advantages.detach().float(), 0.0)              # [B, T]
    token_log_ratio = logp - old                                        # [B, T], 0 off the mask
    eps_low, eps_high = config.effective_clip_eps, config.effective_clip_eps_high

    if config.kind == "gspo":
        seq_tokens = m_f.sum(-1).clamp(min=1.0)                         # [B]
        seq_log_ratio = token_log_ratio.sum(-1) / seq_tokens            # [B], log s_i
        # GSPO-token: value s_i on every token, gradient s_i * grad logp_it on token t.
        log_ratio = seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach()
    else:
        log_ratio = token_log_ratio
    ratio = torch.exp(log_ratio)                                        # [B, T]

    surr_unclipped = ratio * adv
    surr_clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * adv
    pg_tok = -torch.min(surr_unclipped, surr_clipped)                   # [B, T]

    if ref_logprobs is not None:
        ref = torch.where(m, ref_logprobs.detach().float(), 0.0)
        ref_log_ratio = ref - logp                                      # [B, T], 0 off the mask
        kl_tok = torch.exp(ref_log_ratio) - ref_log_ratio - 1.0         # k3, >= 0
    else:
        kl_tok = torch.zeros_like(pg_tok)

    pg_loss = _aggregate(pg_tok, m_f, config, global_normalizer)
    kl_loss = _aggregate(kl_tok, m_f, config, global_normalizer)
    loss = pg_loss + config.kl_coef * kl_loss if config.kl_coef > 0 else pg_loss

    with torch.no_grad():
        n_tokens = m_f.sum()
        denom = n_tokens.clamp(min=1.0)
        clipped_low = (adv < 0) & (ratio < 1.0 - eps_low) & m
        clipped_high = (adv > 0) & (ratio > 1.0 + eps_high) & m
        token_ratio = torch.exp(token_log_ratio)
        metrics = {
            "loss/total": loss.detach(),
            "loss/policy": pg_loss.detach(),
            "loss/kl_ref": kl_loss.detach(),
            "loss/clipfrac_low": clipped_low.sum() / denom,
            "loss/clipfrac_high": clipped_high.sum() / denom,
            "loss/ratio_mean": (ratio * m_f).sum() / denom,
            "loss/ratio_max": torch.where(m, ratio, 0.0).max() if ratio.numel() else denom * 0,
            "loss/approx_kl": (((token_ratio - 1.0) - token_log_ratio) * m_f).sum() / denom,
            "loss/tokens": n_tokens,
        }
    return loss, metrics


def _aggregate(
    tok: torch.Tensor, m_f: torch.Tensor, config: LossConfig, global_normalizer: float | torch.Tensor | None
) -> torch.Tensor:
    """One scalar from [B, T] token losses; the denominator is global when given."""
    mode = config.effective_aggregation
    tok = tok * m_f
    if mode == "token_mean":
        numerator = tok.sum()
        local = m_f.sum()
    else:
        seq_tokens = m_f.sum(-1)                                        # [B]
        if mode == "seq_mean_token_mean":
            per_seq = tok.sum(-1) / seq_tokens.clamp(min=1.0)
        elif mode == "seq_mean_token_sum":
            per_seq = tok.sum(-1)
        else:  # seq_mean_token_sum_norm
            assert config.max_completion_tokens is not None  # checked by LossConfig
            per_seq = tok.sum(-1) / float(config.max_completion_tokens)
        numerator = per_seq.sum()
        local = (seq_tokens > 0).sum().to(torch.float32)
    denominator = local if global_normalizer is None else torch.as_tensor(
        global_normalizer, dtype=torch.float32, device=tok.device
    )
    # An empty batch (or step) gives 0, never 0/0: the loss keeps its graph and zero gradients.
    return numerator / denominator.clamp(min=1.0)
