"""Configs of the two generators. Importing this module imports neither torch nor vLLM."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, get_args

from forge_env.generator._base import InFlightPolicy

__all__ = ["TorchGeneratorConfig", "VLLMGeneratorConfig"]


def _check_common(who: str, model: str, max_model_len: int, in_flight: str) -> None:
    if not model:
        raise ValueError(f"{who}.model must name a Hugging Face model folder, got {model!r}")
    if max_model_len < 2:
        raise ValueError(f"{who}.max_model_len must be >= 2, got {max_model_len}")
    if in_flight not in get_args(InFlightPolicy):
        raise ValueError(f"{who}.in_flight must be 'finish' or 'abort', got {in_flight!r}")


@dataclasses.dataclass(kw_only=True, slots=True)
class VLLMGeneratorConfig:
    """How to run :class:`~forge_env.generator.VLLMGenerator` (vLLM's ``AsyncLLM``).

    Defaults fit the tiny model on a CPU; ``None`` fields are chosen by platform.

    >>> VLLMGeneratorConfig(model="/models/tiny").max_model_len
    2048
    """

    model: str
    """Local Hugging Face model folder (config.json, tokenizer, *.safetensors)."""
    max_model_len: int = 2048
    """Longest prompt + completion, in tokens."""
    kv_cache_bytes: int | None = 256 << 20
    """KV cache size in bytes (vLLM's ``kv_cache_memory_bytes``); None = vLLM's own sizing
    (``gpu_memory_utilization`` on GPUs)."""
    dtype: str | None = None
    """Weight/activation dtype; None = ``float32`` on CPU (bf16 is slower on CPUs without
    AVX-512) and ``auto`` (the checkpoint's dtype) on GPUs."""
    in_flight: InFlightPolicy = "finish"
    """What ``update_weights`` does to requests already generating; see :data:`InFlightPolicy`."""
    seed: int = 0
    """Seed of the engine's sampling stream (requests without their own seed)."""
    enforce_eager: bool | None = None
    """No CUDA graphs / torch.compile; None = True on CPU, False on GPUs."""
    gpu_memory_utilization: float | None = None
    """GPUs only: fraction of GPU memory for weights + KV cache; None = vLLM's default.
    Set ``kv_cache_bytes=None`` for it to size the KV cache."""
    engine_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra ``vllm.AsyncEngineArgs`` fields (e.g. ``max_num_seqs``); they override ours."""
    weights_dir: str | None = None
    """Parent of the fresh folder where ``update_weights`` writes the new safetensors for the
    engine to load (the folder is removed on close); None = /dev/shm (memory) when it
    exists, else the system temp dir. Needs room for one fp32 copy of the weights."""
    log_level: str = "WARNING"
    """vLLM's log level (``VLLM_LOGGING_LEVEL``, set only if the environment has none)."""

    def __post_init__(self) -> None:
        self.model = os.fspath(self.model)
        _check_common("VLLMGeneratorConfig", self.model, self.max_model_len, self.in_flight)
        if self.kv_cache_bytes is not None and self.kv_cache_bytes <= 0:
            raise ValueError(f"kv_cache_bytes must be > 0 or None, got {self.kv_cache_bytes}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )


@dataclasses.dataclass(kw_only=True, slots=True)
class TorchGeneratorConfig:
    """How to run :class:`~forge_env.generator.TorchGenerator` (plain torch + transformers).

    >>> TorchGeneratorConfig(model="/models/tiny", max_batch_size=8).in_flight
    'finish'
    """

    model: str
    """Local Hugging Face model folder (config.json, *.safetensors)."""
    max_model_len: int = 2048
    """Longest prompt + completion, in tokens (at most the model's max_position_embeddings)."""
    dtype: str = "float32"
    """torch dtype name of the weights and activations."""
    device: str | None = None
    """torch device; None = ``cuda`` when available, else ``cpu``."""
    max_batch_size: int = 32
    """Most requests sampled together in one batch."""
    batch_wait_s: float = 0.005
    """How long the batcher waits for more requests to arrive before it starts a batch."""
    in_flight: InFlightPolicy = "finish"
    """``finish``: an update waits for the running batch; ``abort``: the running batch stops at
    its next step and its requests are sampled again from the start on the new weights."""
    seed: int = 0
    """Seed of the generator's sampling stream (requests without their own seed)."""

    def __post_init__(self) -> None:
        self.model = os.fspath(self.model)
        _check_common("TorchGeneratorConfig", self.model, self.max_model_len, self.in_flight)
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_wait_s < 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {self.batch_wait_s}")
