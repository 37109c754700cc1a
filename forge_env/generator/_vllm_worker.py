"""Methods mixed into vLLM's worker (``worker_extension_cls``), called by ``collective_rpc``.

This module is imported inside vLLM's worker process; it imports vLLM only when called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ForgeWorkerExtension"]


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
