"""The GRPO learner: torchtitan's decoder, the policy loss, AdamW, and HF export.

One code path for both platforms, with settings chosen by device:

============================  ==============================  =================================
                              CPU                             CUDA
============================  ==============================  =================================
attention                     SDPA (causal)                   SDPA (causal; flash / cuDNN)
packed batches (the default)  SDPA + tree mask (flash)        SDPA + tree mask (mem-efficient)
compute dtype (``auto``)      float32                         bfloat16 (fp32 master weights)
more than one process         FSDP2 over gloo                 FSDP2 over NCCL, bf16 params,
                                                              fp32 gradient reduction
activation ckpt / compile     ignored (logged)                torchtitan's ``parallelize_*``
============================  ==============================  =================================

Data parallelism starts when ``torch.distributed`` is initialised with more than one rank
before the learner is built: each rank passes its own share of the batch to
:meth:`Learner.train_step`, the loss denominator is summed over every micro-batch of every
rank first (:func:`~forge_env.learner.loss_normalizer`, all-reduced), and FSDP sums (not
averages) the gradients, so the update equals one process training on the whole batch.

Batch layout (``LearnerConfig.layout``): by default a training batch is packed as a prefix
tree. A GRPO group's episodes share their prompt (and often their first turns); under causal
attention a shared prefix has the same hidden states in every sequence, so it is computed
once, with no padding, and each sequence stops after its last loss token. The output head and
log-softmax run only where a loss token is predicted (a few percent of the positions in a
multi-turn episode). The losses, gradients and updates are those of the padded layout up to
float rounding; on the default guess_number run the step runs on ~4.8x fewer positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from forge_env.learner._losses import LossConfig, loss_normalizer, policy_loss
from forge_env.learner._model import TitanModel, TreeMask, _lcp, pack_sequences, select_output_rows
from forge_env.rollout._trajectory import Trajectory

__all__ = ["Learner", "LearnerConfig"]

logger = logging.getLogger(__name__)

_STATE_FORMAT = 1
# Padding id for right padding: any valid id works, padded positions are masked out and,
# with causal attention, never seen by real tokens.
_PAD_ID = 0


@dataclasses.dataclass(kw_only=True, slots=True)
class LearnerConfig:
    """How to build and train the policy.

    >>> LearnerConfig(model="tiny", lr=1e-4, lr_schedule="cosine", total_steps=100).warmup_steps
    0
    """

    model: str
    """HF model folder, or a name :func:`forge_env.models.resolve_model` knows (``tiny``,
    ``tiny-llama``, ``smollm2-135m``). Qwen3 and Llama architectures."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when available, else CPU. Under data parallelism on CUDA each rank uses
    ``cuda:$LOCAL_RANK``."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype of forward and backward. ``auto``: float32 on CPU (bf16 is slower on
    CPUs without AVX-512), bfloat16 on CUDA. Master weights, optimizer state, gradient
    reduction, logprobs and the loss are always float32."""
    lr: float = 1e-5
    """Peak learning rate of AdamW."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's betas."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay, on every parameter."""
    warmup_steps: int = 0
    """Optimizer steps of linear warmup: step k (0-based) uses ``lr * (k + 1) / warmup_steps``."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """After warmup: ``constant``, or ``cosine`` decay to ``lr * min_lr_ratio`` at ``total_steps``."""
    total_steps: int | None = None
    """Training length in optimizer steps; required by ``cosine``."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule, as a fraction of ``lr``."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; None: no clipping (the norm is still reported)."""
    micro_batch_size: int | None = None
    """Most sequences per micro-batch (forward + backward); None: no limit."""
    micro_batch_tokens: int | None = None
    """Most tokens the model runs on per micro-batch (``packed``: the prefix tree's nodes;
    ``padded``: sequences x longest length); None: no limit. A sequence longer than this gets
    a micro-batch of its own. With both limits None the whole batch is one micro-batch."""
    layout: Literal["packed", "padded"] = "packed"
    """How ``train_step`` and ``sft_step`` lay a batch out for the model. ``packed``: the
    sequences, cut after their last loss token, become one prefix tree (a prefix shared by
    several sequences, such as a GRPO group's prompt and common first turns, is computed once;
    no padding), and the output head and softmax run only where a loss token is predicted.
    ``padded``: one right-padded row per sequence, logits at every position. Both give the
    same losses, gradients and updates (up to float rounding); ``packed`` runs on far fewer
    tokens for multi-turn groups. ``compile=True`` on a GPU uses ``padded`` (static shapes).
    :meth:`Learner.logprobs` always uses ``padded``."""
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    """The policy loss (GRPO, DAPO, Dr.GRPO, GSPO; clip range, aggregation, KL)."""
    temperature: float = 1.0
    """The generator's sampling temperature: logits are divided by it, so the learner's
    logprobs and the generator's behaviour logprobs (and their ratio) match."""
    max_seq_len: int | None = None
    """RoPE cache length (longest trained sequence); None: the model's max_position_embeddings."""
    seed: int = 0
    """Seeds the RNG around model construction (in a fork: the caller's RNG is untouched).
    Training itself draws no random numbers."""
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    """GPU only: torchtitan's full or selective activation checkpointing per block (less
    memory, more compute). Ignored on CPU, with a log note."""
    compile: bool = False
    """GPU only: ``torch.compile`` each transformer block (torchtitan's ``apply_compile``).
    Ignored on CPU, with a log note."""

    def __post_init__(self) -> None:
        self.model = os.fspath(self.model)
        if not self.model:
            raise ValueError("LearnerConfig.model must name an HF folder or a model alias such as 'tiny'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"LearnerConfig.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(
                f"LearnerConfig.dtype must be 'auto', 'float32' or 'bfloat16', got {self.dtype!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"LearnerConfig.lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"LearnerConfig.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"LearnerConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"LearnerConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"LearnerConfig.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}"
            )
        if self.lr_schedule == "cosine" and self.total_steps is None:
            raise ValueError("LearnerConfig(lr_schedule='cosine') decays over total_steps: set total_steps")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"LearnerConfig.total_steps must be >= 1, got {self.total_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"LearnerConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"LearnerConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.layout not in ("packed", "padded"):
            raise ValueError(f"LearnerConfig.layout must be 'packed' or 'padded', got {self.layout!r}")
        for name in ("micro_batch_size", "micro_batch_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"LearnerConfig.{name} must be >= 1 or None, got {value}")
        if not self.temperature > 0:
            raise ValueError(
                f"LearnerConfig.temperature must be > 0, got {self.temperature} (greedy samples carry "
                "untempered logprobs: use 1.0 for them)"
            )
        if self.activation_checkpointing not in ("none", "full", "selective"):
            raise ValueError(
                "LearnerConfig.activation_checkpointing must be 'none', 'full' or 'selective', "
                f"got {self.activation_checkpointing!r}"
            )

    def lr_factor(self, step: int) -> float:
        """The learning-rate multiplier of optimizer step ``step`` (0-based).

        >>> c = LearnerConfig(model="tiny", warmup_steps=2, lr_schedule="cosine", total_steps=4)
        >>> [round(c.lr_factor(k), 3) for k in range(5)]
        [0.5, 1.0, 1.0, 0.5, 0.0]
        """
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return 1.0
        assert self.total_steps is not None  # checked in __post_init__
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass
class _Row:
    """One sequence, shifted for next-token prediction: ``targets = token_ids[1:]``."""

    tokens: list[int]
    mask: list[float]
    old: list[float]
    adv: list[float]
    ref: list[float] | None


@dataclasses.dataclass
class _MicroBatch:
    """One forward + backward.

    Padded: [B, L] input ids and [B, L-1] per-target tensors, right-padded. Packed: [1, N]
    prefix-tree nodes with their ``positions`` and ``tree``; the per-target tensors are
    [B, K], each sequence's loss tokens left-aligned (K: the most of any sequence), and loss
    token j (in that order) is predicted at node ``rows[j]`` as token ``targets[j]``.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    old: torch.Tensor
    adv: torch.Tensor
    ref: torch.Tensor | None
    sequences: int
    computed_tokens: int
    """Positions the model runs on (reported as ``learner/padded_tokens``)."""
    positions: torch.Tensor | None = None
    tree: TreeMask | None = None
    rows: torch.Tensor | None = None
    targets: torch.Tensor | None = None


class Learner:
    """Trains a policy with GRPO-family losses on torchtitan's model definitions.

    Example::

        learner = Learner(LearnerConfig(model="tiny", lr=1e-4))
        adv = group_advantages(group)                       # per-token, aligned with token_ids
        metrics = learner.train_step(group.trajectories, adv)
        await generator.update_weights(learner.hf_named_tensors(), version=learner.version)
        learner.save_hf("runs/x/hf")                        # transformers / vLLM folder
        torch.save(learner.state_dict(), "runs/x/learner.pt")

    Under data parallelism every rank loads the whole fp32 model before FSDP2 shards it, so
    the model must fit one device in fp32 (fine up to a few billion parameters on a GPU).

    Args:
        config: model, optimizer, schedule, loss and micro-batching.

    Raises:
        ValueError: the model's architecture is not supported.
        RuntimeError: ``device="cuda"`` without a GPU.
    """

    def __init__(self, config: LearnerConfig) -> None:
        from forge_env.models import resolve_model

        self.config = config
        self._world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.device = _pick_device(config.device, distributed=self._world > 1)
        self.compute_dtype = _pick_dtype(config.dtype, self.device)
        path = resolve_model(config.model)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            self.titan = TitanModel(path, device=self.device, max_seq_len=config.max_seq_len)
        self._fsdp = self._world > 1
        _parallelize(
            self.titan, config, device=self.device, compute_dtype=self.compute_dtype, world=self._world
        )
        self.model: nn.Module = self.titan.model
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, config.lr_factor)
        self._step = 0
        self._version = 0
        self._layout = config.layout
        if config.layout == "packed" and config.compile and self.device.type == "cuda":
            logger.info("learner: compile=True keeps the padded batch layout (static shapes)")
            self._layout = "padded"

    # --- counters ---------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """``train_step`` and ``sft_step`` calls so far."""
        return self._step

    @property
    def version(self) -> int:
        """Policy version of the current weights: optimizer updates applied (0 = as loaded).
        Stamp generator updates with it."""
        return self._version

    @property
    def lr(self) -> float:
        """Learning rate of the next optimizer step."""
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def max_seq_len(self) -> int:
        return self.titan.shape.max_seq_len

    # --- training ---------------------------------------------------------------------------

    def train_step(
        self,
        trajectories: Sequence[Trajectory],
        advantages: Sequence[Sequence[float] | float],
        *,
        ref_logprobs: Sequence[Sequence[float] | torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """One optimizer step on this rank's ``trajectories``.

        The loss normaliser of the whole step (every micro-batch, every rank) is computed
        first, each micro-batch's loss is divided by it and back-propagated (gradient
        accumulation), the global gradient norm is clipped, then AdamW and the LR schedule
        step. A step whose gradient norm is not finite is skipped (``learner/skipped`` = 1,
        the weights and :attr:`version` stay).

        Args:
            trajectories: token ids, behaviour logprobs and loss masks (``loss_mask[0]``
                must be 0: the first token has no context).
            advantages: per trajectory, one advantage per token (as
                :func:`~forge_env.learner.group_advantages` returns) or one float for all
                its loss tokens.
            ref_logprobs: per trajectory, per-token logprobs under a frozen reference
                policy (e.g. another learner's :meth:`logprobs`); needed when
                ``config.loss.kl_coef > 0``.

        Returns:
            Metrics: ``loss/*`` (the loss terms and diagnostics of
            :func:`~forge_env.learner.policy_loss` for the whole step: clip fractions,
            ratios, approximate KL, tokens) and ``learner/*``: ``grad_norm`` (before
            clipping), ``lr``, ``step``, ``version``, ``sequences``, ``micro_batches``,
            ``padded_tokens`` (positions the model ran on: the prefix tree's nodes with
            ``layout="packed"``, sequences x longest length with ``"padded"``), ``skipped``,
            ``step_seconds``, ``tokens_per_second`` (of those positions).
        """
        started = time.perf_counter()
        cfg = self.config
        if not trajectories and self._world == 1:
            raise ValueError("train_step needs at least one trajectory")
        rows = self._rows(trajectories, advantages, ref_logprobs)
        micro = self._micro_batches(rows, with_ref=ref_logprobs is not None)
        micro += [self._dummy(with_ref=ref_logprobs is not None)] * (self._agree_max(len(micro)) - len(micro))

        normalizer = torch.zeros((), dtype=torch.float32, device=self.device)
        for mb in micro:
            normalizer += loss_normalizer(mb.mask, cfg.loss).to(self.device)
        normalizer = self._all_reduce(normalizer)

        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr
        # Accumulated on the device (no host sync per micro-batch):
        # [total, policy, kl_ref, clip_low*n, clip_high*n, ratio*n, approx_kl*n, tokens, seqs, padded]
        sums = torch.zeros(10, dtype=torch.float64, device=self.device)
        ratio_max = torch.zeros((), dtype=torch.float64, device=self.device)
        for mb in micro:
            logprobs = self._micro_logprobs(mb, cfg.temperature)
            loss, m = policy_loss(
                logprobs, mb.old, mb.adv, mb.mask, cfg.loss, ref_logprobs=mb.ref, global_normalizer=normalizer
            )
            loss.backward()
            n = m["loss/tokens"]
            counts = torch.tensor([mb.sequences, mb.computed_tokens], device=self.device)
            sums += torch.cat([torch.stack([
                m["loss/total"], m["loss/policy"], m["loss/kl_ref"], m["loss/clipfrac_low"] * n,
                m["loss/clipfrac_high"] * n, m["loss/ratio_mean"] * n, m["loss/approx_kl"] * n, n,
            ]).double(), counts.double()])
            ratio_max = torch.maximum(ratio_max, m["loss/ratio_max"].double())

        grad_norm, skipped = self._apply_update("learner step")

        sums = self._all_reduce(sums).cpu()
        ratio_max = self._all_reduce(ratio_max, op=dist.ReduceOp.MAX).cpu()
        tokens = float(sums[7])
        per_token = max(tokens, 1.0)
        seconds = time.perf_counter() - started
        return {
            "loss/total": float(sums[0]),
            "loss/policy": float(sums[1]),
            "loss/kl_ref": float(sums[2]),
            "loss/clipfrac_low": float(sums[3]) / per_token,
            "loss/clipfrac_high": float(sums[4]) / per_token,
            "loss/ratio_mean": float(sums[5]) / per_token,
            "loss/ratio_max": float(ratio_max),
            "loss/approx_kl": float(sums[6]) / per_token,
            "loss/tokens": tokens,
            **self._step_metrics(grad_norm, lr, skipped, sequences=float(sums[8]), micro_batches=len(micro),
                                 padded_tokens=float(sums[9]), seconds=seconds),
        }

    def _apply_update(self, what: str) -> tuple[float, bool]:
        """Clip, then step the optimizer (skipped on a non-finite gradient norm) and the LR
        schedule; the same tail for every kind of step. Returns (grad norm, skipped)."""
        grad_norm = self._clip_gradients()
        skipped = not math.isfinite(grad_norm)
        if skipped:
            logger.warning("%s %d: gradient norm is %s; skipping the optimizer update", what, self._step,
                           grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self._version += 1
        self.scheduler.step()
        self._step += 1
        return grad_norm, skipped

    def _step_metrics(self, grad_norm: float, lr: float, skipped: bool, *, sequences: float,
                      micro_batches: int, padded_tokens: float, seconds: float) -> dict[str, float]:
        """The ``learner/*`` metrics every kind of step reports."""
        return {
            "learner/grad_norm": grad_norm,
            "learner/lr": lr,
            "learner/step": float(self._step),
            "learner/version": float(self._version),
            "learner/sequences": sequences,
            "learner/micro_batches": float(micro_batches),
            "learner/padded_tokens": padded_tokens,
            "learner/skipped": float(skipped),
            "learner/step_seconds": seconds,
            "learner/tokens_per_second": padded_tokens / seconds if seconds > 0 else 0.0,
        }

    def sft_step(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """One supervised optimizer step: mean negative log-likelihood of the loss-mask tokens.

        The loss is a token mean over the whole step (every micro-batch, every rank): the
        masked token count is summed first and each micro-batch's summed NLL is divided by
        it, so micro-batching and data parallelism give the update of one big batch. Same
        gradient clipping, AdamW and LR schedule as :meth:`train_step`, and, like it, a step
        with a non-finite gradient norm is skipped. ``logprobs`` of the trajectories are
        ignored (demonstrations carry none); logits are divided by ``config.temperature``
        as in :meth:`train_step`, so keep it 1.0 for plain maximum likelihood.

        Both :attr:`step` and :attr:`version` advance (the version counts optimizer updates,
        whatever their loss: a generator stamped with it must see that the weights moved).

        Example::

            metrics = learner.sft_step(demos)        # demos: Trajectory with loss_mask on replies
            metrics["loss/nll"], metrics["learner/tokens_per_second"]

        Returns:
            ``loss/nll`` (mean over loss tokens), ``loss/tokens`` and the ``learner/*`` metrics
            of :meth:`train_step`.
        """
        started = time.perf_counter()
        if not trajectories and self._world == 1:
            raise ValueError("sft_step needs at least one trajectory")
        rows = self._rows(trajectories, [0.0] * len(trajectories), None)
        micro = self._micro_batches(rows, with_ref=False)
        micro += [self._dummy(with_ref=False)] * (self._agree_max(len(micro)) - len(micro))

        tokens_total = torch.zeros((), dtype=torch.float32)
        for mb in micro:
            tokens_total += mb.mask.sum().cpu()
        normalizer = self._all_reduce(tokens_total.to(self.device)).clamp(min=1.0)

        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr
        # [nll sum, tokens, sequences, padded], accumulated on the device.
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for mb in micro:
            logprobs = self._micro_logprobs(mb, self.config.temperature)
            nll = -(logprobs * mb.mask).sum()
            (nll / normalizer).backward()
            padded = mb.computed_tokens
            sums += torch.stack([
                nll.detach().double(), mb.mask.sum().double(),
                torch.tensor(float(mb.sequences), dtype=torch.float64, device=self.device),
                torch.tensor(float(padded), dtype=torch.float64, device=self.device),
            ])

        grad_norm, skipped = self._apply_update("learner sft step")

        sums = self._all_reduce(sums).cpu()
        tokens = float(sums[1])
        seconds = time.perf_counter() - started
        return {
            "loss/nll": float(sums[0]) / max(tokens, 1.0),
            "loss/tokens": tokens,
            **self._step_metrics(grad_norm, lr, skipped, sequences=float(sums[2]), micro_batches=len(micro),
                                 padded_tokens=float(sums[3]), seconds=seconds),
        }

    @torch.no_grad()
    def logprobs(
        self, token_ids_batch: Sequence[Sequence[int] | torch.Tensor], *, temperature: float | None = None
    ) -> list[torch.Tensor]:
        """Teacher-forced logprob of every token given the ones before it.

        Returns one float32 CPU tensor per sequence, aligned with its ids like
        ``Trajectory.logprobs``: entry ``i`` is ``log p(ids[i] | ids[:i])`` under the logits
        divided by ``temperature`` (None: ``config.temperature``); entry 0 is 0.0 (no
        context). Uses the micro-batch limits of training. Collective under data
        parallelism (every rank calls it, with its own sequences).

        Example::

            lp = learner.logprobs([[1, 5, 9]])[0]     # tensor([0.0, log p(5|1), log p(9|1,5)])
        """
        temp = self.config.temperature if temperature is None else temperature
        if not temp > 0:
            raise ValueError(f"temperature must be > 0, got {temp}")
        seqs = [[int(t) for t in (s.tolist() if isinstance(s, torch.Tensor) else s)] for s in token_ids_batch]
        for i, s in enumerate(seqs):
            self._check_ids(s, f"sequence {i}")
        if self._layout == "packed":
            # A sequence's last token is nobody's context: the packed input stops before it.
            contexts = {i: s[:-1] for i, s in enumerate(seqs) if len(s) > 1}
            plan = self._plan_packed(list(contexts), contexts)
        else:
            plan = self._plan([len(s) for s in seqs])
        extra = self._agree_max(len(plan)) - len(plan)  # before any forward: FSDP's collectives
        out: list[torch.Tensor] = [torch.zeros(1)] * len(seqs)   # one token: only the 0.0
        self.model.eval()
        for idx in plan:
            if self._layout == "packed":
                parts = self._packed_logprobs([seqs[i] for i in idx], temp)
            else:
                mb = self._collate([_Row(tokens=seqs[i], mask=[], old=[], adv=[], ref=None) for i in idx])
                lp = self._token_logprobs(mb.tokens, temp).float().cpu()
                parts = [lp[row, : len(seqs[i]) - 1] for row, i in enumerate(idx)]
            for i, part in zip(idx, parts):
                out[i] = torch.cat([torch.zeros(1), part])
        for _ in range(extra):
            self._token_logprobs(self._dummy(with_ref=False).tokens, temp)
        return out

    def _packed_logprobs(self, seqs: Sequence[list[int]], temperature: float) -> list[torch.Tensor]:
        """Teacher-forced logprobs of ``seqs[i][1:]``, the batch run as one prefix tree.

        The output head runs once per tree node: sequences sharing a prefix share its logits
        (their next tokens may still differ, so each picks its own target from them)."""
        packed = pack_sequences([s[:-1] for s in seqs], device=self.device)
        nodes = [packed.node_ids(k, range(len(s) - 1)) for k, s in enumerate(seqs)]
        flat = torch.tensor([n for ids in nodes for n in ids], dtype=torch.long)
        unique, which = torch.unique(flat, return_inverse=True)
        targets = torch.tensor([t for s in seqs for t in s[1:]], dtype=torch.long, device=self.device)
        with self._autocast(), select_output_rows(self.model, unique.to(self.device)):
            logits = self.model(packed.tokens, positions=packed.positions, attention_masks=packed.tree)   # [U, V]
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        which = which.to(self.device)
        # Indexed pairwise, never as [positions, V]: memory stays that of the nodes' logits.
        lp = logits[which, targets] - torch.logsumexp(logits, dim=-1)[which]
        return list(lp.cpu().split([len(s) - 1 for s in seqs]))

    # --- export and checkpoints -------------------------------------------------------------

    def hf_named_tensors(
        self, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> list[tuple[str, torch.Tensor]]:
        """The current weights under their HF names, a snapshot for
        ``Generator.update_weights`` (fp32 unless ``dtype``). Collective under data parallelism."""
        return self.titan.hf_named_tensors(dtype=dtype, device=device)

    def save_hf(self, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> Path:
        """Write an HF folder (safetensors, config, tokenizer) that transformers and vLLM load.
        Collective under data parallelism (rank 0 writes)."""
        return self.titan.save_hf(path, dtype=dtype)

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and scheduler state, step and version: ``torch.save`` it.

        Full (unsharded) CPU tensors. Under data parallelism rank 0 gets the state and the
        other ranks an empty ``model``/``optimizer`` (every rank must call it).
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model_sd, optim_sd = get_state_dict(
            self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        return {
            "format": _STATE_FORMAT,
            "model": model_sd,
            "optimizer": optim_sd,
            "scheduler": self.scheduler.state_dict(),
            "step": self._step,
            "version": self._version,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the same model architecture). Under data
        parallelism every rank passes the same full state (rank 0's is broadcast; with
        torch 2.13 an empty ``model``/``optimizer`` on the other ranks left rank 0 waiting)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        if state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"not a forge-env learner state (format {state.get('format')!r}, expected {_STATE_FORMAT}); "
                "pass what Learner.state_dict() returned"
            )
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=self._fsdp)
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
            options=options,
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self._step = int(state["step"])
        self._version = int(state["version"])

    # --- internals --------------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[int], what: str) -> None:
        if not ids:
            raise ValueError(f"{what} has no token ids")
        if len(ids) > self.max_seq_len:
            raise ValueError(
                f"{what} has {len(ids)} tokens but the learner's max_seq_len is {self.max_seq_len}: raise "
                "LearnerConfig.max_seq_len (up to what the model was trained for) or shorten the episodes"
            )
        vocab = self.titan.shape.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"{what} has token ids outside the vocabulary [0, {vocab})")

    def _rows(
        self,
        trajectories: Sequence[Trajectory],
        advantages: Sequence[Sequence[float] | float],
        ref_logprobs: Sequence[Sequence[float] | torch.Tensor] | None,
    ) -> list[_Row]:
        if len(advantages) != len(trajectories):
            raise ValueError(f"{len(advantages)} advantage rows for {len(trajectories)} trajectories")
        if ref_logprobs is not None and len(ref_logprobs) != len(trajectories):
            raise ValueError(f"{len(ref_logprobs)} ref_logprobs rows for {len(trajectories)} trajectories")
        if self.config.loss.kl_coef > 0 and ref_logprobs is None:
            raise ValueError(
                f"LossConfig.kl_coef is {self.config.loss.kl_coef}: pass ref_logprobs (a reference learner's "
                "logprobs(...) of the same token ids), or set kl_coef=0"
            )
        rows = []
        for i, traj in enumerate(trajectories):
            n = len(traj.token_ids)
            what = f"trajectory {i} ({traj.env_name!r})"
            self._check_ids(traj.token_ids, what)
            if len(traj.loss_mask) != n or len(traj.logprobs) != n:
                raise ValueError(
                    f"{what}: {n} token_ids, {len(traj.loss_mask)} loss_mask and "
                    f"{len(traj.logprobs)} logprobs "
                    "entries: they must align one to one"
                )
            if traj.loss_mask[0]:
                raise ValueError(
                    f"{what}: loss_mask[0] is 1, but the first token has no context to predict it from"
                )
            adv_i = advantages[i]
            adv = [float(adv_i)] * n if isinstance(adv_i, (int, float)) else [float(a) for a in adv_i]
            if len(adv) != n:
                raise ValueError(f"{what}: {len(adv)} advantages for {n} token ids")
            ref: list[float] | None = None
            if ref_logprobs is not None:
                r = ref_logprobs[i]
                ref = [float(x) for x in (r.tolist() if isinstance(r, torch.Tensor) else r)]
                if len(ref) != n:
                    raise ValueError(f"{what}: {len(ref)} ref_logprobs for {n} token ids")
            rows.append(_Row(
                tokens=list(traj.token_ids), mask=[float(bool(x)) for x in traj.loss_mask[1:]],
                old=[float(x) for x in traj.logprobs[1:]], adv=adv[1:], ref=None if ref is None else ref[1:],
            ))
        return rows

    def _plan(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group sequence indices (in order) into micro-batches within the configured limits."""
        max_seqs = self.config.micro_batch_size or len(lengths) or 1
        max_tokens = self.config.micro_batch_tokens
        plan: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for i, n in enumerate(lengths):
            grown = max(longest, n)
            too_many = len(current) + 1 > max_seqs
            too_big = max_tokens is not None and (len(current) + 1) * grown > max_tokens
            if current and (too_many or too_big):
                plan.append(current)
                current, grown = [], n
            current.append(i)
            longest = grown
        if current:
            plan.append(current)
        return plan

    def _collate(self, rows: Sequence[_Row]) -> _MicroBatch:
        width = max(2, max(len(r.tokens) for r in rows))
        b = len(rows)
        tokens = torch.full((b, width), _PAD_ID, dtype=torch.long)
        mask = torch.zeros(b, width - 1)
        old = torch.zeros(b, width - 1)
        adv = torch.zeros(b, width - 1)
        with_ref = bool(rows) and rows[0].ref is not None
        ref = torch.zeros(b, width - 1) if with_ref else None
        for i, r in enumerate(rows):
            n = len(r.tokens)
            tokens[i, :n] = torch.tensor(r.tokens, dtype=torch.long)
            if r.mask:
                mask[i, : n - 1] = torch.tensor(r.mask)
                old[i, : n - 1] = torch.tensor(r.old)
                adv[i, : n - 1] = torch.tensor(r.adv)
            if ref is not None and r.ref is not None:
                ref[i, : n - 1] = torch.tensor(r.ref)
        dev = self.device
        return _MicroBatch(
            tokens=tokens.to(dev), mask=mask.to(dev), old=old.to(dev), adv=adv.to(dev),
            ref=None if ref is None else ref.to(dev), sequences=b, computed_tokens=b * width,
        )

    def _dummy(self, *, with_ref: bool) -> _MicroBatch:
        """An empty-mask micro-batch: keeps FSDP's collectives in step on a rank with fewer
        micro-batches than the others; it adds nothing to the loss or the gradients."""
        zeros = torch.zeros(1, 1, device=self.device)
        return _MicroBatch(
            tokens=torch.full((1, 2), _PAD_ID, dtype=torch.long, device=self.device), mask=zeros, old=zeros,
            adv=zeros, ref=zeros if with_ref else None, sequences=0, computed_tokens=0,
        )

    def _micro_batches(self, rows: Sequence[_Row], *, with_ref: bool) -> list[_MicroBatch]:
        """This rank's micro-batches of a training step, in the configured layout."""
        if self._layout == "padded":
            return [self._collate([rows[i] for i in idx]) for idx in self._plan([len(r.tokens) for r in rows])]
        # Context positions t whose next token is a loss token; the input stops at the last
        # one (later tokens cannot change it under causal attention).
        heads = {i: [t for t, m in enumerate(r.mask) if m] for i, r in enumerate(rows)}
        live = [i for i in range(len(rows)) if heads[i]]
        inputs = {i: rows[i].tokens[: heads[i][-1] + 1] for i in live}
        micro = [self._pack([rows[i] for i in idx], [heads[i] for i in idx], [inputs[i] for i in idx],
                            with_ref=with_ref)
                 for idx in self._plan_packed(live, inputs)]
        idle = len(rows) - len(live)  # sequences without a loss token: nothing to compute
        if idle and micro:
            micro[0].sequences += idle
        elif idle:
            micro = [dataclasses.replace(self._dummy(with_ref=with_ref), sequences=idle)]
        return micro

    def _plan_packed(self, live: Sequence[int], inputs: dict[int, list[int]]) -> list[list[int]]:
        """Micro-batches of sequence indices for the packed layout: in token order (sequences
        sharing a prefix are neighbours), within the limits; a micro-batch's token count is
        its prefix tree's node count."""
        order = sorted(live, key=lambda i: (inputs[i], i))
        max_seqs = self.config.micro_batch_size or len(order) or 1
        max_tokens = self.config.micro_batch_tokens
        plan: list[list[int]] = []
        current: list[int] = []
        nodes = 0
        for i in order:
            seq = inputs[i]
            grown = nodes + len(seq) - (_lcp(inputs[current[-1]], seq) if current else 0)
            too_big = max_tokens is not None and grown > max_tokens
            if current and (len(current) + 1 > max_seqs or too_big):
                plan.append(current)
                current, grown = [], len(seq)
            current.append(i)
            nodes = grown
        if current:
            plan.append(current)
        return plan

    def _pack(self, rows: Sequence[_Row], heads: Sequence[list[int]], inputs: Sequence[list[int]], *,
              with_ref: bool) -> _MicroBatch:
        """A packed micro-batch: the inputs as a prefix tree, the loss tokens left-aligned."""
        packed = pack_sequences(inputs, device=self.device)
        width = max(len(h) for h in heads)
        dev = self.device

        def compact(values: Sequence[list[float] | None]) -> torch.Tensor:
            # [B, width]: each sequence's values at its loss tokens, left-aligned, 0 after.
            return torch.tensor([[v[t] for t in h] + [0.0] * (width - len(h)) if v is not None else [0.0] * width
                                 for v, h in zip(values, heads)], dtype=torch.float32, device=dev)

        node_rows: list[int] = []
        targets: list[int] = []
        for i, (r, h) in enumerate(zip(rows, heads)):
            node_rows += packed.node_ids(i, h)
            targets += [r.tokens[t + 1] for t in h]
        return _MicroBatch(
            tokens=packed.tokens, mask=compact([r.mask for r in rows]), old=compact([r.old for r in rows]),
            adv=compact([r.adv for r in rows]), ref=compact([r.ref for r in rows]) if with_ref else None,
            sequences=len(rows), computed_tokens=packed.num_tokens,
            positions=packed.positions, tree=packed.tree,
            rows=torch.tensor(node_rows, dtype=torch.long, device=dev),
            targets=torch.tensor(targets, dtype=torch.long, device=dev),
        )

    def _micro_logprobs(self, mb: _MicroBatch, temperature: float) -> torch.Tensor:
        """Float32 logprobs of ``mb``'s targets, shaped like ``mb.mask``."""
        if mb.tree is None:
            return self._token_logprobs(mb.tokens, temperature)
        assert mb.rows is not None and mb.targets is not None
        with self._autocast(), select_output_rows(self.model, mb.rows):
            logits = self.model(mb.tokens, positions=mb.positions, attention_masks=mb.tree)   # [M, V]
        logits = logits.float()
        if temperature != 1.0:
            logits = logits / temperature
        lp = logits.gather(-1, mb.targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        # Row-major order of the mask is the order of the loss tokens: sequence, then position.
        return torch.zeros(mb.mask.shape, dtype=lp.dtype, device=lp.device).masked_scatter(mb.mask.bool(), lp)

    def _token_logprobs(self, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
        """[B, L] ids -> [B, L-1] float32 logprobs of ids[:, 1:] under logits / temperature."""
        with self._autocast():
            logits = self.model(tokens)
        logits = logits[:, :-1].float()
        if temperature != 1.0:
            logits = logits / temperature
        targets = tokens[:, 1:].unsqueeze(-1)
        return logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        # Under FSDP its MixedPrecisionPolicy casts the parameters; otherwise autocast does.
        if self.compute_dtype == torch.float32 or self._fsdp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _clip_gradients(self) -> float:
        from torch.distributed.tensor import DTensor

        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        grads = [p.grad for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        if isinstance(total, DTensor):
            total = total.full_tensor()  # FSDP shards: the norm's pieces live on every rank
        if self.config.max_grad_norm is not None and torch.isfinite(total):
            torch.nn.utils.clip_grads_with_norm_(params, self.config.max_grad_norm, total)
        return float(total)

    def _all_reduce(self, tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
        if self._world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op)
        return tensor

    def _agree_max(self, n: int) -> int:
        """The most micro-batches any rank has (FSDP needs the same number of forwards)."""
        if self._world == 1:
            return n
        t = torch.tensor([n], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.model.named_parameters()


def _pick_device(choice: str, *, distributed: bool) -> torch.device:
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "LearnerConfig.device='cuda' but torch sees no GPU; use device='auto' or 'cpu'"
            )
        index = int(os.environ.get("LOCAL_RANK", 0)) if distributed else torch.cuda.current_device()
        device = torch.device("cuda", index)
        if distributed:
            torch.cuda.set_device(device)  # NCCL collectives run on the current device
        return device
    return torch.device("cpu")


def _pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if choice == "bfloat16" else torch.float32


@contextlib.contextmanager
def _mesh_device_type(device_type: str) -> Iterator[None]:
    """torchtitan's ``ParallelDims.build_mesh`` builds its mesh on ``tools.utils.device_type``,
    which is "cuda" on a machine without GPUs; point it at our device while the mesh is built."""
    import torchtitan.distributed.parallel_dims as parallel_dims

    saved = parallel_dims.device_type
    parallel_dims.device_type = device_type
    try:
        yield
    finally:
        parallel_dims.device_type = saved


def _parallelize(
    titan: TitanModel, config: LearnerConfig, *, device: torch.device, compute_dtype: torch.dtype, world: int
) -> None:
    """Activation checkpointing, compile and FSDP2 via torchtitan's ``parallelize_*`` (in place)."""
    gpu = device.type == "cuda"
    ac_name = config.activation_checkpointing if gpu else "none"
    use_compile = config.compile and gpu
    if not gpu and (config.activation_checkpointing != "none" or config.compile):
        logger.info("learner on CPU: activation_checkpointing and compile are GPU options; ignoring them")
    if world == 1 and ac_name == "none" and not use_compile:
        return
    from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC

    ac_config: Any = {"none": None, "full": FullAC.Config(), "selective": SelectiveAC.Config()}[ac_name]
    compile_config = CompileConfig(enable=use_compile, components=["model"])
    # partial_dtensor: plain FSDP2 (fully_shard) without torchtitan's SPMD type system.
    parallel_dims = ParallelDims(dp_replicate=1, dp_shard=world, cp=1, tp=1, pp=1, ep=1, world_size=world,
                                 spmd_backend="partial_dtensor")
    model = titan.model
    if world == 1:
        # No process group: the same torchtitan pieces parallelize_* applies, minus FSDP
        # (mixed precision comes from autocast then).
        from torchtitan.distributed.compile import apply_compile

        if ac_config is not None:
            ac_config.build(dump_folder="").apply(model)
        if use_compile:
            apply_compile(model, compile_config=compile_config, parallel_dims=parallel_dims)
        return
    from torch.distributed.fsdp import FSDPModule
    from torchtitan.distributed.fsdp import disable_fsdp_gradient_division

    with _mesh_device_type(device.type):
        parallel_dims.build_mesh()
    precision = "bfloat16" if compute_dtype == torch.bfloat16 else "float32"
    training = TrainingConfig(mixed_precision_param=precision, mixed_precision_reduce="float32")
    parallelism = ParallelismConfig(spmd_backend="partial_dtensor", data_parallel_shard_degree=world)
    if titan.family == "qwen3":
        from torchtitan.models.qwen3 import parallelize_qwen3 as parallelize_fn
    else:
        from torchtitan.models.llama3 import parallelize_llama as parallelize_fn
    parallelize_fn(
        model,
        parallel_dims=parallel_dims, training=training, parallelism=parallelism,
        compile_config=compile_config, ac_config=ac_config, dump_folder="",
    )
    # The loss is already divided by the global normaliser: gradients must be summed over
    # ranks, not averaged.
    disable_fsdp_gradient_division(model)
    if dist.get_backend() == "gloo":
        # gloo has no PREMUL_SUM (FSDP's reduce op for a custom divide factor): plain SUM.
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)
