"""Learner step: how long one GRPO ``train_step`` takes on the default run's batch, by layout.

Also timed: ``Learner.logprobs`` of the same batch (what the KL term's reference policy runs
each step), which follows the layout too.

The batch has the shape of a step of ``python -m apps.agent_grpo`` (configs/default.yaml):
groups of ``rollout.group_size`` guess_number episodes of one task each (up to
``rollout.max_turns`` turns, the env's progress reward), played by the scripted demo policy
of the warm start (``warm_start.expert_prob``: binary search or a random legal guess) and
tokenized by the chat agent exactly as sampled episodes are: a long shared prompt, short
replies (loss tokens), masked-out observations between them. Behaviour logprobs are the
policy's own plus noise (importance ratios near 1), advantages are the config's per-turn
group advantages, and the learner is the config's (lr, loss, clipping). ``--groups`` defaults
to half of ``orchestrator.groups_per_step`` (64 sequences): the default run skips groups
whose episodes all score alike, and trains on about that many.

Each layout of ``LearnerConfig.layout`` gets its own learner from the same weights:
``padded`` (one right-padded row per sequence, logits everywhere: the learner before the
packed layout) and ``packed`` (a prefix tree: shared prefixes once, no padding, the output
head only at loss tokens). One untimed warm-up step each, then ``--repeats`` timed steps,
interleaved (padded, packed, padded, ...) so that load from other processes hits both alike;
the table shows the median and the fastest. Columns: step s, tokens the model ran on
(``learner/padded_tokens``), micro-batches, tokens of the batch per second, speed-up over
``padded``, then the median ``logprobs`` call and its speed-up.

Correctness: the first step of every layout starts from the same weights on the same batch;
its loss and gradient norm must equal ``padded``'s within ``CHECK_TOLERANCE`` (relative), and
its logprobs before that step ``padded``'s within ``CHECK_TOLERANCE`` (absolute), else the
run fails (exit code 1, after the JSON is written).

Usage (from the repository root)::

    python bench/learner_step.py                 # 8 groups x 8 episodes, 5 timed steps each (~1 min)
    python bench/learner_step.py --quick         # 2 groups, 2 timed steps (~10 s)
    python bench/learner_step.py --groups 16 --repeats 9 --out /tmp/ls.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python bench/learner_step.py` puts bench/ (not the repo root) on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._report import BenchRun, Column, RESULTS_DIR, format_table  # noqa: E402

DEFAULT_OUT = RESULTS_DIR / "learner_step.json"
LAYOUTS = ("padded", "packed")
CHECK_TOLERANCE = 1e-5
"""Largest relative difference of the first step's loss and gradient norm between layouts
(float rounding only: measured ~1e-7)."""
BEHAVIOUR_NOISE = 0.05
"""Std of the noise added to the policy's own logprobs to make the behaviour logprobs."""
FIRST_TASK_SEED = 2_000_000
"""Task seeds as the default run's collectors draw them (orchestrator.first_task_seed)."""


def _log(text: str) -> None:
    print(text, flush=True)


def build_batch(config: Any, *, groups: int, group_size: int, expert_prob: float,
                seed: int) -> tuple[list[Any], list[list[float]]]:
    """``groups`` x ``group_size`` demo episodes of the config's env and their per-turn
    advantages; behaviour logprobs are filled in by :func:`fill_behaviour`."""
    from transformers import AutoTokenizer

    from agents import ChatAgent
    from apps.sft._demos import demo_policy, demonstration
    from envs import load_env_factory
    from forge_env.learner import group_advantages
    from forge_env.models import resolve_model
    from forge_env.rollout import Task

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    agent = ChatAgent(tokenizer)
    make_env = load_env_factory(config.env)
    policy = demo_policy(config.env)
    rng = random.Random(seed)

    async def play() -> list[list[Any]]:
        out = []
        for g in range(groups):
            task = Task(seed=FIRST_TASK_SEED + g)
            out.append([await demonstration(agent, make_env(**config.env_kwargs), policy, task, rng=rng,
                                            expert_prob=expert_prob,
                                            max_turns=config.rollout.max_turns)
                        for _ in range(group_size)])
        return out

    played = asyncio.run(play())
    trajs = [t for group in played for t in group]
    advantages = [a for group in played for a in group_advantages(group, config.advantage.advantage_config())]
    return trajs, advantages


def fill_behaviour(learner: Any, trajs: list[Any], seed: int) -> None:
    """Behaviour logprobs: the policy's own on the loss tokens, plus noise (ratios near 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for traj, lp in zip(trajs, learner.logprobs([t.token_ids for t in trajs])):
        noisy = lp + BEHAVIOUR_NOISE * torch.randn(lp.shape, generator=g)
        traj.logprobs = [float(v) if m else 0.0 for v, m in zip(noisy, traj.loss_mask)]


def run_layouts(config: Any, layouts: Sequence[str], trajs: list[Any], advantages: list[list[float]],
                repeats: int) -> list[dict[str, Any]]:
    """Time ``train_step`` per layout (interleaved); returns one row per layout."""
    import torch

    from forge_env.learner import Learner
    from forge_env.models import resolve_model

    base = config.learner_config(resolve_model(config.model))
    learners = {name: Learner(dataclasses.replace(base, layout=name)) for name in layouts}
    seqs = [t.token_ids for t in trajs]
    first: dict[str, dict[str, float]] = {}
    first_logprobs: dict[str, list[Any]] = {}
    for name, learner in learners.items():  # the warm-up calls: also the correctness check
        first_logprobs[name] = learner.logprobs(seqs)
        first[name] = learner.train_step(trajs, advantages)
    seconds: dict[str, list[float]] = {name: [] for name in layouts}
    logprobs_seconds: dict[str, list[float]] = {name: [] for name in layouts}
    last: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, learner in learners.items():
            started = time.perf_counter()
            last[name] = learner.train_step(trajs, advantages)
            seconds[name].append(time.perf_counter() - started)
            started = time.perf_counter()
            learner.logprobs(seqs)
            logprobs_seconds[name].append(time.perf_counter() - started)
    seq_tokens = sum(len(t.token_ids) for t in trajs)
    rows: list[dict[str, Any]] = []
    for name in layouts:
        median = statistics.median(seconds[name])
        rows.append({
            "layout": name,
            "step_s": median,
            "min_s": min(seconds[name]),
            "repeats": seconds[name],
            "computed_tokens": last[name]["learner/padded_tokens"],
            "micro_batches": int(last[name]["learner/micro_batches"]),
            "batch_tokens_per_s": seq_tokens / median,
            "logprobs_s": statistics.median(logprobs_seconds[name]),
            "logprobs_repeats": logprobs_seconds[name],
            "first_step": {k: first[name][k] for k in ("loss/total", "learner/grad_norm", "loss/tokens",
                                                      "loss/ratio_mean", "loss/clipfrac_low",
                                                      "loss/clipfrac_high")},
            "threads": torch.get_num_threads(),
        })
    reference = rows[0]
    for row in rows:
        row["speedup"] = reference["step_s"] / row["step_s"]
        row["logprobs_speedup"] = reference["logprobs_s"] / row["logprobs_s"]
        diffs = {
            key: abs(row["first_step"][key] - reference["first_step"][key]) / max(1.0, abs(reference["first_step"][key]))
            for key in ("loss/total", "learner/grad_norm")
        }
        logprobs_diff = max(float((a - b).abs().max()) for a, b in
                            zip(first_logprobs[row["layout"]], first_logprobs[reference["layout"]]))
        row["check"] = {"vs": reference["layout"], "relative_diff": diffs, "logprobs_max_abs_diff": logprobs_diff,
                        "tolerance": CHECK_TOLERANCE,
                        "passed": all(d <= CHECK_TOLERANCE for d in diffs.values())
                        and logprobs_diff <= CHECK_TOLERANCE
                        and row["first_step"]["loss/tokens"] == reference["first_step"]["loss/tokens"]}
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    return format_table(rows, [
        Column("layout", "layout"),
        Column("step s", "step_s", ".3f"),
        Column("min s", "min_s", ".3f"),
        Column("tokens run", "computed_tokens", ",.0f"),
        Column("micro-batches", "micro_batches"),
        Column("batch tok/s", "batch_tokens_per_s", ",.0f"),
        Column("speed-up", "speedup", ".2f", suffix="x"),
        Column("logprobs s", "logprobs_s", ".3f"),
        Column("logprobs speed-up", "logprobs_speedup", ".2f", suffix="x"),
        Column("check", lambda r: "ok" if r["check"]["passed"] else "FAILED"),
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="agent_grpo config (file or packaged name; default: default.yaml)")
    p.add_argument("--groups", type=int, default=None,
                   help="groups in the batch (default: half of orchestrator.groups_per_step)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per layout; median shown (default 5)")
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS),
                   help="layouts to time; the first is the reference of the check and the speed-up")
    p.add_argument("--expert-prob", type=float, default=None,
                   help="chance a demo turn is the expert's move (default: warm_start.expert_prob); lower "
                        "gives more varied groups (fewer shared turns)")
    p.add_argument("--seed", type=int, default=0, help="seeds the demo episodes and the behaviour noise")
    p.add_argument("--quick", action="store_true", help="2 groups and 2 timed steps (~10 s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"where the JSON goes (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; returns the exit code (1 when the layouts disagree)."""
    args = build_parser().parse_args(argv)
    from apps.agent_grpo._config import load_config

    config = load_config(args.config)
    groups = args.groups if args.groups is not None else (2 if args.quick else max(1, config.orchestrator.groups_per_step // 2))
    repeats = 2 if args.quick and args.repeats == 5 else args.repeats
    if groups < 1 or repeats < 1:
        raise SystemExit(f"--groups and --repeats must be >= 1, got {groups} and {repeats}")
    layouts = list(dict.fromkeys(args.layouts))
    run = BenchRun("learner_step", argv)
    if (note := run.busy_note()) is not None:
        _log(note)
    group_size = config.rollout.group_size
    _log(f"learner_step: {config.model} on {config.env}, {groups} groups x {group_size} episodes, "
         f"layouts {layouts}, {repeats} timed steps each")

    expert_prob = config.warm_start.expert_prob if args.expert_prob is None else args.expert_prob
    if not 0.0 <= expert_prob <= 1.0:
        raise SystemExit(f"--expert-prob must be in [0, 1], got {expert_prob}")
    trajs, advantages = build_batch(config, groups=groups, group_size=group_size, expert_prob=expert_prob,
                                    seed=args.seed)
    from forge_env.learner import Learner
    from forge_env.models import resolve_model

    fill_behaviour(Learner(config.learner_config(resolve_model(config.model))), trajs, args.seed)
    lengths = [len(t.token_ids) for t in trajs]
    batch = {
        "sequences": len(trajs), "groups": groups, "group_size": group_size,
        "tokens": sum(lengths), "longest": max(lengths), "padded": len(lengths) * max(lengths),
        "loss_tokens": sum(sum(t.loss_mask) for t in trajs),
        "turns": sum(t.num_turns for t in trajs),
    }
    _log(f"batch: {batch['sequences']} sequences, {batch['tokens']:,} tokens ({batch['padded']:,} padded), "
         f"{batch['loss_tokens']} loss tokens")
    rows = run_layouts(config, layouts, trajs, advantages, repeats)
    print()
    print(format_rows(rows))
    passed = all(r["check"]["passed"] for r in rows)
    report = {
        "settings": {
            "config": args.config or "default.yaml", "model": config.model, "env": config.env,
            "env_kwargs": dict(config.env_kwargs), "groups": groups, "group_size": group_size,
            "max_turns": config.rollout.max_turns, "expert_prob": expert_prob,
            "repeats": repeats, "warmup_steps": 1, "layouts": layouts, "seed": args.seed, "quick": args.quick,
            "behaviour_noise": BEHAVIOUR_NOISE, "check_tolerance": CHECK_TOLERANCE,
        },
        "batch": batch,
        "rows": rows,
        "check_passed": passed,
    }
    print(f"\nwrote {run.write(report, args.out)}")
    if not passed:
        failed = [f"{r['layout']}: {r['check']}" for r in rows if not r["check"]["passed"]]
        print("learner_step: the layouts disagree on the first step:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
