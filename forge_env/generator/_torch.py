"""TorchGenerator: the generator on plain torch + transformers, for platforms without vLLM.

Requests that arrive together are sampled as one batch: left-padded prompts, one prefill,
then one decode step at a time over a KV cache (transformers' ``DynamicCache``), rows
leaving the batch as they finish. The batch runs in a worker thread so the event loop stays
free. Static batching: requests arriving during a batch wait for the next one.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from forge_env.generator._base import (
    Completion,
    FinishReason,
    GeneratorError,
    InFlightPolicy,
    SamplingParams,
)
from forge_env.generator._config import TorchGeneratorConfig
from forge_env.generator._folder import check_prompt, collect_weights
from forge_env.generator._stamped import FolderGenerator

__all__ = ["TorchGenerator"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    stop_ids: frozenset[int]
    future: asyncio.Future[Completion]
    submitted: float
    cancelled: bool = False


@dataclasses.dataclass
class _Row:
    """One request's state inside a running batch."""

    request: _Request
    rng: torch.Generator
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    finish_reason: FinishReason | None = None


class TorchGenerator(FolderGenerator):
    """Samples with ``transformers.AutoModelForCausalLM`` and its own batched decode loop.

    The same contract as :class:`~forge_env.generator.VLLMGenerator`: exact token ids, the
    logprob of each sampled token under the distribution sampled from (logits / temperature,
    after top-k/top-p; untempered for greedy), completions stamped with the version of the
    weights that sampled them. :meth:`update_weights` swaps weights between batches:
    ``in_flight="finish"`` waits for the running batch, ``"abort"`` stops it at its next
    step and samples its requests again from the start on the new weights.

    Example::

        gen = TorchGenerator(TorchGeneratorConfig(model="/path/to/hf_folder"))
        async with gen:
            out = await gen.generate([1, 2, 3], SamplingParams(max_tokens=16, seed=0))
            await gen.update_weights(model.state_dict().items(), version=1)

    Args:
        config: model folder, batch size, device, in-flight policy.

    Raises:
        GeneratorError: ``config.model`` is not a model folder.
    """

    _COUNTERS = (*FolderGenerator._COUNTERS, "batches")

    def __init__(self, config: TorchGeneratorConfig) -> None:
        self.config = config
        self._init_folder(config.model, who="TorchGeneratorConfig")
        self._model: Any = None
        self._device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._dtype = getattr(torch, config.dtype, None)
        if not isinstance(self._dtype, torch.dtype):
            raise GeneratorError(f"TorchGeneratorConfig.dtype {config.dtype!r} is not a torch dtype name")
        self._pending: collections.deque[_Request] = collections.deque()
        self._wakeup = asyncio.Event()
        # Held by the batcher while a batch runs and by update_weights while weights load:
        # a batch never sees two versions. asyncio.Lock is FIFO, so a waiting update goes
        # before the next batch.
        self._lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._abort_batch = threading.Event()
        self._batcher: asyncio.Task[None] | None = None
        self._rng = torch.Generator().manual_seed(config.seed)

    # --- contract --------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (in a worker thread) and start the batcher. Idempotent."""
        if self._model is not None:
            return
        if self._closed:
            raise GeneratorError("this TorchGenerator is closed; create a new one")
        async with self._start_lock:
            if self._model is not None:
                return
            started = time.perf_counter()
            limit = self._folder.max_position_embeddings
            if limit is not None and self.max_model_len > limit:
                raise GeneratorError(
                    f"max_model_len {self.max_model_len} exceeds the model's max_position_embeddings "
                    f"{limit}; lower TorchGeneratorConfig.max_model_len"
                )
            self._model = await asyncio.to_thread(self._load)
            self._batcher = asyncio.create_task(self._serve(), name="TorchGenerator-batcher")
            self._start_s = time.perf_counter() - started

    def _load(self) -> Any:
        from transformers import AutoModelForCausalLM

        try:
            model: Any = AutoModelForCausalLM.from_pretrained(self._folder.path, dtype=self._dtype)
        except Exception as e:
            raise GeneratorError(f"transformers could not load {self.config.model!r}: {e}") from e
        return model.to(self._device).eval()

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Sample one completion (see :meth:`Generator.generate`); ``max_tokens`` is cut to fit
        ``max_model_len`` (``finish_reason="length"`` then)."""
        if self._closed:
            raise GeneratorError("this TorchGenerator is closed; create a new one")
        prompt = check_prompt(prompt_ids, max_model_len=self.max_model_len, vocab_size=self._folder.vocab_size)
        await self.start()
        stop = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop |= set(self.eos_token_ids)
        request = _Request(
            prompt=prompt,
            params=params,
            max_tokens=min(params.max_tokens, self.max_model_len - len(prompt)),
            stop_ids=frozenset(stop),
            future=asyncio.get_running_loop().create_future(),
            submitted=time.perf_counter(),
        )
        self._pending.append(request)
        self._wakeup.set()
        try:
            return await asyncio.shield(request.future)
        except asyncio.CancelledError:
            request.cancelled = True  # the batch drops the row at its next step
            raise

    async def update_weights(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        version: int,
        *,
        in_flight: InFlightPolicy | None = None,
    ) -> None:
        """Load a full set of new weights (HF names; a tied ``lm_head.weight`` is accepted)
        between batches and stamp later completions ``version``.

        Args:
            named_tensors: ``(name, tensor)`` pairs, e.g. ``model.state_dict().items()``.
            version: the policy version of these weights.
            in_flight: this update's :data:`InFlightPolicy`; None = ``config.in_flight``.

        Raises:
            GeneratorError: a name is unknown or missing, or a shape differs.
        """
        if self._closed:
            raise GeneratorError("this TorchGenerator is closed; create a new one")
        policy = in_flight or self.config.in_flight
        if policy not in ("finish", "abort"):
            raise GeneratorError(f"in_flight must be 'finish' or 'abort', got {policy!r}")
        tensors = collect_weights(named_tensors, self._folder)
        await self.start()
        started = time.perf_counter()
        blocked_from = time.perf_counter()  # from here the next batch waits for this update
        if policy == "abort":
            self._abort_batch.set()
        try:
            async with self._lock:
                await asyncio.to_thread(self._load_weights, tensors)
                self._version = version
        finally:
            self._abort_batch.clear()
            self._last_blocked_s = time.perf_counter() - blocked_from
        self._counters["updates"] += 1
        self._last_update_s = time.perf_counter() - started

    def _load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            # strict=False: a tied lm_head is absent from `tensors`; collect_weights has
            # already checked that every other weight is there with its shape.
            result = self._model.load_state_dict(tensors, strict=False)
        if result.unexpected_keys:
            raise GeneratorError(f"the model has no weights named {result.unexpected_keys[:5]}")

    async def close(self) -> None:
        """Stop the batcher; requests not finished return ``finish_reason="abort"``. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._abort_batch.set()
        if self._batcher is not None:
            self._wakeup.set()
            await asyncio.gather(self._batcher, return_exceptions=True)
        for request in self._pending:
            self._resolve(request, [], [], "abort")
        self._pending.clear()
        self._model = None

    # --- the batcher -----------------------------------------------------------------------

    async def _serve(self) -> None:
        while not self._closed:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.config.batch_wait_s:
                await asyncio.sleep(self.config.batch_wait_s)  # let more requests join this batch
            async with self._lock:
                batch: list[_Request] = []
                while self._pending and len(batch) < self.config.max_batch_size:
                    request = self._pending.popleft()
                    if not request.cancelled:
                        batch.append(request)
                if batch and not self._closed:
                    try:
                        await self._run(batch)
                    except Exception as e:  # keep serving: fail this batch's requests only
                        logger.exception("TorchGenerator batch failed")
                        error = GeneratorError(f"a batch of {len(batch)} requests failed: {type(e).__name__}: {e}")
                        for request in batch:
                            if not request.future.done():
                                request.future.set_exception(error)

    async def _run(self, batch: list[_Request]) -> None:
        """One batch, under the lock: its completions are resolved before an update starts."""
        version = self._version
        seeds = [self._row_seed(r.params) for r in batch]
        rows = await asyncio.to_thread(self._run_batch, batch, seeds)
        self._counters["batches"] += 1
        if rows is None:  # stopped by an `abort` update (or close)
            if self._closed:
                for request in batch:
                    self._resolve(request, [], [], "abort")
                return
            # Sampled again from the start, on the new weights, before anything newer.
            self._counters["resampled"] += len(batch)
            self._pending.extendleft(reversed(batch))
            return
        for row in rows:
            assert row.finish_reason is not None
            self._resolve(row.request, row.token_ids, row.logprobs, row.finish_reason, version)

    def _row_seed(self, params: SamplingParams) -> int:
        if params.seed is not None:
            return params.seed
        return int(torch.randint(0, 2**62, (1,), generator=self._rng).item())

    def _resolve(
        self, request: _Request, token_ids: list[int], logprobs: list[float], reason: FinishReason,
        version: int | None = None,
    ) -> None:
        if request.future.done():
            return
        self._counters["requests"] += 1
        self._counters["tokens"] += len(token_ids)
        if reason == "abort":
            self._counters["aborted"] += 1
        request.future.set_result(
            Completion(
                token_ids=token_ids, logprobs=logprobs, finish_reason=reason,
                version=self._version if version is None else version, prompt_len=len(request.prompt),
                seconds=time.perf_counter() - request.submitted,
            )
        )

    @torch.inference_mode()
    def _run_batch(self, batch: list[_Request], seeds: list[int]) -> list[_Row] | None:
        """Sample every request of ``batch`` to its end; None if an abort stopped the batch."""
        from transformers import DynamicCache

        model, device = self._model, self._device
        rows = [
            _Row(request=r, rng=torch.Generator(device=device).manual_seed(seed)) for r, seed in zip(batch, seeds)
        ]
        width = max(len(r.prompt) for r in batch)
        input_ids = torch.full((len(batch), width), self._folder.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, request in enumerate(batch):
            input_ids[i, width - len(request.prompt):] = torch.tensor(request.prompt)
            mask[i, width - len(request.prompt):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        # Left padding: each row's positions count its own tokens only.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        out = model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions,
            past_key_values=cache, use_cache=True, logits_to_keep=1,
        )
        live = list(range(len(rows)))  # batch row -> index into rows
        next_pos = positions[:, -1]
        while True:
            if self._abort_batch.is_set():
                return None
            tokens = self._sample([rows[i] for i in live], out.logits[:, -1, :].float())
            still = []
            for k, i in enumerate(live):
                row = rows[i]
                token = int(tokens[k])
                if row.request.cancelled:  # nobody waits for it: drop it from the batch
                    row.logprobs.pop()
                    row.finish_reason = "abort"
                    continue
                row.token_ids.append(token)
                if token in row.request.stop_ids:
                    row.finish_reason = "stop"
                elif len(row.token_ids) >= row.request.max_tokens:
                    row.finish_reason = "length"
                else:
                    still.append(k)
            if not still:
                return rows
            if len(still) < len(live):
                # Finished rows leave the batch, and their cache rows with them.
                keep = torch.tensor(still, device=device)
                cache.batch_select_indices(keep)
                # tokens come back from _sample on the CPU; mask and positions live on the device.
                mask, next_pos, tokens = mask[keep], next_pos[keep], tokens[keep.cpu()]
                live = [live[k] for k in still]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
            next_pos = next_pos + 1
            out = model(
                input_ids=tokens.unsqueeze(1).to(device), attention_mask=mask,
                position_ids=next_pos.unsqueeze(1), past_key_values=cache, use_cache=True,
            )

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> torch.Tensor:
        """Sample one token per row from ``logits`` [rows, vocab]; append each sampled
        token's logprob to its row. Returns the tokens [rows] (on the CPU)."""
        temperature = torch.tensor(
            [r.request.params.temperature or 1.0 for r in rows], device=logits.device
        ).unsqueeze(1)
        scaled = logits / temperature
        top_k = [r.request.params.top_k for r in rows]
        top_p = [r.request.params.top_p for r in rows]
        if any(top_k) or any(p < 1.0 for p in top_p):
            scaled = _top_k_top_p(scaled, top_k, top_p)
        logprobs = torch.log_softmax(scaled, dim=-1)
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        for i, row in enumerate(rows):
            params = row.request.params
            if params.greedy:
                # Greedy reports untempered logprobs of the full distribution, as vLLM does.
                tokens[i] = torch.argmax(logits[i])
                row.logprobs.append(float(torch.log_softmax(logits[i], dim=-1)[tokens[i]]))
            else:
                tokens[i] = torch.multinomial(logprobs[i].exp(), 1, generator=row.rng)[0]
                row.logprobs.append(float(logprobs[i, tokens[i]]))
        return tokens.cpu()


def _top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Mask (-inf) the logits outside each row's top-k, then outside its top-p nucleus
    (the smallest set of most likely tokens whose probability reaches p; at least one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    vocab = logits.shape[-1]
    k = torch.tensor([kk if 0 < kk < vocab else vocab for kk in top_k], device=logits.device)
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)
    sorted_logits = sorted_logits.masked_fill(rank >= k.unsqueeze(1), float("-inf"))
    p = torch.tensor(top_p, device=logits.device, dtype=logits.dtype).unsqueeze(1)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill((before >= p) & (rank > 0), float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
