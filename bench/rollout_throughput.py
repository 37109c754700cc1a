"""Generator throughput: tokens/s of VLLMGenerator vs TorchGenerator vs plain transformers
``model.generate``, and weight-update latency versus model size.

Sampling throughput: one model (the tiny model by default, ``--model PATH`` for another HF
folder), one batch of prompts (``--prompts``, 32 by default, 16-48 random token ids each),
all sent at once, the same sampling for every backend (temperature 1, no top-k/top-p,
``--max-tokens`` new tokens, EOS ignored so every completion has the same length:
``ignore_eos`` for our generators, ``min_new_tokens`` for transformers), logprobs of every
sampled token included (transformers: ``output_scores`` and a log_softmax). Tokens/s counts
the tokens actually returned over the wall time of the whole batch. Each backend is
started and warmed up first; repeats are interleaved (backend order rotates) and the table
shows their median, with the ratio to transformers.

Weight-update latency: ``update_weights`` with the model's full state dict, median over
repeats, on the throughput model and on wider tiny models (``--widths``: hidden and MLP
sizes times 1, 2, 4; parameters grow ~4x per doubling). vLLM's number includes writing the
safetensors file, pausing, reloading and resuming; the torch number is a
``load_state_dict`` between batches. One vLLM engine runs at a time.

Episodes/s through ``forge_env.rollout`` (ChatAgent x in-process guess_number x generator,
all episodes at once, up to 4 turns of 16 tokens) for VLLMGenerator and TorchGenerator:
:func:`measure_rollout`.

Usage (from the repository root)::

    python bench/rollout_throughput.py                     # full run, a few minutes on 2 cores
    python bench/rollout_throughput.py --quick             # 16 prompts x 32 tokens, tiny model only
    python bench/rollout_throughput.py --model smollm2-135m --widths   # SmolLM2-135M, no wider tiny models
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python bench/rollout_throughput.py` puts bench/ (not the repo root) on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._report import BenchRun, Column, format_table as _table  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "rollout_throughput.json"
BACKENDS = ("vllm", "torch", "transformers")


# --- the three samplers behind one signature: prompts -> (tokens returned, seconds) ---------


async def _timed(run: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = await run()
    return tokens, time.perf_counter() - started


def generator_runner(gen: Any, prompts: list[list[int]], max_tokens: int) -> Callable[[], Awaitable[int]]:
    """All prompts at once through a forge-env Generator; returns the tokens sampled."""
    from forge_env.generator import SamplingParams

    async def run() -> int:
        params = [SamplingParams(max_tokens=max_tokens, temperature=1.0, ignore_eos=True) for _ in prompts]
        outs = await asyncio.gather(*(gen.generate(p, sp) for p, sp in zip(prompts, params)))
        return sum(len(o.token_ids) for o in outs)

    return run


def transformers_runner(model: Any, prompts: list[list[int]], max_tokens: int, pad_id: int) -> Callable[[], Awaitable[int]]:
    """One batched ``model.generate`` (left padding), with the sampled tokens' logprobs."""
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, p in enumerate(prompts):
        input_ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1

    def generate() -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=pad_id,
                output_scores=True, return_dict_in_generate=True,
            )
            sampled = out.sequences[:, width:]
            scores = torch.stack(out.scores, dim=1)  # [batch, new tokens, vocab], after the warpers
            logprobs = torch.log_softmax(scores.float(), dim=-1).gather(-1, sampled.unsqueeze(-1))
        assert logprobs.shape[:2] == sampled.shape
        return int(sampled.numel())

    async def run() -> int:
        return await asyncio.to_thread(generate)

    return run


async def measure_rollout(gen: Any, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Episodes/s through ``forge_env.rollout`` with ``gen``: ChatAgent x guess_number
    (in-process) x the generator, ``args.prompts`` episodes at once, up to 4 turns of up to
    16 tokens each, temperature 1. Same seeds for every generator."""
    from transformers import AutoTokenizer

    from agents import ChatAgent
    from envs import load_env_factory
    from forge_env.generator import SamplingParams
    from forge_env.rollout import CollectorConfig, RolloutCollector, RolloutConfig, Task

    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = CollectorConfig(
        max_concurrent_episodes=args.prompts,
        rollout=RolloutConfig(max_turns=4, sampling=SamplingParams(max_tokens=16, temperature=1.0)),
    )
    collector = RolloutCollector(ChatAgent(tokenizer), gen, load_env_factory("guess_number"), config)
    await collector.collect([Task(seed=s) for s in range(4)])  # warm-up
    collector.stats = type(collector.stats)()
    started = time.perf_counter()
    groups = await collector.collect([Task(seed=1000 + s) for s in range(args.prompts)])
    wall = time.perf_counter() - started
    trajs = [t for g in groups for t in g.trajectories]
    turns = sum(t.num_turns for t in trajs)
    tokens = sum(t.num_completion_tokens for t in trajs)
    return {
        "episodes": len(trajs),
        "wall_s": wall,
        "episodes_per_s": len(trajs) / wall,
        "turns_per_s": turns / wall,
        "completion_tokens_per_s": tokens / wall,
        "mean_turns": turns / len(trajs),
        "failed": sum(t.failed for t in trajs),
    }


# --- helpers ---------------------------------------------------------------------------------


def _count_params(state: dict[str, Any], tied: bool) -> int:
    return sum(t.numel() for n, t in state.items() if not (tied and n == "lm_head.weight"))


def _prompts(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(16, 48))] for _ in range(n)]


def _load_state(folder: Path) -> tuple[dict[str, Any], Any]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, model


async def _median_update(gen: Any, state: dict[str, Any], repeats: int) -> dict[str, Any]:
    """``repeats`` full-state updates: wall times, and how long each held new requests back."""
    times, blocked = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        await gen.update_weights(state.items(), version=gen.version + 1)
        times.append(time.perf_counter() - started)
        blocked.append(gen.metrics["generator/update_blocked_s"])
    return {
        "update_s": statistics.median(times), "blocked_s": statistics.median(blocked),
        "repeats": times, "blocked_repeats": blocked,
    }


def _update_row(label: str, params: int, vllm: dict[str, Any], torch: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": label,
        "params": params,
        "vllm_update_s": vllm["update_s"],
        "vllm_blocked_s": vllm["blocked_s"],
        "torch_update_s": torch["update_s"],
        "torch_blocked_s": torch["blocked_s"],
        "vllm_repeats": vllm["repeats"],
        "torch_repeats": torch["repeats"],
    }


def _vllm_config(folder: Path, max_model_len: int) -> Any:
    from forge_env.generator import VLLMGeneratorConfig

    return VLLMGeneratorConfig(model=str(folder), max_model_len=max_model_len)


def _torch_config(folder: Path, max_model_len: int, batch: int) -> Any:
    from forge_env.generator import TorchGeneratorConfig

    return TorchGeneratorConfig(model=str(folder), max_model_len=max_model_len, max_batch_size=batch)


# --- the measurements ------------------------------------------------------------------------


async def run_throughput(folder: Path, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Tokens/s per backend on ``folder``; also the engine start times and the update
    latency on this model (the engines are up already)."""
    from forge_env.generator import TorchGenerator, VLLMGenerator

    state, hf_model = _load_state(folder)
    prompts = _prompts(args.prompts, hf_model.config.vocab_size)
    # Room for the rollout measurement too (guess_number: ~70-token prompt, 4 turns).
    max_model_len = max(max(len(p) for p in prompts) + args.max_tokens + 8, 512)
    pad_id = hf_model.config.pad_token_id if hf_model.config.pad_token_id is not None else 0
    start_s: dict[str, float] = {}
    started = time.perf_counter()
    torch_gen = TorchGenerator(_torch_config(folder, max_model_len, len(prompts)))
    await torch_gen.start()
    start_s["torch"] = time.perf_counter() - started
    started = time.perf_counter()
    vllm_gen = VLLMGenerator(_vllm_config(folder, max_model_len))
    try:
        await vllm_gen.start()
        start_s["vllm"] = time.perf_counter() - started
        log(f"engine start: vLLM {start_s['vllm']:.1f} s, torch {start_s['torch']:.1f} s")
        runners = {
            "vllm": generator_runner(vllm_gen, prompts, args.max_tokens),
            "torch": generator_runner(torch_gen, prompts, args.max_tokens),
            "transformers": transformers_runner(hf_model, prompts, args.max_tokens, pad_id),
        }
        warm = {
            "vllm": generator_runner(vllm_gen, prompts[:4], 4),
            "torch": generator_runner(torch_gen, prompts[:4], 4),
            "transformers": transformers_runner(hf_model, prompts[:4], 4, pad_id),
        }
        for name in BACKENDS:
            await warm[name]()
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in BACKENDS}
        for r in range(args.repeats):
            order = BACKENDS[r % 3:] + BACKENDS[: r % 3]  # rotate: no backend always goes first
            for name in order:
                tokens, wall = await _timed(runners[name])
                runs[name].append({"tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall})
                log(f"  repeat {r + 1}/{args.repeats} {name:12s} {tokens} tokens in {wall:.2f} s = {tokens / wall:,.0f} tok/s")
        rows: list[dict[str, Any]] = []
        for name in BACKENDS:
            rows.append({
                "backend": name,
                "tokens_per_s": statistics.median(x["tokens_per_s"] for x in runs[name]),
                "tokens": runs[name][0]["tokens"],
                "repeats": runs[name],
            })
        base = next(r["tokens_per_s"] for r in rows if r["backend"] == "transformers")
        for row in rows:
            row["ratio_vs_transformers"] = row["tokens_per_s"] / base
        update = {
            "vllm": await _median_update(vllm_gen, state, args.update_repeats),
            "torch": await _median_update(torch_gen, state, args.update_repeats),
        }
        rollout = {}
        for name, gen in (("vllm", vllm_gen), ("torch", torch_gen)):
            rollout[name] = await measure_rollout(gen, folder, args)
            log(f"rollout {name:6s} {rollout[name]['episodes_per_s']:.2f} episodes/s, "
                f"{rollout[name]['completion_tokens_per_s']:,.0f} completion tok/s")
    finally:
        await vllm_gen.close()
        await torch_gen.close()
    tied = bool(getattr(hf_model.config, "tie_word_embeddings", False))
    update_row = _update_row(args.model_label, _count_params(state, tied), update["vllm"], update["torch"])
    return {
        "rows": rows,
        "engine_start_s": start_s,
        "update_row": update_row,
        "prompts": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "rollout": rollout,
    }


async def run_update_latency(folder: Path, label: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """update_weights latency on one more model: a fresh vLLM engine and TorchGenerator."""
    from forge_env.generator import TorchGenerator, VLLMGenerator

    state, hf_model = _load_state(folder)
    tied = bool(getattr(hf_model.config, "tie_word_embeddings", False))
    del hf_model
    async with VLLMGenerator(_vllm_config(folder, 256)) as vllm_gen:
        await vllm_gen.generate([5, 6, 7], _sampling(4))
        vllm = await _median_update(vllm_gen, state, args.update_repeats)
    async with TorchGenerator(_torch_config(folder, 256, 4)) as torch_gen:
        await torch_gen.generate([5, 6, 7], _sampling(4))
        torch = await _median_update(torch_gen, state, args.update_repeats)
    row = _update_row(label, _count_params(state, tied), vllm, torch)
    log(f"  {label}: {row['params'] / 1e6:.1f}M params, update vLLM {row['vllm_update_s']:.3f} s, "
        f"torch {row['torch_update_s']:.3f} s")
    return row


def _sampling(max_tokens: int) -> Any:
    from forge_env.generator import SamplingParams

    return SamplingParams(max_tokens=max_tokens)


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"sampling: {result['prompts']} prompts x {result['max_tokens']} new tokens, temperature 1, "
        f"EOS ignored, logprobs on ({result['model']})",
        _table(result["throughput"], [
            Column("backend", "backend"), Column("tokens/s", "tokens_per_s", ",.0f"),
            Column("vs transformers", "ratio_vs_transformers", ".2f", suffix="x"),
        ]),
    ]
    if result.get("rollout"):
        lines.append("")
        lines.append("rollouts: guess_number, ChatAgent, all episodes concurrent, <= 4 turns x 16 tokens")
        rows = [{"generator": name, **row} for name, row in result["rollout"].items()]
        lines.append(_table(rows, [
            Column("generator", "generator"), Column("episodes/s", "episodes_per_s", ".2f"),
            Column("turns/s", "turns_per_s", ".1f"), Column("tok/s", "completion_tokens_per_s", ",.0f"),
            Column("mean turns", "mean_turns", ".2f"),
        ]))
    lines.append("")
    lines.append("engine start: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["engine_start_s"].items()))
    lines.append("")
    lines.append("weight update (full state dict, median; blocked = new requests held back):")
    lines.append(_table(result["update_latency"], [
        Column("model", "model"), Column("params", lambda r: r["params"] / 1e6, ".1f", suffix="M"),
        Column("vLLM s", "vllm_update_s", ".3f"), Column("blocked", "vllm_blocked_s", ".3f"),
        Column("torch s", "torch_update_s", ".3f"), Column("blocked", "torch_blocked_s", ".3f"),
    ]))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="HF model folder or forge_env.models alias (tiny, smollm2-135m) for the sampling run "
                   "(default: the tiny model, built in a temporary folder)")
    p.add_argument("--prompts", type=int, default=32, help="prompts sent at once (default 32)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per prompt (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved sampling repeats; median shown (default 3)")
    p.add_argument("--update-repeats", type=int, default=3, help="weight updates per model; median shown (default 3)")
    p.add_argument("--widths", type=int, nargs="*", default=[2, 4],
                   help="also measure update latency on tiny models this many times wider (default 2 4; none: --widths)")
    p.add_argument("--quick", action="store_true", help="16 prompts x 32 tokens, 1 repeat, no wider models")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.prompts, args.max_tokens, args.repeats, args.update_repeats, args.widths = 16, 32, 1, 2, []
    for name in ("prompts", "max_tokens", "repeats", "update_repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    def log(text: str) -> None:
        print(text, flush=True)

    run = BenchRun("rollout_throughput", argv)
    if (note := run.busy_note()) is not None:
        log(note)
    from forge_env.models import TinyModelConfig, build_tiny_model

    with tempfile.TemporaryDirectory(prefix="rollout-throughput-") as tmp:
        if args.model is None:
            folder = build_tiny_model(Path(tmp) / "tiny-x1")
            args.model_label = "tiny-x1"
        else:
            from forge_env.models import resolve_model

            folder = Path(resolve_model(args.model))
            args.model_label = args.model if not Path(args.model).exists() else folder.name
        log(f"rollout_throughput: {args.model_label}, {args.prompts} prompts x {args.max_tokens} tokens, "
            f"{args.repeats} repeats")
        sampling = asyncio.run(run_throughput(folder, args, log))
        updates = [sampling["update_row"]]
        if args.widths:
            log("update latency on wider tiny models:")
        for width in args.widths:
            base = TinyModelConfig()
            shape = TinyModelConfig(
                hidden_size=base.hidden_size * width, intermediate_size=base.intermediate_size * width,
                num_attention_heads=base.num_attention_heads * width, num_key_value_heads=base.num_key_value_heads * width,
            )
            wide = build_tiny_model(Path(tmp) / f"tiny-x{width}", shape)
            updates.append(asyncio.run(run_update_latency(wide, f"tiny-x{width}", args, log)))

    result = {
        **run.header(),
        "settings": {
            "quick": args.quick,
            "model": args.model_label,
            "prompts": sampling["prompts"],
            "prompt_tokens": sampling["prompt_tokens"],
            "max_tokens": args.max_tokens,
            "temperature": 1.0,
            "ignore_eos": True,
            "repeats": args.repeats,
            "update_repeats": args.update_repeats,
            "widths": [1, *args.widths] if args.model is None else args.widths,
        },
        "model": args.model_label,
        "prompts": sampling["prompts"],
        "max_tokens": args.max_tokens,
        "throughput": sampling["rows"],
        "engine_start_s": sampling["engine_start_s"],
        "update_latency": updates,
        "rollout": sampling["rollout"],
    }
    print()
    print(format_table(result))
    print(f"\nwrote {run.write(result, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
