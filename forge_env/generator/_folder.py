"""What both generators need to know about a Hugging Face model folder, read without torch.

The folder's ``config.json``, ``generation_config.json`` and the safetensors headers give
the EOS ids, the vocabulary size and the name and shape of every weight, so that a weight
update with a wrong name or shape is refused before an engine sees it.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge_env.generator._base import GeneratorError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ModelFolder", "check_prompt", "collect_weights", "read_model_folder"]

# A tied output projection shares the embedding matrix: checkpoints leave it out, while
# ``model.state_dict()`` lists it. It is accepted (and dropped) when the config ties them.
_TIED_HEAD = "lm_head.weight"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelFolder:
    """The facts of one HF model folder that the generators use."""

    path: Path
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    vocab_size: int
    max_position_embeddings: int | None
    tie_word_embeddings: bool
    weight_shapes: dict[str, tuple[int, ...]]
    """Every tensor of the checkpoint, by HF name, with its shape."""


def read_model_folder(path: str | Path, *, who: str) -> ModelFolder:
    """Read ``path`` (an HF folder with config.json and safetensors weights).

    Raises:
        GeneratorError: the folder, its config.json or its safetensors files are missing.
    """
    folder = Path(path).expanduser()
    hint = (
        f"{who}.model must be a local Hugging Face model folder (config.json + *.safetensors), "
        "e.g. one written by model.save_pretrained(path), or forge_env.models.resolve_model('tiny') / "
        "resolve_model('smollm2-135m')"
    )
    if not folder.is_dir():
        raise GeneratorError(f"model folder {str(folder)!r} does not exist; {hint}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise GeneratorError(f"{str(folder)!r} has no config.json; {hint}")
    config = json.loads(config_file.read_text())
    # Multimodal / nested configs keep the language model's fields in text_config.
    text = config.get("text_config") or config
    generation: dict[str, Any] = {}
    gen_file = folder / "generation_config.json"
    if gen_file.is_file():
        generation = json.loads(gen_file.read_text())
    eos: list[int] = []
    for source in (generation.get("eos_token_id"), text.get("eos_token_id"), config.get("eos_token_id")):
        for token in source if isinstance(source, list) else [source]:
            if isinstance(token, int) and token not in eos:
                eos.append(token)
    pad = generation.get("pad_token_id", text.get("pad_token_id", config.get("pad_token_id")))
    if not isinstance(pad, int):
        pad = eos[0] if eos else 0
    vocab_size = int(text.get("vocab_size") or config.get("vocab_size") or 0)
    shapes = _weight_shapes(folder)
    if not shapes:
        raise GeneratorError(f"{str(folder)!r} has no *.safetensors weights; {hint}")
    return ModelFolder(
        path=folder,
        eos_token_ids=tuple(eos),
        pad_token_id=pad,
        vocab_size=vocab_size,
        max_position_embeddings=text.get("max_position_embeddings"),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
        weight_shapes=shapes,
    )


def _weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every tensor in the folder's safetensors files (headers only)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        paths = [folder / name for name in files]
    else:
        paths = sorted(folder.glob("*.safetensors"))
    shapes: dict[str, tuple[int, ...]] = {}
    for file in paths:
        # The safetensors format: an 8-byte little-endian header length, then a JSON header
        # mapping each tensor name to its dtype, shape and byte offsets.
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                shapes[name] = tuple(info["shape"])
    return shapes


def check_prompt(prompt_ids: Sequence[int], *, max_model_len: int, vocab_size: int) -> list[int]:
    """The prompt as a list of ints, or a GeneratorError naming what is wrong with it."""
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise GeneratorError("the prompt is empty: pass at least one token id")
    if len(prompt) >= max_model_len:
        raise GeneratorError(
            f"the prompt has {len(prompt)} tokens but max_model_len is {max_model_len}: "
            f"a prompt must be shorter than max_model_len to leave room for at least one "
            f"sampled token (shorten the prompt or raise max_model_len)"
        )
    if vocab_size:
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise GeneratorError(
                f"the prompt has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}"
            )
    return prompt


def collect_weights(
    named_tensors: Iterable[tuple[str, "torch.Tensor"]] | Mapping[str, "torch.Tensor"], folder: ModelFolder
) -> dict[str, "torch.Tensor"]:
    """Check a full set of new weights against the checkpoint's names and shapes.

    Returns the tensors by name, without a tied ``lm_head.weight``.

    Raises:
        GeneratorError: a name is unknown or missing, or a shape differs; the message lists
            a few of each, and a few expected names.
    """
    items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in items:
        if name == _TIED_HEAD and folder.tie_word_embeddings and name not in folder.weight_shapes:
            continue
        tensors[name] = tensor
    expected = folder.weight_shapes
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    wrong_shape = [
        f"{name} {tuple(tensors[name].shape)} (expected {expected[name]})"
        for name in sorted(set(tensors) & set(expected))
        if tuple(tensors[name].shape) != expected[name]
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown names, e.g. {unknown[:3]}")
    if missing:
        problems.append(f"{len(missing)} missing names, e.g. {missing[:3]}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} wrong shapes, e.g. {wrong_shape[:3]}")
    if problems:
        raise GeneratorError(
            "update_weights needs every weight of the model under its Hugging Face name "
            f"({len(expected)} tensors, e.g. {sorted(expected)[:3]}): "
            + "; ".join(problems)
            + ". Convert the learner's state dict to HF names first (e.g. torchtitan's to_hf)."
        )
    return tensors
