"""Models for the policy: the locally built tiny model, SmolLM2 offline, or any HF folder.

>>> from forge_env.models import MODEL_ALIASES
>>> sorted(MODEL_ALIASES)
['smollm2-135m', 'tiny', 'tiny-llama']
"""

from __future__ import annotations

from forge_env.models._resolve import MODEL_ALIASES, cache_dir, resolve_model
from forge_env.models._smollm2 import export_smollm2, smollm2_gguf_path
from forge_env.models._tiny import CHATML_TEMPLATE, TinyModelConfig, build_tiny_model

__all__ = [
    "CHATML_TEMPLATE",
    "MODEL_ALIASES",
    "TinyModelConfig",
    "build_tiny_model",
    "cache_dir",
    "export_smollm2",
    "load_tokenizer",
    "resolve_model",
    "smollm2_gguf_path",
]


def load_tokenizer(model: str) -> "object":
    """The HF tokenizer of a model name or folder (see :func:`resolve_model`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(model))
