"""Hugging Face folder <-> torchtitan model: build from ``config.json``, load with ``from_hf``,
export with ``to_hf``.

The learner trains torchtitan's own decoder definitions (``Qwen3Model``, ``Llama3Model``); the
generator, transformers and vLLM speak Hugging Face names. This module is the bridge:

- :func:`read_hf_shape` reads an HF ``config.json`` into a :class:`HFShape` and rejects what
  torchtitan's dense Qwen3 / Llama3 blocks cannot express (biases, sliding windows, YaRN, ...);
- :class:`TitanModel` builds the matching torchtitan model on a device, loads the folder's
  safetensors through the family's state-dict adapter (``from_hf``), and exports with
  ``to_hf``: :meth:`TitanModel.hf_named_tensors` for ``Generator.update_weights`` and
  :meth:`TitanModel.save_hf` for a folder that transformers and vLLM load.

Why the settings below (facts of torchtitan 0.3.0):

- Attention is ``ScaledDotProductAttention`` (causal). torchtitan's ``get_attention_config``
  refuses "sdpa" for language models because its dataloaders pack documents; we never pack
  (one sequence per row, right padding), so a plain causal mask is exact, and FlexAttention
  has no backward on CPU.
- Tied embeddings: ``Decoder.__init__`` ties ``tok_embeddings.weight`` to ``lm_head.weight``,
  but ``to_empty()`` after a meta-device build gives each module its own parameter again;
  ``init_states()`` re-ties them (and fills the RoPE caches), so it runs before loading.
  ``from_hf`` copies ``embed_tokens`` into ``lm_head`` when the checkpoint has no head;
  ``to_hf`` drops the head again, so a tied checkpoint round-trips exactly.
- ``fuse_qkv=False``: torchtitan's ``FusedQKVLinear`` shows ``wq``/``wk``/``wv`` only via
  state-dict hooks; ``torch.distributed.checkpoint.state_dict.get_state_dict`` resolves names
  with ``getattr`` and fails on them ("'FusedQKVLinear' object has no attribute 'wq'").
- Every ``param_init`` is ``skip_param_init``: weights come from the checkpoint, so random
  initialisation would be wasted time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from torchtitan.protocols.state_dict_adapter import BaseStateDictAdapter

__all__ = ["Family", "HFShape", "TitanModel", "read_hf_shape"]


Family = Literal["qwen3", "llama3"]

#: HF ``model_type`` -> torchtitan model family.
_FAMILIES: dict[str, Family] = {"qwen3": "qwen3", "llama": "llama3"}

#: Files of an HF folder that hold weights: never copied by :meth:`TitanModel.save_hf`.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HFShape:
    """The architecture of an HF causal LM, as torchtitan's decoder needs it.

    >>> shape = HFShape(family="qwen3", vocab_size=1024, dim=256, n_layers=4, n_heads=4,
    ...                 n_kv_heads=2, head_dim=64, ffn_hidden_dim=512, max_seq_len=2048)
    >>> shape.qk_norm, shape.tie_word_embeddings
    (True, True)
    """

    family: Family
    """torchtitan family: ``qwen3`` (qk-norm, cos/sin RoPE) or ``llama3`` (complex RoPE)."""
    vocab_size: int
    dim: int
    """``hidden_size``."""
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_hidden_dim: int
    """``intermediate_size`` of the SwiGLU MLP."""
    max_seq_len: int
    """Length of the RoPE cache: ``max_position_embeddings`` (or the learner's override)."""
    rope_theta: float = 10000.0
    rope_scaling: dict[str, float] | None = None
    """Llama-3 frequency scaling (``factor``, ``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``); None = plain RoPE."""
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = True

    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises q and k per head before RoPE; Llama does not."""
        return self.family == "qwen3"


def read_hf_shape(path: str | os.PathLike[str], *, max_seq_len: int | None = None) -> HFShape:
    """Read ``config.json`` of an HF folder (or the path of a config.json) into an :class:`HFShape`.

    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "config.json").write_text(json.dumps({"model_type": "llama",
    ...     "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...     "intermediate_size": 128, "max_position_embeddings": 256, "rope_theta": 500000.0}))
    >>> shape = read_hf_shape(folder)
    >>> shape.family, shape.n_kv_heads, shape.head_dim, shape.rope_theta, shape.tie_word_embeddings
    ('llama3', 4, 16, 500000.0, False)

    Raises:
        FileNotFoundError: no config.json.
        ValueError: an architecture or option torchtitan's dense Qwen3/Llama3 decoder cannot
            express; the message names the field.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: the learner needs an HF model folder with a config.json"
        )
    raw = json.loads(file.read_text())
    cfg: dict[str, Any] = raw.get("text_config") or raw
    model_type = cfg.get("model_type") or raw.get("model_type")
    family = _FAMILIES.get(str(model_type))
    if family is None:
        raise ValueError(
            f"{file}: model_type {model_type!r} is not supported by the learner; it trains "
            f"torchtitan's dense decoders for model types {sorted(_FAMILIES)} (Qwen3 and Llama families)"
        )

    def unsupported(what: str) -> ValueError:
        return ValueError(f"{file}: {what} is not supported by torchtitan's {family} decoder")

    if cfg.get("hidden_act", "silu") != "silu":
        raise unsupported(f"hidden_act={cfg['hidden_act']!r} (only the SwiGLU 'silu' MLP)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise unsupported("attention_bias/mlp_bias=true (its projections have no biases)")
    if cfg.get("use_sliding_window") or any(t != "full_attention" for t in cfg.get("layer_types") or []):
        raise unsupported("sliding-window attention")
    if family == "qwen3" and cfg.get("num_experts"):
        raise unsupported("a mixture-of-experts config")

    n_heads = int(cfg["num_attention_heads"])
    dim = int(cfg["hidden_size"])
    # transformers >= 5 keeps RoPE settings in ``rope_parameters``; older configs use
    # ``rope_theta`` + ``rope_scaling``.
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    scaling: dict[str, float] | None = None
    if rope_type == "llama3":
        if family != "llama3":
            raise unsupported("Llama-3 RoPE scaling (torchtitan's cos/sin RoPE has none)")
        scaling = {
            "factor": float(rope["factor"]),
            "low_freq_factor": float(rope.get("low_freq_factor", 1.0)),
            "high_freq_factor": float(rope.get("high_freq_factor", 4.0)),
            "original_max_position_embeddings": float(rope.get("original_max_position_embeddings", 8192)),
        }
    elif rope_type != "default":
        raise unsupported(f"rope_type={rope_type!r} (supported: 'default', and 'llama3' for Llama)")
    positions = int(cfg.get("max_position_embeddings") or 4096)
    if max_seq_len is not None and max_seq_len < 2:
        raise ValueError(f"max_seq_len must be >= 2, got {max_seq_len}")
    tie = cfg.get("tie_word_embeddings", raw.get("tie_word_embeddings", False))
    return HFShape(
        family=family,
        vocab_size=int(cfg["vocab_size"]),
        dim=dim,
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=int(cfg.get("head_dim") or dim // n_heads),
        ffn_hidden_dim=int(cfg["intermediate_size"]),
        max_seq_len=max_seq_len or positions,
        rope_theta=rope_theta,
        rope_scaling=scaling,
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(tie),
    )


def _titan_config(shape: HFShape) -> Any:
    """The torchtitan model config (``Qwen3Model.Config`` / ``Llama3Model.Config``) of ``shape``."""
    from torchtitan.models.common import ComplexRoPE, CosSinRoPE, Embedding, Linear, RMSNorm
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.models.common.config_utils import make_ffn_config, make_gqa_config
    from torchtitan.models.common.param_init import skip_param_init

    skip = {"weight": skip_param_init, "bias": skip_param_init}

    def norm(size: int) -> Any:
        return RMSNorm.Config(normalized_shape=size, eps=shape.norm_eps, param_init=skip)

    rope: Any
    if shape.family == "qwen3":
        from torchtitan.models.qwen3 import Qwen3Model
        from torchtitan.models.qwen3.model import Qwen3TransformerBlock

        model_cls, block_cls = Qwen3Model, Qwen3TransformerBlock
        # HF Qwen3 rotates halves (rotate_half): torchtitan's cos/sin RoPE, no weight permutation.
        rope = CosSinRoPE.Config(dim=shape.head_dim, max_seq_len=shape.max_seq_len, theta=shape.rope_theta)
    else:
        from torchtitan.models.llama3 import Llama3Model
        from torchtitan.models.llama3.model import Llama3TransformerBlock

        model_cls, block_cls = Llama3Model, Llama3TransformerBlock
        # torchtitan's Llama uses interleaved complex RoPE; its adapter permutes q/k to match HF.
        extra: dict[str, Any] = {}
        if shape.rope_scaling is not None:
            s = shape.rope_scaling
            extra = dict(scaling="llama", scaling_factor=s["factor"], low_freq_factor=s["low_freq_factor"],
                         high_freq_factor=s["high_freq_factor"],
                         original_max_position_embeddings=int(s["original_max_position_embeddings"]))
        rope = ComplexRoPE.Config(dim=shape.head_dim, max_seq_len=shape.max_seq_len, theta=shape.rope_theta,
                                  **extra)
    layers = [
        block_cls.Config(
            attention_norm=norm(shape.dim),
            ffn_norm=norm(shape.dim),
            attention=make_gqa_config(
                dim=shape.dim,
                n_heads=shape.n_heads,
                n_kv_heads=shape.n_kv_heads,
                head_dim=shape.head_dim,
                wqkv_param_init=skip,
                wo_param_init=skip,
                inner_attention=ScaledDotProductAttention.Config(),
                # Separate wq/wk/wv: the fused variant exposes them only through state-dict
                # hooks, which torch.distributed.checkpoint's get/set_state_dict cannot resolve.
                fuse_qkv=False,
                rope=rope,
                qk_norm=norm(shape.head_dim) if shape.qk_norm else None,
            ),
            feed_forward=make_ffn_config(
                dim=shape.dim, hidden_dim=shape.ffn_hidden_dim, w1_param_init=skip, w2w3_param_init=skip
            ),
        )
        for _ in range(shape.n_layers)
    ]
    return model_cls.Config(
        dim=shape.dim,
        vocab_size=shape.vocab_size,
        norm=norm(shape.dim),
        enable_weight_tying=shape.tie_word_embeddings,
        tok_embeddings=Embedding.Config(
            num_embeddings=shape.vocab_size, embedding_dim=shape.dim, param_init=skip
        ),
        lm_head=Linear.Config(in_features=shape.dim, out_features=shape.vocab_size, param_init=skip),
        layers=layers,
    )


def _adapter(shape: HFShape, titan_config: Any) -> BaseStateDictAdapter:
    if shape.family == "qwen3":
        from torchtitan.models.qwen3.state_dict_adapter import Qwen3StateDictAdapter

        return Qwen3StateDictAdapter(titan_config, None)
    from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter

    return Llama3StateDictAdapter(titan_config, None)


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{folder} has no *.safetensors weights: the learner loads HF safetensors folders"
        )
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor (FSDP shard) is gathered; every rank must call this."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


class TitanModel:
    """A torchtitan decoder built from an HF folder, with its state-dict adapter.

    Example::

        tm = TitanModel(resolve_model("tiny"), device="cpu")
        logits = tm.model(torch.tensor([[1, 2, 3]]))          # [1, 3, vocab]
        await generator.update_weights(tm.hf_named_tensors(), version=1)
        tm.save_hf("/tmp/trained")                             # transformers / vLLM load it

    Args:
        path: an HF folder (config.json + safetensors; tokenizer files are carried along
            by :meth:`save_hf`).
        device: where the parameters live.
        max_seq_len: RoPE cache length; None = the config's ``max_position_embeddings``.
        load_weights: load the folder's safetensors (False leaves the weights uninitialised:
            for a caller that loads a state dict next).

    Attributes:
        model: the torchtitan ``Qwen3Model`` / ``Llama3Model`` (fp32 parameters).
        shape: the architecture read from config.json.
        source: the HF folder it was built from.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        max_seq_len: int | None = None,
        load_weights: bool = True,
    ) -> None:
        self.source = Path(path).expanduser()
        self.shape = read_hf_shape(self.source, max_seq_len=max_seq_len)
        self.device = torch.device(device)
        self.titan_config = _titan_config(self.shape)
        self.adapter = _adapter(self.shape, self.titan_config)
        with torch.device("meta"):
            model = self.titan_config.build()
        model.to_empty(device=self.device)
        # Re-ties tok_embeddings/lm_head (to_empty untied them) and computes the RoPE caches;
        # the parameters themselves are skipped (param_init = skip) and loaded below.
        model.init_states(buffer_device=self.device)
        self.model: nn.Module = model
        if load_weights:
            self.load_hf_state_dict(_read_safetensors(self.source))

    @property
    def family(self) -> Family:
        return self.shape.family

    def load_hf_state_dict(self, hf_state_dict: dict[str, torch.Tensor]) -> None:
        """Load HF-named tensors (a full set) through the adapter's ``from_hf``.

        Raises:
            ValueError: names missing or unknown, listed with the fix.
        """
        try:
            titan_sd = self.adapter.from_hf(dict(hf_state_dict))
        except KeyError as e:
            raise ValueError(
                f"{self.source}: tensor {e.args[0]!r} has no torchtitan counterpart in the {self.family} "
                "adapter; is config.json's architecture the one the weights were saved from?"
            ) from e
        with torch.no_grad():
            result = self.model.load_state_dict(titan_sd, strict=False)
        # A tied model lists lm_head and tok_embeddings: one parameter, both loaded via lm_head.
        missing = [k for k in result.missing_keys if not (self.shape.tie_word_embeddings and
                                                          k in ("tok_embeddings.weight", "lm_head.weight"))]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{self.source}: the checkpoint does not match config.json: missing {missing[:5]}, "
                f"unexpected {list(result.unexpected_keys)[:5]}"
            )

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight under its HF name (``to_hf``), full tensors on the model's device.

        Values may share storage with the live parameters (they change with training):
        :meth:`hf_named_tensors` returns a snapshot. Collective under FSDP: every rank calls it.
        """
        titan_sd = {k: _full(v).detach() for k, v in self.model.state_dict().items()}
        return self.adapter.to_hf(titan_sd)

    def hf_named_tensors(
        self, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> list[tuple[str, torch.Tensor]]:
        """``(hf_name, tensor)`` pairs for ``Generator.update_weights``: a snapshot (copies),
        in ``dtype`` (None: fp32 as trained) on ``device`` (None: the model's)."""
        out = []
        for name, tensor in self.hf_state_dict().items():
            copy = tensor.to(device=device or tensor.device, dtype=dtype or tensor.dtype, copy=True)
            out.append((name, copy.contiguous()))
        return out

    def save_hf(self, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> Path:
        """Write an HF folder: ``model.safetensors`` (``to_hf``), the source's ``config.json``
        and every other non-weight file of the source (tokenizer, chat template,
        generation config). Returns the folder.

        Collective under FSDP: every rank calls it, rank 0 writes.
        """
        from safetensors.torch import save_file

        target = Path(path).expanduser()
        if target.exists() and target.resolve() == self.source.resolve():
            raise ValueError(
                f"save_hf would overwrite the model it was built from ({target}): pick another folder"
            )
        tensors = {name: t.cpu() for name, t in self.hf_named_tensors(dtype=dtype)}
        if _rank() != 0:
            return target
        target.mkdir(parents=True, exist_ok=True)
        for item in self.source.iterdir():
            is_weights = item.name.endswith(_WEIGHT_SUFFIXES) or item.name in _WEIGHT_INDEXES
            if item.is_file() and not is_weights:
                shutil.copy2(item, target / item.name)
        for stale in target.glob("*.safetensors"):
            stale.unlink()
        for index in _WEIGHT_INDEXES:
            (target / index).unlink(missing_ok=True)
        save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
        if dtype is not None:
            config = json.loads((target / "config.json").read_text())
            name = str(dtype).removeprefix("torch.")
            config["torch_dtype" if "torch_dtype" in config else "dtype"] = name
            (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return target

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.model.named_parameters()

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding counts once; a DTensor counts its global size)."""
        return sum(p.numel() for p in self.model.parameters())


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
