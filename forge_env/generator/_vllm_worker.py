"""Methods mixed into vLLM's worker (``worker_extension_cls``), called by ``collective_rpc``.

This module is imported inside vLLM's worker process; it imports vLLM only when called.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

__all__ = ["OWNER_PID_ENV", "ForgeWorkerExtension"]

OWNER_PID_ENV = "FORGE_ENV_VLLM_OWNER_PID"
"""Set by VLLMGenerator to its own pid before the engine starts; the engine's processes inherit it."""


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _watch_owner() -> None:
    """End this worker and its engine core once the process that started the engine is gone.

    vLLM's engine core outlives a parent killed by SIGKILL (nothing runs in the parent to stop
    it): seen here as orphaned ``VLLM::EngineCore``/``VLLM::Worker`` processes holding a core
    each after ``kill -9`` of a training run. The worker watches the owner's pid and whether the
    engine core is still the owner's child, and takes both down when either stops being true.
    """
    import multiprocessing

    if multiprocessing.current_process().name == "MainProcess":
        return  # imported by a program (maybe one started by an owner), not by vLLM's workers
    try:
        owner = int(os.environ.get(OWNER_PID_ENV, "0"))
    except ValueError:
        return
    if owner <= 1 or owner == os.getpid():
        return
    engine_core = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(owner, 0)
            except ProcessLookupError:
                break
            except PermissionError:
                pass
            if engine_core != owner and _parent_of(engine_core) not in (owner, None):
                break  # the engine core was re-parented: its owner died (maybe a zombie still)
        if engine_core not in (0, 1, owner):
            try:
                os.kill(engine_core, signal.SIGKILL)
            except OSError:
                pass
        os._exit(1)

    threading.Thread(target=watch, name="forge-env-owner-watch", daemon=True).start()


_watch_owner()


class ForgeWorkerExtension:
    """Weight reload that also refreshes a tied output head.

    vLLM's ``reload_weights`` reloads the embedding, but on the CPU backend the output head
    multiplies with a packed copy of the weight made when the model was first loaded; with
    tied embeddings the head itself loads nothing, so that copy would keep the old weights
    (measured on the tiny model: logprob errors of several nats after an update). Processing
    the head again repacks it from the shared, reloaded weight; on GPUs it is a no-op.
    """

    def forge_reload_weights(self, weights_path: str) -> None:
        from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

        worker: Any = self
        worker.reload_weights(weights_path=weights_path)
        text_config = worker.vllm_config.model_config.hf_text_config
        if not getattr(text_config, "tie_word_embeddings", False):
            return  # an untied head is reloaded (and repacked) like any other layer
        head: Any = getattr(worker.model_runner.get_model(), "lm_head", None)
        method = getattr(head, "quant_method", None)
        # Only the plain (unquantized) head: quantized methods may not be re-runnable.
        if isinstance(method, UnquantizedEmbeddingMethod) and not head.weight.is_meta:
            method.process_weights_after_loading(head)
