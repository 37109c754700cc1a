"""Async vs sync GRPO: the same short training run in both loop modes, side by side.

The training loop (:class:`forge_env.orchestrator.Orchestrator`) runs in ``async`` mode
(generation of the next batch overlaps training on this one; samples are at most
``max_policy_age`` policy versions old) or ``sync`` mode (generate, train, push, repeat;
on-policy). This bench builds the parts directly and runs the same config in each mode::

    tiny model, warm-started     ->  VLLMGenerator (default CPU config; --generator torch)
    Learner(LearnerConfig(model, lr=5e-4))   ChatAgent   guess_number, in-process
    RolloutCollector(group_size=8, max_concurrent_episodes=128,
                     RolloutConfig(max_turns=6, SamplingParams(max_tokens=8)))
    ReplayBuffer(BufferConfig(max_policy_age=1))
    Orchestrator(OrchestratorConfig(mode=..., steps=warmup + measured, groups_per_step=8))

The policy is the tiny model after ``--warm-start`` supervised steps on guess_number
demonstrations (``apps.sft``, default 75, the earlier default run's: held-out success
~2% -> ~38%), built once (~1.5 min) and cached under forge-env's model cache. With
``--warm-start 0`` the random-weight tiny model almost never wins, nearly every group scores
all zeros and carries no GRPO signal, so the learner barely trains and only generation is
measured.

Each mode gets a fresh learner and a fresh generator engine (its start is not measured), so
both start from the same initial weights and play the same task seeds; one engine runs at a
time. The first ``--warmup`` learner steps fill the pipeline and are excluded; over the
``--steps`` measured steps the bench reports:

- ``samples/s``: episodes trained on (the learner's consumption) per second of wall time;
  ``gen eps/s``: episodes the collectors finished per second (async may generate more than it
  trains: groups still in flight, or stale ones the buffer dropped);
- ``trained tok/s``: loss tokens (sampled completion tokens) trained per second;
- mean step time; learner idle (``1 - util/learner``) and generator idle
  (``1 - util/generator``), means of the step reports;
- policy age (mean, max) of the trained samples; reward at the first and the last step
  (with random weights the reward is mostly noise: it only shows async does not break
  learning here);
- the ratio async / sync of samples/s.

``--threads-learner N [N ...]`` sets ``torch.set_num_threads`` in this process (the learner's
forward/backward; also the torch generator, which runs here) before each run; several values
run every mode once per value. On a 2-core machine the learner's threads and vLLM's engine
process compete for the cores: ``--modes async --threads-learner 1 2`` measures that.

Usage (from the repository root)::

    python bench/async_vs_sync.py                    # 2 warm-up + 6 measured steps per mode, ~6 min
    python bench/async_vs_sync.py --quick            # 1 + 3 steps
    python bench/async_vs_sync.py --repeats 2        # order alternates: async, sync, sync, async
    python bench/async_vs_sync.py --modes async --threads-learner 1 2 --out /tmp/threads.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python bench/async_vs_sync.py` puts bench/ (not the repo root) on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._report import BenchRun, Column, RESULTS_DIR, format_table  # noqa: E402

__all__ = ["BenchSettings", "aggregate", "build_parser", "main", "run_mode", "summarize", "warm_started_model"]

DEFAULT_OUT = RESULTS_DIR / "async_vs_sync.json"
MODES: tuple[str, ...] = ("async", "sync")
GENERATORS: tuple[str, ...] = ("vllm", "torch")

Mode = Literal["async", "sync"]


def _log(text: str) -> None:
    print(text, flush=True)


@dataclasses.dataclass(kw_only=True, slots=True)
class BenchSettings:
    """What one bench run trains, and how it measures.

    >>> BenchSettings(quick=True).warmup_steps, BenchSettings(quick=True).measured_steps
    (1, 3)
    """

    model: str = "tiny"
    """Model name or HF folder (:func:`forge_env.models.resolve_model`)."""
    warm_start_steps: int = 75
    """Supervised steps on guess_number demonstrations before the bench (cached); 0: none."""
    generator: Literal["vllm", "torch"] = "vllm"
    """``vllm``: VLLMGenerator (its engine in a child process); ``torch``: TorchGenerator (in
    this process, sharing torch's threads with the learner)."""
    modes: tuple[str, ...] = MODES
    """Loop modes to run, in this order on even repeats (reversed on odd ones)."""
    quick: bool = False
    """1 warm-up + 3 measured steps, unless those are given."""
    warmup_steps: int | None = None
    """Learner steps excluded from the measurement (None: 2, quick 1)."""
    measured_steps: int | None = None
    """Learner steps measured (None: 6, quick 3)."""
    repeats: int = 1
    """Runs of every mode; the table shows their mean."""
    threads: tuple[int | None, ...] = (None,)
    """``torch.set_num_threads`` values of this process (None: torch's default)."""
    groups_per_step: int = 8
    group_size: int = 8
    max_concurrent_episodes: int = 128
    max_turns: int = 6
    max_tokens: int = 8
    temperature: float = 1.0
    lr: float = 5e-4
    max_policy_age: int = 1
    seed: int = 0
    """Seeds the learner's init and the generator's sampling (the same in every mode)."""

    def __post_init__(self) -> None:
        if self.warmup_steps is None:
            self.warmup_steps = 1 if self.quick else 2
        if self.measured_steps is None:
            self.measured_steps = 3 if self.quick else 6
        if self.warmup_steps < 0:
            raise ValueError(f"warmup steps must be >= 0, got {self.warmup_steps}")
        if self.warm_start_steps < 0:
            raise ValueError(f"warm start steps must be >= 0, got {self.warm_start_steps}")
        for name in ("measured_steps", "repeats", "groups_per_step", "group_size", "max_concurrent_episodes",
                     "max_turns", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes must be some of {list(MODES)}, got {list(self.modes)}")
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {list(GENERATORS)}, got {self.generator!r}")
        bad = [t for t in self.threads if t is not None and t < 1]
        if bad or not self.threads:
            raise ValueError(f"learner threads must be >= 1, got {list(self.threads)}")

    @property
    def steps(self) -> int:
        """Learner steps of one run (warm-up + measured)."""
        assert self.warmup_steps is not None and self.measured_steps is not None
        return self.warmup_steps + self.measured_steps


# --- the policy ---------------------------------------------------------------------------------


def warm_started_model(model: str, steps: int, seed: int, log: Callable[[str], None] = _log) -> str:
    """``model`` after ``steps`` supervised steps on guess_number demonstrations (apps.sft),
    built the first time into forge-env's model cache and reused after; ``steps=0``: ``model``."""
    import hashlib
    import os
    import shutil

    from forge_env.models import cache_dir, resolve_model

    path = str(resolve_model(model))
    if steps == 0:
        return path
    key = hashlib.sha256(f"{os.path.abspath(path)}|sft|{steps}|{seed}".encode()).hexdigest()[:12]
    folder = cache_dir() / "models" / f"bench-sft-{Path(path).name}-{steps}-{key}"
    if (folder / "config.json").exists():
        log(f"warm start: reusing {folder}")
        return str(folder)
    from apps.sft import SFTConfig, sft

    log(f"warm start: {steps} supervised steps on guess_number demonstrations (once; cached in {folder})")
    started = time.perf_counter()
    result = asyncio.run(sft(SFTConfig(model=path, steps=steps, eval_episodes=0, output_dir=None, seed=seed,
                                       log_every=max(1, steps // 3))))
    # Into a sibling temp folder, then renamed: an interrupted build leaves no half folder.
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    result.learner.save_hf(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log(f"warm start: done in {time.perf_counter() - started:.0f} s")
    return str(folder)


# --- one run of one mode -----------------------------------------------------------------------


def _make_generator(settings: BenchSettings, path: str) -> Any:
    from forge_env.generator import TorchGenerator, TorchGeneratorConfig, VLLMGenerator, VLLMGeneratorConfig

    if settings.generator == "vllm":
        # log_level ERROR: every weight reload logs warnings about layers without weights (rotary).
        return VLLMGenerator(VLLMGeneratorConfig(model=path, seed=settings.seed, log_level="ERROR"))
    return TorchGenerator(TorchGeneratorConfig(model=path, max_model_len=1024,
                                               max_batch_size=settings.max_concurrent_episodes, seed=settings.seed))


async def run_mode(settings: BenchSettings, mode: Mode, *, model_path: str, threads: int,
                   log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Train ``settings.steps`` learner steps in ``mode`` from fresh parts; per-step records.

    ``threads`` must already be set (``torch.set_num_threads``) before this coroutine's event
    loop started: torch's worker threads read it once, when they first run an op.
    """
    import torch
    from transformers import AutoTokenizer

    from agents import ChatAgent
    from envs import load_env_factory
    from forge_env.buffer import BufferConfig, ReplayBuffer
    from forge_env.generator import SamplingParams
    from forge_env.learner import Learner, LearnerConfig
    from forge_env.orchestrator import Orchestrator, OrchestratorConfig
    from forge_env.rollout import CollectorConfig, RolloutCollector, RolloutConfig

    started = time.perf_counter()
    learner = Learner(LearnerConfig(model=model_path, lr=settings.lr, temperature=settings.temperature,
                                    seed=settings.seed))
    learner_build_s = time.perf_counter() - started
    agent = ChatAgent(AutoTokenizer.from_pretrained(model_path))
    rollout = RolloutConfig(max_turns=settings.max_turns,
                            sampling=SamplingParams(max_tokens=settings.max_tokens,
                                                    temperature=settings.temperature))
    generator = _make_generator(settings, model_path)
    started = time.perf_counter()
    async with generator:
        engine_start_s = time.perf_counter() - started
        # vLLM's client side must not have changed this process's torch threads.
        if torch.get_num_threads() != threads:
            log(f"  note: torch threads {torch.get_num_threads()} after the generator started; setting {threads}")
            torch.set_num_threads(threads)
        collector = RolloutCollector(agent, generator, load_env_factory("guess_number"), CollectorConfig(
            group_size=settings.group_size, max_concurrent_episodes=settings.max_concurrent_episodes,
            rollout=rollout))
        loop = Orchestrator(
            learner=learner, generator=generator, collector=collector,
            buffer=ReplayBuffer(BufferConfig(max_policy_age=settings.max_policy_age, seed=settings.seed)),
            config=OrchestratorConfig(mode=mode, steps=settings.steps, groups_per_step=settings.groups_per_step),
        )
        records: list[dict[str, Any]] = []
        episodes, tokens = collector.stats.episodes, collector.stats.completion_tokens
        t0 = last = time.perf_counter()
        async for report in loop.run():
            now = time.perf_counter()
            stats = collector.stats
            trained = report.get("batch/groups", 0.0) * settings.group_size
            records.append({
                "step": int(report["step"]),
                "t_s": now - t0,
                "wall_s": now - last,
                "trained_episodes": trained,
                "generated_episodes": stats.episodes - episodes,
                "completion_tokens": stats.completion_tokens - tokens,
                "loss_tokens": report.get("loss/tokens", 0.0),
                "trained_sequences": report.get("batch/trained_sequences", 0.0),
                "step_s": report["time/step_s"],
                "train_s": report["time/train_s"],
                "wait_s": report["time/wait_s"],
                "push_s": report["time/push_s"],
                "util_learner": report["util/learner"],
                "util_generator": report["util/generator"],
                "policy_age_mean": report["policy_age/mean"],
                "policy_age_max": report["policy_age/max"],
                "reward_mean": report["reward/mean"],
                "success_rate": report["success/rate"],
                "version": report["version"],
                "degenerate_groups": report["batch/degenerate_groups"],
            })
            episodes, tokens, last = stats.episodes, stats.completion_tokens, now
            log(f"  {mode} step {records[-1]['step']:2d}: {records[-1]['wall_s']:5.2f} s, "
                f"train {report['time/train_s']:.2f} s, wait {report['time/wait_s']:.2f} s, "
                f"age max {report['policy_age/max']:.0f}, reward {report['reward/mean']:.3f}")
        failed = collector.stats.failed
    return {
        "mode": mode,
        "threads": threads,
        "learner_build_s": learner_build_s,
        "engine_start_s": engine_start_s,
        "failed_episodes": failed,
        "final_version": learner.version,
        "steps": records,
    }


def summarize(run: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """The measured numbers of one run: its steps after the first ``warmup_steps``.

    >>> steps = [{"step": i, "t_s": 2.0 * i, "wall_s": 2.0, "trained_episodes": 8, "generated_episodes": 8,
    ...           "completion_tokens": 40, "loss_tokens": 30, "step_s": 2.0, "util_learner": 0.5,
    ...           "util_generator": 0.75, "policy_age_mean": 0.5, "policy_age_max": 1.0, "reward_mean": 0.1,
    ...           "success_rate": 0.0} for i in (1, 2, 3)]
    >>> row = summarize({"mode": "async", "threads": 2, "steps": steps}, warmup_steps=1)
    >>> row["samples_per_s"], row["trained_tokens_per_s"], row["learner_idle"], row["generator_idle"]
    (4.0, 15.0, 0.5, 0.25)
    """
    steps = run["steps"]
    measured = steps[warmup_steps:]
    if not measured:
        raise ValueError(f"run has {len(steps)} steps, none after the {warmup_steps} warm-up steps")
    start = steps[warmup_steps - 1]["t_s"] if warmup_steps > 0 else 0.0
    wall = measured[-1]["t_s"] - start

    def total(key: str) -> float:
        return float(sum(s[key] for s in measured))

    def mean(key: str) -> float:
        return statistics.fmean(s[key] for s in measured)

    return {
        "mode": run["mode"],
        "threads": run["threads"],
        "measured_steps": len(measured),
        "wall_s": wall,
        "samples_per_s": total("trained_episodes") / wall,
        "generated_per_s": total("generated_episodes") / wall,
        "trained_tokens_per_s": total("loss_tokens") / wall,
        "completion_tokens_per_s": total("completion_tokens") / wall,
        "step_s": mean("step_s"),
        "learner_idle": min(1.0, max(0.0, 1.0 - mean("util_learner"))),
        "generator_idle": min(1.0, max(0.0, 1.0 - mean("util_generator"))),
        "policy_age_mean": mean("policy_age_mean"),
        "policy_age_max": max(s["policy_age_max"] for s in measured),
        "reward_first": steps[0]["reward_mean"],
        "reward_end": measured[-1]["reward_mean"],
        "reward_measured_mean": mean("reward_mean"),
        "success_end": measured[-1]["success_rate"],
    }


_MEAN_KEYS = ("wall_s", "samples_per_s", "generated_per_s", "trained_tokens_per_s", "completion_tokens_per_s",
              "step_s", "learner_idle", "generator_idle", "policy_age_mean", "reward_first", "reward_end",
              "reward_measured_mean", "success_end")


def aggregate(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (mode, threads): the mean over repeats (``policy_age_max``: the max), with
    the per-repeat samples/s kept under ``samples_per_s_repeats``."""
    rows = []
    keys = list(dict.fromkeys((s["mode"], s["threads"]) for s in summaries))
    for mode, threads in keys:
        group = [s for s in summaries if s["mode"] == mode and s["threads"] == threads]
        row: dict[str, Any] = {"mode": mode, "threads": threads, "repeats": len(group),
                               "measured_steps": sum(s["measured_steps"] for s in group)}
        row.update({k: statistics.fmean(s[k] for s in group) for k in _MEAN_KEYS})
        row["policy_age_max"] = max(s["policy_age_max"] for s in group)
        row["samples_per_s_repeats"] = [s["samples_per_s"] for s in group]
        rows.append(row)
    return rows


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """async / sync per threads setting, where both modes ran."""
    by = {(r["mode"], r["threads"]): r for r in rows}
    out = []
    for threads in dict.fromkeys(r["threads"] for r in rows):
        a, s = by.get(("async", threads)), by.get(("sync", threads))
        if a is None or s is None:
            continue
        out.append({"threads": threads,
                    "samples_per_s": a["samples_per_s"] / s["samples_per_s"],
                    "trained_tokens_per_s": (a["trained_tokens_per_s"] / s["trained_tokens_per_s"]
                                             if s["trained_tokens_per_s"] else None),
                    "step_s": a["step_s"] / s["step_s"]})
    return out


def format_tables(rows: Sequence[dict[str, Any]], ratio_rows: Sequence[dict[str, Any]]) -> str:
    lines = [format_table(rows, [
        Column("mode", "mode"), Column("threads", "threads"),
        Column("samples/s", "samples_per_s", ".2f"), Column("gen eps/s", "generated_per_s", ".2f"),
        Column("trained tok/s", "trained_tokens_per_s", ",.0f"), Column("step s", "step_s", ".2f"),
        Column("learner idle", "learner_idle", ".2f"), Column("gen idle", "generator_idle", ".2f"),
        Column("age mean", "policy_age_mean", ".2f"), Column("age max", "policy_age_max", ".0f"),
        Column("reward first", "reward_first", ".3f"), Column("reward end", "reward_end", ".3f"),
    ])]
    for r in ratio_rows:
        lines.append(f"async / sync (threads {r['threads']}): samples/s x{r['samples_per_s']:.2f}, "
                     f"step time x{r['step_s']:.2f}")
    return "\n".join(lines)


# --- the command line --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 warm-up + 3 measured steps per mode")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps excluded (default 2; --quick 1)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per mode (default 6; --quick 3)")
    p.add_argument("--repeats", type=int, default=1, help="runs per mode, order alternating (default 1)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="loop modes (default: both)")
    p.add_argument("--generator", choices=GENERATORS, default="vllm", help="generator (default vllm)")
    p.add_argument("--threads-learner", type=int, nargs="+", default=None, metavar="N",
                   help="torch.set_num_threads of this process (the learner); several values run every "
                        "mode once per value (default: torch's default)")
    p.add_argument("--model", default="tiny", help="model name or HF folder (default tiny)")
    p.add_argument("--warm-start", type=int, default=75, metavar="STEPS",
                   help="supervised steps on guess_number demonstrations first, cached (default 75; "
                        "0: the model as it is; the random tiny model then barely trains)")
    p.add_argument("--groups-per-step", type=int, default=8, help="task groups per learner step (default 8)")
    p.add_argument("--group-size", type=int, default=8, help="episodes per task (default 8)")
    p.add_argument("--max-concurrent-episodes", type=int, default=128, help="episodes in flight (default 128)")
    p.add_argument("--lr", type=float, default=5e-4, help="learning rate (default 5e-4)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"JSON output path (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; returns the exit code (1 when an episode failed)."""
    args = build_parser().parse_args(argv)
    try:
        settings = BenchSettings(
            model=args.model, warm_start_steps=args.warm_start, generator=args.generator, modes=tuple(dict.fromkeys(args.modes)), quick=args.quick,
            warmup_steps=args.warmup, measured_steps=args.steps, repeats=args.repeats,
            threads=tuple(dict.fromkeys(args.threads_learner or [None])), groups_per_step=args.groups_per_step,
            group_size=args.group_size, max_concurrent_episodes=args.max_concurrent_episodes, lr=args.lr,
        )
    except ValueError as e:
        raise SystemExit(f"async_vs_sync: {e}") from None
    import torch

    run = BenchRun("async_vs_sync", argv)
    if (note := run.busy_note()) is not None:
        _log(note)
    default_threads = torch.get_num_threads()
    model_path = warm_started_model(settings.model, settings.warm_start_steps, settings.seed)
    assert settings.warmup_steps is not None
    _log(f"async_vs_sync: {settings.model} (warm start {settings.warm_start_steps} steps) with {settings.generator}, modes {list(settings.modes)}, "
         f"{settings.warmup_steps} warm-up + {settings.measured_steps} measured steps, "
         f"{settings.groups_per_step} groups x {settings.group_size} episodes per step, "
         f"{settings.repeats} repeat(s); torch threads default {default_threads}")

    runs: list[dict[str, Any]] = []
    for threads_setting in settings.threads:
        threads = threads_setting or default_threads
        for repeat in range(settings.repeats):
            order = settings.modes if repeat % 2 == 0 else tuple(reversed(settings.modes))
            for mode in order:
                _log(f"{mode} (threads {threads}, repeat {repeat + 1}/{settings.repeats})")
                # Before the run's event loop exists: its worker threads (the learner's
                # train_step runs in one) take torch's thread count when they first use torch.
                torch.set_num_threads(threads)
                loop_mode: Mode = "async" if mode == "async" else "sync"
                result = asyncio.run(run_mode(settings, loop_mode, model_path=model_path, threads=threads))
                result["repeat"] = repeat
                result["summary"] = summarize(result, settings.warmup_steps)
                runs.append(result)
    torch.set_num_threads(default_threads)

    rows = aggregate([r["summary"] for r in runs])
    ratio_rows = ratios(rows)
    print()
    print(format_tables(rows, ratio_rows))
    failed = sum(r["failed_episodes"] for r in runs)
    report = {
        **run.header(),
        "settings": {**dataclasses.asdict(settings), "steps_per_run": settings.steps, "model_path": model_path,
                     "default_threads": default_threads, "env": "guess_number (in-process)",
                     "samples": "episodes trained on (the learner's consumption)",
                     "trained_tokens": "loss tokens (sampled completion tokens) trained"},
        "rows": rows,
        "ratios": ratio_rows,
        "runs": runs,
        "failed_episodes": failed,
    }
    return run.finish(report, args.out, failed_episodes=failed)


if __name__ == "__main__":
    sys.exit(main())
