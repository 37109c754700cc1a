"""forge_env.models: the tiny model build, name resolution, and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_env.models import MODEL_ALIASES, TinyModelConfig, build_tiny_model, resolve_model


def test_tiny_model_is_deterministic_and_loads(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = build_tiny_model(tmp_path / "a")
    b = build_tiny_model(tmp_path / "b")
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    tok = AutoTokenizer.from_pretrained(a)
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.model_type == "qwen3" and len(tok) == model.config.vocab_size == 1024
    assert 2_000_000 < sum(p.numel() for p in model.parameters()) < 3_500_000
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # The env texts it was trained for tokenize compactly; any text round-trips (byte-level).
    text = "12 is too high: the number is lower. It is between 9 and 11. 2 turns left."
    assert len(tok(text).input_ids) < 30
    odd = "naïve 🙂 \t\n {\"guess\": 8}"
    assert tok.decode(tok(odd, add_special_tokens=False).input_ids) == odd
    meta = json.loads((a / "forge_env_tiny.json").read_text())
    assert meta["architecture"] == "qwen3" and meta["recipe"]


def test_tiny_model_chat_template_renders_tools(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m"))
    tools = [{"type": "function", "function": {"name": "guess", "parameters": {"type": "object"}}}]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tools=tools, tokenize=False,
                                   add_generation_prompt=True)
    assert '"name": "guess"' in text and "<tool_call>" in text
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_llama_architecture_and_existing_folder_kept(tmp_path: Path) -> None:
    cfg = TinyModelConfig(architecture="llama", num_hidden_layers=1)
    path = build_tiny_model(tmp_path / "l", cfg)
    assert json.loads((path / "config.json").read_text())["model_type"] == "llama"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(path, cfg) == path and (path / "model.safetensors").stat().st_mtime_ns == stamp
    (tmp_path / "junk").mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_tiny_model(tmp_path / "junk")


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="architecture"):
        TinyModelConfig(architecture="gpt2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        TinyModelConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        TinyModelConfig(num_attention_heads=4, num_key_value_heads=3)


def test_resolve_model_aliases_paths_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGE_ENV_CACHE", str(tmp_path / "cache"))
    tiny = resolve_model("tiny")
    assert tiny.startswith(str(tmp_path / "cache")) and Path(tiny, "config.json").exists()
    assert resolve_model("tiny") == tiny  # cached
    assert resolve_model(tiny) == tiny  # a folder is itself
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="'tiny'"):
        resolve_model("no-such-model")
    with pytest.raises(FileNotFoundError, match="no model"):
        resolve_model(str(tmp_path / "missing" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))
    assert set(MODEL_ALIASES) == {"tiny", "tiny-llama", "smollm2-135m"}
