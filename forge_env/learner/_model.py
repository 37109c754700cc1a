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
  documents side by side (one sequence per row, right padding), so a plain causal mask is
  exact, and FlexAttention has no backward on CPU. A subclass adds one thing: given a
  :class:`TreeMask` (``attention_masks=``) it attends along a prefix tree, which
  :func:`pack_sequences` builds so that sequences sharing a prefix (a GRPO group's prompt)
  compute it once; without a mask it is torchtitan's causal SDPA, unchanged.
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

import contextlib
import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from torchtitan.protocols.state_dict_adapter import BaseStateDictAdapter

__all__ = ["Family", "HFShape", "PackedSequences", "TitanModel", "TreeMask", "pack_sequences", "read_hf_shape",
           "select_output_rows"]


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
                # torchtitan's causal SDPA, plus the prefix-tree mask of packed batches.
                inner_attention=_tree_attention_class().Config(),
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


# --- prefix-tree packing ------------------------------------------------------------------------
#
# A GRPO batch is groups of episodes of one task: every episode of a group starts with the same
# prompt, and multi-turn episodes often share their first turns too. Under causal attention the
# hidden state at position t depends only on tokens[:t + 1], so two sequences with a common
# prefix have identical hidden states along it. Packing the batch as a prefix tree (a radix
# tree: each segment is a run of tokens shared by the same sequences) computes each distinct
# prefix once: the token-wise layers (projections, MLP, norms: almost all of the compute) run
# on the tree's nodes, one flat row without padding, and attention lets each node see exactly
# its ancestors (the sequence before it), at its position in the sequence (RoPE). Gradients of
# a shared node are the sum over the sequences through it, as in the unpacked batch.

# Attention rows are grouped into buckets of similar shape; a bucket computes its padded
# [rows, width, keys] block. A bucket may grow while its padded area stays under this factor of
# the real one (plus _BUCKET_FREE query-key pairs, so that small segments share a call).
_BUCKET_SLACK = 1.5
_BUCKET_FREE = 8192


@dataclasses.dataclass(frozen=True, eq=False)
class _TreeBucket:
    """Attention for a set of tree segments, padded to one shape (n rows)."""

    queries: torch.Tensor
    """[n, W] flat node ids of each segment's own tokens (padding: 0)."""
    keys: torch.Tensor
    """[n, K] flat node ids of the segment's ancestors (in sequence order), then its own tokens."""
    mask: torch.Tensor
    """[n, 1, W, K] bool: every ancestor, and own tokens up to the query (causal)."""
    valid: torch.Tensor | None
    """Indices of the real queries in the [n * W] rows (None: no padding); they are the
    bucket's nodes in flat order."""


@dataclasses.dataclass(frozen=True, eq=False)
class TreeMask:
    """Who attends to whom in a :class:`PackedSequences` row: pass it as ``attention_masks``.

    Built by :func:`pack_sequences`; the learner's attention modules read it.

    >>> packed = pack_sequences([[1, 2, 3], [1, 2, 4]])
    >>> isinstance(packed.tree, TreeMask), len(packed.tree.buckets) >= 1
    (True, True)
    """

    buckets: tuple[_TreeBucket, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class PackedSequences:
    """Token sequences packed as a prefix tree: each distinct prefix appears once.

    ``model(tokens, positions=positions, attention_masks=tree)`` runs the whole batch as one
    row of :attr:`num_tokens` nodes; node ``node_ids(i, [t])[0]`` holds the hidden state of
    sequence ``i`` at position ``t`` (what predicts its token ``t + 1``).

    >>> packed = pack_sequences([[5, 6, 7, 8], [5, 6, 9], [5, 6, 7, 8]])
    >>> packed.num_tokens                      # 5 6 shared, then 7 8 (twice) and 9
    5
    >>> packed.node_ids(0, [0, 1, 3]) == packed.node_ids(2, [0, 1, 3])
    True
    >>> packed.tokens[0, packed.node_ids(1, [2])].tolist(), packed.positions[0, packed.node_ids(1, [2])].tolist()
    ([9], [2])
    """

    tokens: torch.Tensor
    """[1, N] token id of each node."""
    positions: torch.Tensor
    """[1, N] position of each node in its sequences (RoPE)."""
    tree: TreeMask
    """The attention pattern (``attention_masks=``)."""
    paths: tuple[tuple[tuple[int, int, int], ...], ...]
    """Per sequence, its segments from the root: ``(first position, length, first node id)``."""

    @property
    def num_tokens(self) -> int:
        """Nodes of the tree: the positions the model runs on."""
        return int(self.tokens.shape[1])

    def node_ids(self, index: int, positions: Sequence[int]) -> list[int]:
        """Flat node ids of sequence ``index`` at ``positions`` (ascending)."""
        out: list[int] = []
        path = self.paths[index]
        seg = 0
        for t in positions:
            while t >= path[seg][0] + path[seg][1]:
                seg += 1
            start, _, base = path[seg]
            out.append(base + t - start)
        return out


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pack_sequences(
    sequences: Sequence[Sequence[int]], *, device: str | torch.device = "cpu"
) -> PackedSequences:
    """Pack token sequences as a prefix tree (see :class:`PackedSequences`).

    Deterministic: the same sequences (in any order) give the same tree, nodes and buckets.

    >>> pack_sequences([[1, 2, 3], [1, 2, 4], [7]]).num_tokens
    5

    Raises:
        ValueError: a sequence is empty.
    """
    seqs = [list(s) for s in sequences]
    if any(not s for s in seqs):
        raise ValueError("pack_sequences needs non-empty sequences")
    n = len(seqs)
    order = sorted(range(n), key=lambda i: (seqs[i], i))
    adjacent = [_lcp(seqs[order[k]], seqs[order[k + 1]]) for k in range(n - 1)]

    # Segments of the radix tree: (start position, tokens, parent segment or -1), parents first.
    seg_start: list[int] = []
    seg_tokens: list[list[int]] = []
    seg_parent: list[int] = []
    end_segment = [-1] * n
    # Ranges [lo, hi) of ``order`` that share their first ``depth`` tokens, under ``parent``.
    stack = [(0, n, 0, -1)] if n else []
    while stack:
        lo, hi, depth, parent = stack.pop()
        first = seqs[order[lo]]
        shared = len(first) if hi - lo == 1 else min(adjacent[lo:hi - 1])
        seg = parent
        if shared > depth:
            seg = len(seg_start)
            seg_start.append(depth)
            seg_tokens.append(first[depth:shared])
            seg_parent.append(parent)
        i = lo
        while i < hi and len(seqs[order[i]]) == shared:  # prefixes sort first: they end here
            end_segment[order[i]] = seg
            i += 1
        children = []
        while i < hi:
            j = i + 1
            while j < hi and adjacent[j - 1] > shared:  # same token at position `shared`
                j += 1
            children.append((i, j, shared, seg))
            i = j
        stack.extend(reversed(children))

    # Buckets of similar (width, keys) shape; nodes are numbered bucket by bucket, so the
    # attention outputs concatenated in bucket order are already in node order.
    widths = [len(t) for t in seg_tokens]
    keys_n = [s + w for s, w in zip(seg_start, widths)]
    by_shape = sorted(range(len(widths)), key=lambda s: (-widths[s], -keys_n[s], s))
    groups: list[list[int]] = []
    current: list[int] = []
    w_max = k_max = area = 0
    for s in by_shape:
        w, k = widths[s], keys_n[s]
        new_w, new_k = max(w_max, w), max(k_max, k)
        if current and (len(current) + 1) * new_w * new_k > _BUCKET_SLACK * (area + w * k) + _BUCKET_FREE:
            groups.append(current)
            current, new_w, new_k, area = [], w, k, 0
        current.append(s)
        w_max, k_max, area = new_w, new_k, area + w * k
    if current:
        groups.append(current)
    base = [0] * len(widths)
    next_id = 0
    for group in groups:
        for s in group:
            base[s] = next_id
            next_id += widths[s]
    # Key lists: the parent's keys, then the segment's own nodes (segments come parents first).
    seg_keys: list[list[int]] = []
    for s in range(len(widths)):
        own = list(range(base[s], base[s] + widths[s]))
        seg_keys.append((seg_keys[seg_parent[s]] if seg_parent[s] >= 0 else []) + own)

    tokens = [0] * next_id
    positions = [0] * next_id
    for s in range(len(widths)):
        tokens[base[s]:base[s] + widths[s]] = seg_tokens[s]
        positions[base[s]:base[s] + widths[s]] = range(seg_start[s], seg_start[s] + widths[s])
    dev = torch.device(device)
    buckets = []
    for group in groups:
        w_max = max(widths[s] for s in group)
        k_max = max(keys_n[s] for s in group)
        queries = torch.tensor([list(range(base[s], base[s] + widths[s])) + [0] * (w_max - widths[s])
                                for s in group], dtype=torch.long)
        keys = torch.tensor([seg_keys[s] + [0] * (k_max - keys_n[s]) for s in group], dtype=torch.long)
        # Query i of a segment starting at position A sees keys 0 .. A + i (its ancestors, then
        # its own tokens causally); padded queries see all of the segment's keys, never an
        # empty row (NaN).
        ancestors = torch.tensor([seg_start[s] for s in group], dtype=torch.int32).view(-1, 1)
        last = torch.tensor([widths[s] - 1 for s in group], dtype=torch.int32).view(-1, 1)
        limit = ancestors + torch.minimum(torch.arange(w_max, dtype=torch.int32).view(1, -1), last)
        mask = torch.arange(k_max, dtype=torch.int32).view(1, 1, -1) <= limit.unsqueeze(-1)
        valid = None
        if any(widths[s] != w_max for s in group):
            valid = torch.tensor([r * w_max + i for r, s in enumerate(group) for i in range(widths[s])],
                                 dtype=torch.long, device=dev)
        buckets.append(_TreeBucket(queries=queries.to(dev), keys=keys.to(dev), mask=mask.unsqueeze(1).to(dev),
                                   valid=valid))

    paths = []
    for i in range(n):
        chain = []
        s = end_segment[i]
        while s >= 0:
            chain.append((seg_start[s], widths[s], base[s]))
            s = seg_parent[s]
        paths.append(tuple(reversed(chain)))
    return PackedSequences(
        tokens=torch.tensor([tokens], dtype=torch.long, device=dev),
        positions=torch.tensor([positions], dtype=torch.long, device=dev),
        tree=TreeMask(buckets=tuple(buckets)),
        paths=tuple(paths),
    )


def _tree_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tree: TreeMask, *, scale: float | None, enable_gqa: bool
) -> torch.Tensor:
    """Attention along the prefix tree: [1, N, H, D] queries, [1, N, Hkv, D] keys/values."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # Fused kernels that take an explicit mask: flash on CPU, memory-efficient on CUDA.
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    q0, k0, v0 = q[0], k[0], v[0]

    def rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # index_select, not x[index]: its backward (index_add) is ~8x faster on CPU than
        # advanced indexing's (index_put with accumulate).
        return x.index_select(0, index.flatten()).unflatten(0, index.shape).transpose(1, 2)

    outs = []
    for bucket in tree.buckets:
        qb = rows(q0, bucket.queries)                               # [n, H, W, D]
        kb = rows(k0, bucket.keys)                                  # [n, Hkv, K, D]
        vb = rows(v0, bucket.keys)
        with sdpa_kernel(backends, set_priority=True):
            ob = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bucket.mask, scale=scale,
                                                enable_gqa=enable_gqa)
        ob = ob.transpose(1, 2).flatten(0, 1)                       # [n * W, H, D]
        outs.append(ob if bucket.valid is None else ob.index_select(0, bucket.valid))
    return torch.cat(outs).unsqueeze(0)                              # [1, N, H, D]


@functools.cache
def _tree_attention_class() -> Any:
    """torchtitan's ``ScaledDotProductAttention`` that also takes a :class:`TreeMask` (built
    on first use: torchtitan is imported lazily)."""
    from torchtitan.models.common.attention import ScaledDotProductAttention

    class TreeAttention(ScaledDotProductAttention):
        """Causal SDPA (torchtitan's, unchanged), or prefix-tree attention given a TreeMask."""

        @dataclasses.dataclass(kw_only=True, slots=True)
        class Config(ScaledDotProductAttention.Config):
            pass

        def forward(self, q_BLNH: torch.Tensor, k_BLNH: torch.Tensor, v_BLNH: torch.Tensor, *,
                    attention_masks: Any = None, scale: float | None = None, enable_gqa: bool = False,
                    is_causal: bool = True, **kwargs: Any) -> torch.Tensor:
            if isinstance(attention_masks, TreeMask):
                return _tree_attention(q_BLNH, k_BLNH, v_BLNH, attention_masks, scale=scale,
                                       enable_gqa=enable_gqa)
            return super().forward(q_BLNH, k_BLNH, v_BLNH, attention_masks=attention_masks, scale=scale,
                                   enable_gqa=enable_gqa, is_causal=is_causal, **kwargs)

    return TreeAttention


@contextlib.contextmanager
def select_output_rows(model: nn.Module, rows: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model(...)`` applies its output head only to the hidden states at
    flat indices ``rows`` of ``[B * L]`` and returns ``[len(rows), vocab]`` logits.

    Saves the head (and the softmax after it) at every position whose logits are not used;
    a forward pre-hook on ``lm_head`` runs inside the model's forward, so FSDP's hooks and
    gradients are as usual.

    Example::

        with select_output_rows(tm.model, torch.tensor([0, 2])):
            logits = tm.model(torch.tensor([[1, 2, 3]]))        # [2, vocab]: positions 0 and 2
    """

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        return (hidden.flatten(0, -2).index_select(0, rows), *args[1:])

    head = model.get_submodule("lm_head")
    handle = head.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


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
