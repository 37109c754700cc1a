#!/usr/bin/env bash
# Check the learner's and TorchGenerator's GPU path on a CUDA machine with no network.
#
#   scripts/gpu_check.sh wheels   # here, with network: download the wheels the GPU machine lacks into .whl/
#   scripts/gpu_check.sh          # there, from the repository root (carry .whl/): install them, print the
#                                 # GPU and versions, a learner throughput figure, then run the gpu tests
#
# The GPU machine this was written for has python3 3.12 with torch 2.11 (CUDA), transformers,
# tokenizers, safetensors, pytest and pytest-timeout, but not torchtitan, pydantic (forge_env's
# env side) or their pure-Python needs. `wheels` fetches exactly those (py3.12, manylinux x86-64);
# `run` installs them with pip --no-index into $SITE and puts the repository and $SITE on
# PYTHONPATH. Nothing is installed into the machine's own environment.
#
# torchtitan 0.3.0 imports torch.distributed.fsdp.DataParallelMeshDims (torch >= 2.12) at module
# level, for FSDP2 only. Under an older torch a stand-in is defined (a pytest plugin written to
# $SITE, also imported by the throughput probe) so the single-GPU path can be checked; FSDP itself
# is not exercised here.
#
# The whole log also goes to $OUT/gpu_check.log when OUT is set. Exit status: pytest's.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${FORGE_GPU_WHEELS:-$ROOT/.whl}"
SITE="${FORGE_GPU_SITE:-/tmp/site}"
PY="${PYTHON:-python3}"
# What the GPU machine lacks: torchtitan and what the torchtitan modules forge_env imports need
# (tyro -> docstring_parser, spmd_types; not its datasets/wandb/tensorboard/torchdata), pydantic for
# forge_env's package root (it needs typing_extensions >= 4.16). Versions: the CPU venv's.
PACKAGES=(
    torchtitan==0.3.0 spmd_types==0.2.3 tyro==1.0.17 docstring_parser==0.18.0
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    typing_extensions==4.16.0
)

say() { echo "[gpu_check] $*"; }

fetch_wheels() {
    mkdir -p "$WHEELS"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${PACKAGES[@]}"
    say "wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry that folder to the GPU machine"
}

write_compat_plugin() {
    cat > "$SITE/forge_env_gpu_compat.py" <<'EOF'
"""Stand-ins for names torchtitan 0.3.0 imports from torch >= 2.12, on an older torch.

FSDP2's ``DataParallelMeshDims`` is only used by torchtitan's data-parallel wrapping; the
single-GPU learner never builds one. Loaded as a pytest plugin (-p) or imported.
"""
import dataclasses

import torch.distributed.fsdp as _fsdp

if not hasattr(_fsdp, "DataParallelMeshDims"):
    @dataclasses.dataclass(frozen=True)
    class DataParallelMeshDims:
        """Stand-in (torch < 2.12): never constructed on one GPU."""

        shard: object = None
        replicate: object = None

    _fsdp.DataParallelMeshDims = DataParallelMeshDims
    print("[gpu_check] torch", __import__("torch").__version__,
          "< 2.12: stand-in torch.distributed.fsdp.DataParallelMeshDims for torchtitan's imports")
EOF
}

throughput() {
    # Learner train tokens/s on the wider test model (hidden 1024, 8 layers, ~100M params), bf16.
    timeout 240 "$PY" - <<'EOF'
import statistics
import time

import forge_env_gpu_compat  # noqa: F401
import torch

from forge_env.learner import Learner, LearnerConfig
from forge_env.models import TinyModelConfig, build_tiny_model
from forge_env.rollout import Task, Trajectory

wide = TinyModelConfig(hidden_size=1024, intermediate_size=3072, num_hidden_layers=8,
                       num_attention_heads=16, num_key_value_heads=8)
started = time.perf_counter()
path = build_tiny_model("/tmp/gpu_check_models/wide", wide)
print(f"[throughput] built {path} in {time.perf_counter() - started:.1f}s")
learner = Learner(LearnerConfig(model=str(path), device="cuda", dtype="bfloat16", lr=1e-5))
params = learner.titan.num_parameters()
batch, length = 32, 1024
g = torch.Generator().manual_seed(0)
seqs = torch.randint(7, 1000, (batch, length), generator=g).tolist()
trajs = [Trajectory(env_name="bench", task=Task(seed=i), token_ids=s, logprobs=lp.tolist(),
                    loss_mask=[0] + [1] * (length - 1), prompt_len=1)
         for i, (s, lp) in enumerate(zip(seqs, learner.logprobs(seqs)))]
adv = [1.0 if i % 2 == 0 else -1.0 for i in range(batch)]
for _ in range(3):  # warm-up: cuBLAS/cuDNN autotuning, the caching allocator
    learner.train_step(trajs, adv)
torch.cuda.reset_peak_memory_stats()
steps = [learner.train_step(trajs, adv) for _ in range(10)]
rate = statistics.median(m["learner/tokens_per_second"] for m in steps)
ms = statistics.median(m["learner/step_seconds"] for m in steps) * 1e3
print(f"[throughput] {torch.cuda.get_device_name()}: learner train_step, {params / 1e6:.0f}M params, bf16, "
      f"{batch} x {length} tokens/step: median {rate:,.0f} tokens/s ({ms:.0f} ms/step, "
      f"~{6 * params * rate / 1e12:.0f} TFLOP/s of model FLOPs, "
      f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB)")
EOF
}

run_checks() {
    cd "$ROOT" || exit 1
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    nvidia-smi || say "nvidia-smi failed"
    mkdir -p "$SITE"
    if compgen -G "$WHEELS/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl || { say "installing the wheels of $WHEELS failed"; exit 1; }
    else
        say "no wheels in $WHEELS: using the installed torchtitan/pydantic" \
            "(run '$0 wheels' where pip has network)"
    fi
    write_compat_plugin
    export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" - <<'EOF' || { say "imports failed"; exit 1; }
import importlib.metadata as md
import sys

import forge_env_gpu_compat  # noqa: F401
import torch

import forge_env.learner._learner  # noqa: F401  (torchtitan's modules, as the learner loads them)
import torchtitan.models.qwen3  # noqa: F401

print(f"[gpu_check] python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'NONE'}")
print("[gpu_check] " + ", ".join(f"{p} {md.version(p)}" for p in
      ("transformers", "tokenizers", "safetensors", "triton", "torchtitan", "pydantic", "pytest")))
EOF
    throughput || say "throughput probe failed (exit $?)"
    # --noconftest: tests/conftest.py serves ASGI apps (uvicorn, fastapi: not on the GPU machine);
    # this module needs none of its fixtures.
    "$PY" -m pytest -q -s -rfEs -m gpu tests/integration/test_gpu_path.py -p no:cacheprovider --noconftest \
        -p forge_env_gpu_compat
}

case "${1:-run}" in
    wheels) fetch_wheels ;;
    run)
        if [[ -n "${OUT:-}" ]]; then
            run_checks 2>&1 | tee "$OUT/gpu_check.log"
        else
            run_checks
        fi
        ;;
    *) echo "usage: $0 [wheels|run]" >&2; exit 2 ;;
esac
