"""A tiny chat model built locally: our own tokenizer, a Qwen3 or Llama config, random weights.

It is the default model of tests and CPU runs: no hub access needed, loads in vLLM,
transformers and torchtitan, and is small enough (~2.6M parameters) to train on two cores.
Its weights are random until trained (``apps.sft`` warm-starts it from demonstrations).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from forge_env.models._corpus import default_corpus

__all__ = ["CHATML_TEMPLATE", "TinyModelConfig", "build_tiny_model"]

#: Special tokens of the tiny tokenizer (ChatML, as Qwen and SmolLM2 use).
BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

#: ChatML with Hermes-style tools, written for the tiny model. ``tools`` (JSON schemas)
#: go into the system turn; a ``tool`` message renders as a user turn with
#: ``<tool_response>``, as Qwen's template does.
CHATML_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages and messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n\nYou may call one of these tools:\n<tools>\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n\n"
    "To call a tool, answer with:\n<tool_call>\n"
    '{"name": <tool-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{% elif messages and messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' and loop.first %}"
    "{% elif message.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TinyModelConfig:
    """Shape of the tiny model. The defaults give ~2.6M parameters.

    >>> TinyModelConfig().head_dim
    64
    """

    architecture: Literal["qwen3", "llama"] = "qwen3"
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    seed: int = 0
    """Seeds the weight initialisation (and nothing else: the tokenizer is deterministic)."""

    def __post_init__(self) -> None:
        if self.architecture not in ("qwen3", "llama"):
            raise ValueError(f"architecture must be 'qwen3' or 'llama', got {self.architecture!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.vocab_size < 300:
            raise ValueError("vocab_size must be at least 300 (256 bytes + special tokens)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def fingerprint(self) -> str:
        """Short hash naming the cached build (changes when the shape or recipe changes)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + _RECIPE_VERSION
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Bump when the tokenizer recipe, corpus or template changes: cached builds are then rebuilt.
_RECIPE_VERSION = "tiny-v1"


def build_tiny_model(
    path: str | os.PathLike[str],
    config: TinyModelConfig | None = None,
    *,
    corpus: Iterable[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Build the tiny model as an HF folder at ``path`` and return it.

    The folder holds ``config.json``, ``model.safetensors`` (fp32), ``tokenizer.json``,
    ``tokenizer_config.json`` (with the chat template) and ``generation_config.json``;
    ``transformers.AutoModelForCausalLM``, vLLM and torchtitan's ``from_hf`` all load it.
    The build is atomic (written beside ``path``, then renamed): an interrupted build
    leaves no half folder. An existing folder is kept unless ``overwrite``.

    Example::

        path = build_tiny_model("/tmp/tiny")
        # vllm.LLM(str(path)) / AutoModelForCausalLM.from_pretrained(path)
    """
    config = config or TinyModelConfig()
    target = Path(path)
    if target.exists() and not overwrite:
        if (target / "config.json").exists():
            return target
        raise FileExistsError(f"{target} exists and is not a model folder; pass overwrite=True")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = _train_tokenizer(config, corpus if corpus is not None else default_corpus())
        tokenizer.save_pretrained(staging)
        _write_model(staging, config, tokenizer)
        (staging / "forge_env_tiny.json").write_text(
            json.dumps({"recipe": _RECIPE_VERSION, **dataclasses.asdict(config)}, indent=2)
        )
        if target.exists() and overwrite:
            shutil.rmtree(target)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _publish(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; if another process published first, keep theirs."""
    try:
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _train_tokenizer(config: TinyModelConfig, corpus: Iterable[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, *TOOL_TOKENS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(specials[1:2]),
        model_max_length=config.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _write_model(folder: Path, config: TinyModelConfig, tokenizer: Any) -> None:
    import torch
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        torch_dtype="float32",
    )
    if config.architecture == "qwen3":
        hf_config: Any = transformers.Qwen3Config(head_dim=config.head_dim, **common)
        model_cls: Any = transformers.Qwen3ForCausalLM
    else:
        hf_config = transformers.LlamaConfig(head_dim=config.head_dim, **common)
        model_cls = transformers.LlamaForCausalLM
    with _seeded(config.seed):
        model = model_cls(hf_config).to(torch.float32)
    model.generation_config.eos_token_id = hf_config.eos_token_id
    model.generation_config.pad_token_id = hf_config.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)


class _seeded:
    """Seed torch's default generator for a block and restore its state afterwards."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        import torch

        self._state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.random.set_rng_state(self._state)
