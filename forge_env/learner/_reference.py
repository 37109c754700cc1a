"""The frozen reference policy of the KL term: ``LossConfig.kl_coef > 0`` needs its logprobs.

GRPO's k3 penalty (see :mod:`forge_env.learner._losses`) pulls the policy towards a frozen
copy of the model it started from. :class:`ReferencePolicy` is that copy: a
:class:`~forge_env.learner.Learner` built from the same :class:`~forge_env.learner.LearnerConfig`
(same model folder, device, dtype, temperature, micro-batch limits and seed) that is never
trained. Its :meth:`ReferencePolicy.logprobs` gives, per trajectory, the teacher-forced
logprobs the learner's ``train_step(..., ref_logprobs=...)`` expects.

Memory: the reference holds the model's weights once, in float32 (``reference/weight_bytes``,
RoPE cache included: the tiny model ~15 MB, SmolLM2-135M ~0.55 GB), plus the activations of one
micro-batch while it computes (no autograd graph: it runs under ``no_grad``). Nothing allocates
AdamW state: PyTorch creates an optimizer's moments on its first ``step()``, which the
reference never takes, and its parameters do not require gradients.

Importing this module imports torch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from forge_env.learner._learner import Learner, LearnerConfig
from forge_env.rollout._trajectory import Trajectory

__all__ = ["ReferencePolicy"]

logger = logging.getLogger(__name__)


class ReferencePolicy:
    """Logprobs under the frozen initial weights of ``config.model``: the KL reference.

    Built from the learner's own config, so it runs on the same device, in the same dtype,
    at the same temperature and with the same micro-batch limits: at step 0 its logprobs
    equal the learner's and the KL term is 0. The forward passes run in a worker thread (one
    at a time), so the caller's event loop keeps running rollouts meanwhile.

    Example::

        config = LearnerConfig(model="tiny", lr=1e-4, loss=LossConfig(kl_coef=0.05))
        learner = Learner(config)
        async with ReferencePolicy(config) as reference:
            ref = await reference.logprobs(group.trajectories)   # one list per trajectory
            learner.train_step(group.trajectories, group_advantages(group), ref_logprobs=ref)
            reference.metrics()["reference/seconds_total"]

    When a run resumes from a checkpoint the reference is built from ``config.model`` again:
    the KL keeps pointing at the model training started from, as long as ``config.model``
    still names that model.

    Build it in a process without a multi-rank ``torch.distributed`` group (the orchestrator's,
    or a :class:`~forge_env.monarch.MonarchReference` replica): inside one, the Learner under it
    shards itself with FSDP and every rank would have to call :meth:`logprobs` together.

    Args:
        config: the learner's config (only the model, device, dtype, temperature,
            ``max_seq_len``, micro-batch limits and seed matter here; the optimizer and loss
            settings are ignored).

    Raises:
        FileNotFoundError, ValueError, RuntimeError: as :class:`~forge_env.learner.Learner`
            raises them (no such model, unsupported architecture, no GPU for ``cuda``).
    """

    def __init__(self, config: LearnerConfig) -> None:
        from forge_env.learner._model import read_hf_shape
        from forge_env.models import resolve_model

        started = time.perf_counter()
        self.config = config
        self._learner: Learner | None = Learner(config)
        learner = self._learner
        # Frozen: no gradients are ever kept for these weights, and the optimizer the Learner
        # made holds no state (PyTorch allocates AdamW's moments on the first step(), which
        # never comes); clear it anyway so a Learner that preallocates state does not make
        # the reference pay for it.
        for param in learner.model.parameters():
            param.requires_grad_(False)
        optimizer = getattr(learner, "optimizer", None)
        if optimizer is not None and optimizer.state:
            optimizer.state.clear()
        self.device: torch.device = learner.device
        self.max_seq_len: int = learner.max_seq_len
        """Longest sequence it accepts (the learner's)."""
        self.vocab_size: int = read_hf_shape(resolve_model(config.model)).vocab_size
        """Token ids must lie in ``[0, vocab_size)``."""
        self.weight_bytes: int = _module_bytes(learner.model)
        """Bytes of the weights (and buffers such as the RoPE cache) it holds."""
        # One worker: forward passes run one at a time, off the event loop's thread.
        self._pool: concurrent.futures.ThreadPoolExecutor | None = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="forge-env-reference"
        )
        self._lock = threading.Lock()  # guards the counters (updated on the worker thread)
        self._calls = 0
        self._sequences = 0
        self._tokens = 0
        self._seconds_total = 0.0
        self._seconds_last = 0.0
        self.start_seconds = time.perf_counter() - started
        """Seconds it took to build (load the model)."""
        logger.info("reference policy (%s, %s, %.1f MB of weights) built in %.1f s", config.model,
                    self.device, self.weight_bytes / 1e6, self.start_seconds)

    # --- the API the orchestrator uses -----------------------------------------------------

    async def logprobs(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        """Teacher-forced logprobs of every trajectory's ``token_ids`` under the reference.

        One list per trajectory, aligned with its ``token_ids`` like ``Trajectory.logprobs``:
        entry ``i`` is ``log p_ref(ids[i] | ids[:i])`` at the learner's temperature, entry 0
        is 0.0. Pass the result as ``Learner.train_step(..., ref_logprobs=...)``.

        Raises:
            ValueError: a trajectory has no token ids, more than :attr:`max_seq_len`, or ids
                outside the vocabulary (the message names the trajectory).
            RuntimeError: the reference is closed.
        """
        names = [f"trajectory {i} ({t.env_name!r})" for i, t in enumerate(trajectories)]
        return await self.logprobs_of_ids([t.token_ids for t in trajectories], names=names)

    async def logprobs_of_ids(
        self, token_ids_batch: Sequence[Sequence[int]], *, names: Sequence[str] | None = None
    ) -> list[list[float]]:
        """:meth:`logprobs` for bare token-id lists (``names``: how errors call each one)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("ReferencePolicy is closed; build a new one")
        seqs = [[int(t) for t in ids] for ids in token_ids_batch]
        self.check(seqs, names=names)
        if not seqs:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, self._compute, seqs)

    def check(self, token_ids_batch: Sequence[Sequence[int]], *, names: Sequence[str] | None = None) -> None:
        """Raise ValueError naming the first sequence the reference cannot score."""
        _check_sequences(token_ids_batch, names, max_seq_len=self.max_seq_len, vocab_size=self.vocab_size)

    def metrics(self) -> dict[str, float]:
        """``reference/calls``, ``reference/sequences``, ``reference/tokens``,
        ``reference/seconds_total`` (time spent in forward passes), ``reference/seconds_last``,
        ``reference/tokens_per_second`` and ``reference/weight_bytes``."""
        with self._lock:
            rate = self._tokens / self._seconds_total if self._seconds_total else 0.0
            return {
                "reference/calls": float(self._calls),
                "reference/sequences": float(self._sequences),
                "reference/tokens": float(self._tokens),
                "reference/seconds_total": self._seconds_total,
                "reference/seconds_last": self._seconds_last,
                "reference/tokens_per_second": rate,
                "reference/weight_bytes": float(self.weight_bytes),
            }

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._pool is None

    async def aclose(self) -> None:
        """Wait for a computation in flight, stop the worker thread and drop the weights. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True)
        self._learner = None

    async def __aenter__(self) -> ReferencePolicy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self.closed else str(self.device)
        return f"ReferencePolicy(model={self.config.model!r}, {state})"

    # --- internals --------------------------------------------------------------------------

    def _compute(self, seqs: list[list[int]]) -> list[list[float]]:
        """On the worker thread: the Learner's teacher-forced logprobs, as Python lists."""
        learner = self._learner
        if learner is None:  # closed while queued
            raise RuntimeError("ReferencePolicy was closed while a call waited")
        started = time.perf_counter()
        out = [lp.tolist() for lp in learner.logprobs(seqs)]
        seconds = time.perf_counter() - started
        with self._lock:
            self._calls += 1
            self._sequences += len(seqs)
            self._tokens += sum(len(s) for s in seqs)
            self._seconds_total += seconds
            self._seconds_last = seconds
        return out


def _check_sequences(
    seqs: Sequence[Sequence[int]], names: Sequence[str] | None, *, max_seq_len: int, vocab_size: int
) -> None:
    """The learner's input checks, with errors that name the caller's trajectory (package-internal:
    :class:`~forge_env.monarch.MonarchReference` runs them before it splits a batch)."""
    for i, ids in enumerate(seqs):
        what = names[i] if names is not None else f"sequence {i}"
        if not ids:
            raise ValueError(f"reference policy: {what} has no token ids")
        if len(ids) > max_seq_len:
            raise ValueError(
                f"reference policy: {what} has {len(ids)} tokens but max_seq_len is {max_seq_len}: raise "
                "LearnerConfig.max_seq_len (up to what the model was trained for) or shorten the episodes"
            )
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(
                f"reference policy: {what} has token ids outside the vocabulary [0, {vocab_size})"
            )


def _module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (tied parameters counted once)."""
    tensors: dict[int, Any] = {}
    for t in (*module.parameters(), *module.buffers()):
        tensors[id(t)] = t
    return sum(t.numel() * t.element_size() for t in tensors.values())
