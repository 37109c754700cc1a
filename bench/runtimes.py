"""Local vs Monarch runtime: the same short GRPO run with ``runtime: local`` and ``runtime: monarch``.

Both runs go through the app itself (``apps.agent_grpo.train``) with the same overrides, so
they differ only in where the parts run::

    runtime: local     learner, env sessions and the training loop in this process; one vLLM
                       engine (its engine core in its own subprocess, as always)
    runtime: monarch   monarch.generator_replicas=2 vLLM replicas behind one Service (sticky
                       routing), the learner in monarch.learner_procs=1 process, the envs in
                       monarch.env_procs=1 process: Monarch actors on a local process mesh

The policy is the tiny model after ``--warm-start`` supervised steps on guess_number
demonstrations (cached, shared with ``bench/async_vs_sync.py``; 0: the random model), and
``env_kwargs={progress_reward: 0.5}`` gives partial credit for closer guesses, so groups rarely
score all alike. The first ``--warmup`` learner steps fill the pipeline and are excluded; over
the ``--steps`` measured steps (from each run's ``metrics.jsonl``) the bench reports, per runtime:

- ``samples/s``: episodes trained on (``batch/groups x group_size``) per second of wall time;
  ``gen tok/s``: completion tokens generated per second;
- ``step s``: mean learner step (``time/step_s``);
- ``push s``: median weight push as the loop sees it (``time/push_s``: learner -> every
  generator); ``gen push s``: the generator's part (monarch ``generator/push_s``: every replica
  loaded; local ``generator/update_s``: the engine's reload) and which ``transport`` carried it
  (monarch ``generator/weight_transport``: message, shm or rdma; local: in-process);
- ``engine s``: generator start (``generator/start_s``; monarch: processes + every replica's
  engine, in parallel); ``setup s``: the run's wall time outside training (learner and engine
  start, held-out evaluations, shutdown);
- failed episodes (env or generator errors; the bench exits 1 when any failed), and for monarch
  replica deaths and retried calls.

The ratios monarch / local follow. Then the actor-call overhead: ``--overhead-calls`` no-op
calls, one at a time, through a :class:`~forge_env.monarch.Service` of :class:`NoopActor`
(one replica, sticky routing), straight to a raw Monarch actor (``actor.noop.call_one()``),
and to a plain in-process ``async`` method: median and p90 per call in microseconds.

Usage (from the repository root)::

    python bench/runtimes.py                  # 1 warm-up + 5 measured steps per runtime, ~6 min
    python bench/runtimes.py --quick          # 1 + 2 steps, no evaluation, 200 overhead calls
    python bench/runtimes.py --repeats 2      # order alternates: local, monarch, monarch, local
    python bench/runtimes.py --set monarch.threads_per_proc=1 --out /tmp/runtimes_t1.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python bench/runtimes.py` puts bench/ (not the repo root) on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# forge_env.monarch before monarch: it sets the supervision poll period Monarch reads on import.
import forge_env.monarch  # noqa: E402,F401
from monarch.actor import Actor, endpoint  # noqa: E402

from bench._report import RESULTS_DIR, BenchRun, Column, format_table  # noqa: E402

__all__ = [
    "BenchSettings", "NoopActor", "aggregate", "build_parser", "main", "measure_call_overhead", "ratios",
    "run_overrides", "run_runtime", "summarize",
]

DEFAULT_OUT = RESULTS_DIR / "runtimes.json"
RUNTIMES: tuple[str, ...] = ("local", "monarch")
TRANSPORT_NAMES = {0: "message", 1: "shm", 2: "rdma"}
"""``generator/weight_transport`` codes of a MonarchGenerator."""


def _log(text: str) -> None:
    print(text, flush=True)


# --- the trivial actor of the call-overhead measurement -------------------------------------------


class NoopActor(Actor):
    """An actor whose ``noop`` endpoint returns at once: what remains is the cost of a call.

    Spawned by :func:`measure_call_overhead` in other processes, which import it as
    ``bench.runtimes.NoopActor`` (with the repository root on their ``PYTHONPATH``)::

        group = await start_procs(1, name="noop", env={"PYTHONPATH": str(REPO_ROOT)})
        actor = group.procs.spawn("noop", NoopActor)
        await actor.noop.call_one()
    """

    @endpoint
    async def noop(self) -> None:
        return None


class _PlainNoop:
    """The same no-op as a plain object in this process: the baseline of an ``await``."""

    async def noop(self) -> None:
        return None


def _importable_noop_actor() -> type[NoopActor]:
    """``NoopActor`` as ``bench.runtimes.NoopActor`` even when this file runs as ``__main__``:
    the actor's processes find its class by module path."""
    module = importlib.import_module("bench.runtimes")
    cls: type[NoopActor] = module.NoopActor
    return cls


def _percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by linear interpolation between the closest ranks.

    >>> _percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9)
    4.6
    """
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def measure_call_overhead(calls: int, *, warmup: int = 50, chunk: int = 20,
                                log: Callable[[str], None] = _log) -> list[dict[str, Any]]:
    """Round-trip time of a no-op call three ways; one row per way with ``median_us``, ``p90_us``,
    ``mean_us``, ``vs_plain`` and ``vs_raw`` (its median / the plain call's or the raw actor's).

    The ways take turns in chunks of ``chunk`` calls, so that a load change on the machine
    hits all three alike; ``warmup`` calls of each come first and are not counted. Every call
    waits for the one before (one call in flight: latency, not throughput).
    """
    from forge_env.monarch import Service, ServiceConfig, start_procs

    actor_cls = _importable_noop_actor()
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path}
    plain = _PlainNoop()
    started = time.perf_counter()
    # No background health checks: their pings would share the replica with the measured calls.
    service = await Service.start(actor_cls, config=ServiceConfig(replicas=1, routing="sticky", env=env,
                                                                  health_check_interval_s=0),
                                  name="bench_noop")
    try:
        group = await start_procs(1, name="bench-noop-raw", env=env)
        try:
            raw = group.procs.spawn("noop_raw", actor_cls)
            log(f"call overhead: actor processes up in {time.perf_counter() - started:.1f} s; "
                f"{calls} calls per way")

            async def plain_call() -> None:
                await plain.noop()

            async def raw_call() -> None:
                await raw.noop.call_one()

            async def service_call() -> None:
                await service.call("noop", session="bench")

            ways: dict[str, Callable[[], Awaitable[None]]] = {
                "plain async call": plain_call,
                "raw Monarch actor": raw_call,
                "Service (1 replica)": service_call,
            }
            samples: dict[str, list[float]] = {name: [] for name in ways}
            for fn in ways.values():
                for _ in range(warmup):
                    await fn()
            done = 0
            while done < calls:
                n = min(chunk, calls - done)
                for name, fn in ways.items():
                    out = samples[name]
                    for _ in range(n):
                        t0 = time.perf_counter_ns()
                        await fn()
                        out.append((time.perf_counter_ns() - t0) / 1e3)
                done += n
        finally:
            await group.stop()
    finally:
        await service.stop()
    plain_median = statistics.median(samples["plain async call"])
    raw_median = statistics.median(samples["raw Monarch actor"])
    rows = []
    for name, values in samples.items():
        median = statistics.median(values)
        rows.append({"way": name, "calls": len(values), "median_us": median,
                     "p90_us": _percentile(values, 0.9), "mean_us": statistics.fmean(values),
                     "vs_plain": median / plain_median if plain_median else None,
                     "vs_raw": median / raw_median if raw_median else None})
    return rows


# --- the training runs -----------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True, slots=True)
class BenchSettings:
    """What one bench run trains, and how it measures.

    >>> s = BenchSettings(quick=True)
    >>> s.warmup_steps, s.measured_steps, s.eval_episodes, s.overhead_calls
    (1, 2, 0, 200)
    """

    model: str = "tiny"
    """Model name or HF folder (:func:`forge_env.models.resolve_model`)."""
    warm_start_steps: int = 75
    """Supervised steps on guess_number demonstrations before the bench (cached); 0: none."""
    runtimes: tuple[str, ...] = RUNTIMES
    """Runtimes to run, in this order on even repeats (reversed on odd ones)."""
    quick: bool = False
    """1 warm-up + 2 measured steps, no evaluation, 200 overhead calls, unless those are given."""
    warmup_steps: int | None = None
    """Learner steps excluded from the measurement (None: 1)."""
    measured_steps: int | None = None
    """Learner steps measured (None: 5, quick 2)."""
    repeats: int = 1
    """Runs of every runtime; the table shows their mean."""
    groups_per_step: int = 8
    group_size: int = 8
    eval_episodes: int | None = None
    """Held-out episodes before and after training (not measured; None: 16, quick 0)."""
    generator_replicas: int = 2
    learner_procs: int = 1
    env_procs: int = 1
    overhead_calls: int | None = None
    """No-op calls per way in the call-overhead measurement (None: 2000, quick 200; 0: skip it)."""
    overrides: tuple[str, ...] = ()
    """Extra ``key=value`` config overrides of both runtimes' runs (e.g. ``monarch.threads_per_proc=1``)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warmup_steps is None:
            self.warmup_steps = 1
        if self.measured_steps is None:
            self.measured_steps = 2 if self.quick else 5
        if self.eval_episodes is None:
            self.eval_episodes = 0 if self.quick else 16
        if self.overhead_calls is None:
            self.overhead_calls = 200 if self.quick else 2000
        for name in ("warmup_steps", "warm_start_steps", "eval_episodes", "overhead_calls", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("measured_steps", "repeats", "groups_per_step", "group_size", "generator_replicas",
                     "learner_procs", "env_procs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = [r for r in self.runtimes if r not in RUNTIMES]
        if unknown or not self.runtimes:
            raise ValueError(f"runtimes must be some of {list(RUNTIMES)}, got {list(self.runtimes)}")
        bad = [o for o in self.overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must be key=value (e.g. monarch.threads_per_proc=1), got {bad}")

    @property
    def steps(self) -> int:
        """Learner steps of one run (warm-up + measured)."""
        assert self.warmup_steps is not None and self.measured_steps is not None
        return self.warmup_steps + self.measured_steps


def run_overrides(
    settings: BenchSettings, runtime: str, *, model_path: str, output_dir: str | os.PathLike[str]
) -> list[str]:
    """The app's config overrides of one run: the same for both runtimes but ``runtime=``.

    >>> o = run_overrides(BenchSettings(quick=True), "monarch", model_path="/m", output_dir="/tmp/r")
    >>> "runtime=monarch" in o and "monarch.generator_replicas=2" in o and "orchestrator.steps=3" in o
    True
    """
    return [
        f"runtime={runtime}",
        f"model={model_path}",
        f"output_dir={os.fspath(output_dir)}",
        f"seed={settings.seed}",
        "warm_start.enabled=false",  # the bench warm-starts once, before both runs
        "env_kwargs={progress_reward: 0.5}",
        f"orchestrator.steps={settings.steps}",
        f"orchestrator.groups_per_step={settings.groups_per_step}",
        "orchestrator.max_minutes=null",
        f"rollout.group_size={settings.group_size}",
        f"eval.episodes={settings.eval_episodes}",
        "eval.every=0",  # nothing but training between two steps' records
        "checkpoint.every=0",
        "checkpoint.save_final_hf=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        f"monarch.generator_replicas={settings.generator_replicas}",
        f"monarch.learner_procs={settings.learner_procs}",
        f"monarch.env_procs={settings.env_procs}",
        *settings.overrides,
    ]


def _train_records(path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("kind") == "train"]


async def run_runtime(settings: BenchSettings, runtime: str, *, model_path: str, output_dir: Path,
                      out: TextIO | None = None) -> dict[str, Any]:
    """One training run of the app with ``runtime``; its per-step records and summary numbers."""
    from apps.agent_grpo._app import train
    from apps.agent_grpo._config import load_config

    config = load_config(None, run_overrides(settings, runtime, model_path=model_path, output_dir=output_dir))
    started = time.perf_counter()
    result = await train(config, out=out)
    total_s = time.perf_counter() - started
    summary = result.summary
    steps = []
    for r in _train_records(output_dir / "metrics.jsonl"):
        steps.append({
            "step": int(r["step"]),
            "elapsed_s": float(r["elapsed_s"]),
            "trained_episodes": float(r.get("batch/groups", 0.0)) * settings.group_size,
            "completion_tokens": float(r.get("throughput/completion_tokens", 0.0)),
            "step_s": float(r["time/step_s"]),
            "train_s": float(r.get("time/train_s", 0.0)),
            "push_s": float(r["time/push_s"]),
            # monarch: copy + every replica loaded; local: the engine's write + reload.
            "generator_push_s": float(r.get("generator/push_s", r.get("generator/update_s", 0.0))),
            "weight_transport": r.get("generator/weight_transport"),
            "failed": float(r.get("episode/failed", 0.0)),
            "reward_mean": float(r.get("reward/mean", 0.0)),
        })
    gen = summary.get("generator") or {}
    code = gen.get("generator/weight_transport")
    transport = "in-process"
    if runtime == "monarch":
        transport = TRANSPORT_NAMES.get(int(code), "unknown") if code is not None else "unknown"
    return {
        "runtime": runtime,
        "output_dir": str(output_dir),
        "total_s": total_s,
        "train_seconds": float(summary["train_seconds"]),
        "wall_seconds": float(summary["wall_seconds"]),
        "engine_start_s": float(gen.get("generator/start_s", 0.0)),
        "weight_transport": transport,
        "failed_episodes": int(summary["collector"]["failed"]),
        "replica_deaths": float(gen.get("service/generator/replica_deaths", 0.0)),
        "retries": float(gen.get("service/generator/retries", 0.0)),
        "baseline_success": summary.get("baseline_success"),
        "final_success": summary.get("final_success"),
        "policy_version": summary.get("policy_version"),
        "steps": steps,
    }


def summarize(run: dict[str, Any], warmup_steps: int) -> dict[str, Any]:
    """The measured numbers of one run: its steps after the first ``warmup_steps``.

    >>> steps = [{"step": i, "elapsed_s": 10.0 + 2 * i, "trained_episodes": 8, "completion_tokens": 40,
    ...           "step_s": 2.0, "push_s": 0.1 * i, "generator_push_s": 0.05, "failed": 0} for i in (1, 2, 3)]
    >>> run = {"runtime": "local", "steps": steps, "engine_start_s": 9.0, "wall_seconds": 60.0,
    ...        "train_seconds": 7.0, "weight_transport": "in-process", "failed_episodes": 0}
    >>> row = summarize(run, warmup_steps=1)
    >>> row["samples_per_s"], row["tokens_per_s"], round(row["push_s"], 2), row["setup_s"]
    (4.0, 20.0, 0.25, 53.0)
    """
    steps = run["steps"]
    measured = steps[warmup_steps:]
    if not measured:
        raise ValueError(f"run has {len(steps)} steps, none after the {warmup_steps} warm-up steps")
    # The window opens when the last warm-up step was logged (or the first step began).
    start = (steps[warmup_steps - 1]["elapsed_s"] if warmup_steps > 0
             else steps[0]["elapsed_s"] - steps[0]["step_s"])
    wall = max(measured[-1]["elapsed_s"] - start, 1e-9)
    return {
        "runtime": run["runtime"],
        "measured_steps": len(measured),
        "wall_s": wall,
        "samples_per_s": sum(s["trained_episodes"] for s in measured) / wall,
        "tokens_per_s": sum(s["completion_tokens"] for s in measured) / wall,
        "step_s": statistics.fmean(s["step_s"] for s in measured),
        "push_s": statistics.median(s["push_s"] for s in measured),
        "generator_push_s": statistics.median(s["generator_push_s"] for s in measured),
        "weight_transport": run["weight_transport"],
        "engine_start_s": run["engine_start_s"],
        "setup_s": run["wall_seconds"] - run["train_seconds"],
        "failed_episodes": run["failed_episodes"],
        "replica_deaths": run.get("replica_deaths", 0.0),
        "retries": run.get("retries", 0.0),
    }


_MEAN_KEYS = ("wall_s", "samples_per_s", "tokens_per_s", "step_s", "push_s", "generator_push_s",
              "engine_start_s", "setup_s")
_SUM_KEYS = ("failed_episodes", "replica_deaths", "retries", "measured_steps")


def aggregate(summaries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per runtime: the mean over its repeats (counts summed), the per-repeat samples/s
    kept under ``samples_per_s_repeats``.

    >>> a = {"runtime": "local", "weight_transport": "in-process", **dict.fromkeys(_MEAN_KEYS, 1.0),
    ...      **dict.fromkeys(_SUM_KEYS, 1)}
    >>> b = {**a, "samples_per_s": 3.0}
    >>> row, = aggregate([a, b])
    >>> row["samples_per_s"], row["repeats"], row["failed_episodes"]
    (2.0, 2, 2)
    """
    rows = []
    for runtime in dict.fromkeys(s["runtime"] for s in summaries):
        group = [s for s in summaries if s["runtime"] == runtime]
        row: dict[str, Any] = {"runtime": runtime, "repeats": len(group),
                               "weight_transport": group[0]["weight_transport"]}
        row.update({k: statistics.fmean(s[k] for s in group) for k in _MEAN_KEYS})
        row.update({k: sum(s[k] for s in group) for k in _SUM_KEYS})
        row["samples_per_s_repeats"] = [s["samples_per_s"] for s in group]
        rows.append(row)
    return rows


_RATIO_KEYS = ("samples_per_s", "tokens_per_s", "step_s", "push_s", "generator_push_s", "engine_start_s",
               "setup_s")


def ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``monarch / local`` of every measured number (a list of one row; empty without both runtimes).

    >>> r = ratios([{"runtime": "local", **dict.fromkeys(_RATIO_KEYS, 2.0)},
    ...             {"runtime": "monarch", **dict.fromkeys(_RATIO_KEYS, 1.0)}])
    >>> r[0]["samples_per_s"], r[0]["ratio"]
    (0.5, 'monarch / local')
    """
    by = {r["runtime"]: r for r in rows}
    if "local" not in by or "monarch" not in by:
        return []
    local, monarch = by["local"], by["monarch"]
    out: dict[str, Any] = {"ratio": "monarch / local"}
    for key in _RATIO_KEYS:
        out[key] = monarch[key] / local[key] if local[key] else None
    return [out]


RUN_COLUMNS = [
    Column("runtime", "runtime"),
    Column("samples/s", "samples_per_s", ".2f"),
    Column("gen tok/s", "tokens_per_s", ".1f"),
    Column("step s", "step_s", ".2f"),
    Column("push s", "push_s", ".3f"),
    Column("gen push s", "generator_push_s", ".3f"),
    Column("transport", "weight_transport"),
    Column("engine s", "engine_start_s", ".1f"),
    Column("setup s", "setup_s", ".1f"),
    Column("failed", "failed_episodes", "d"),
]
RATIO_COLUMNS = [
    Column("ratio", "ratio"),
    Column("samples/s", "samples_per_s", ".2f", suffix="x"),
    Column("gen tok/s", "tokens_per_s", ".2f", suffix="x"),
    Column("step s", "step_s", ".2f", suffix="x"),
    Column("push s", "push_s", ".2f", suffix="x"),
    Column("gen push s", "generator_push_s", ".2f", suffix="x"),
    Column("engine s", "engine_start_s", ".2f", suffix="x"),
    Column("setup s", "setup_s", ".2f", suffix="x"),
]
OVERHEAD_COLUMNS = [
    Column("call (no-op, one in flight)", "way"),
    Column("median us", "median_us", ",.1f"),
    Column("p90 us", "p90_us", ",.1f"),
    Column("mean us", "mean_us", ",.1f"),
    Column("vs plain", "vs_plain", ",.0f", suffix="x"),
    Column("vs raw actor", "vs_raw", ".2f", suffix="x"),
]


def format_tables(rows: Sequence[dict[str, Any]], ratio_rows: Sequence[dict[str, Any]],
                  overhead: Sequence[dict[str, Any]]) -> str:
    parts = [format_table(rows, RUN_COLUMNS)]
    if ratio_rows:
        parts.append(format_table(ratio_rows, RATIO_COLUMNS))
    if overhead:
        parts.append(format_table(overhead, OVERHEAD_COLUMNS))
    return "\n\n".join(parts)


# --- main ------------------------------------------------------------------------------------------


async def _bench(settings: BenchSettings, model_path: str, runs_dir: Path, out: TextIO | None,
                 log: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    assert settings.overhead_calls is not None
    overhead: list[dict[str, Any]] = []
    if settings.overhead_calls:
        overhead = await measure_call_overhead(settings.overhead_calls, log=log)
    runs: list[dict[str, Any]] = []
    for repeat in range(settings.repeats):
        order = settings.runtimes if repeat % 2 == 0 else tuple(reversed(settings.runtimes))
        for runtime in order:
            log(f"\n== runtime {runtime} (repeat {repeat + 1}/{settings.repeats})")
            result = await run_runtime(settings, runtime, model_path=model_path,
                                       output_dir=runs_dir / f"{runtime}-{repeat}", out=out)
            result["repeat"] = repeat
            assert settings.warmup_steps is not None
            result["summary"] = summarize(result, settings.warmup_steps)
            runs.append(result)
    return runs, overhead


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/runtimes.py",
        description="The same short GRPO run with runtime: local and runtime: monarch (2 generator "
                    "replicas), plus the actor-call overhead: samples/s, weight push latency, engine start.")
    p.add_argument("--quick", action="store_true",
                   help="1 warm-up + 2 measured steps per runtime, no evaluation, 200 overhead calls")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps excluded (default 1)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per run (default 5; --quick 2)")
    p.add_argument("--repeats", type=int, default=1, help="runs per runtime, order alternating (default 1)")
    p.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES),
                   help="runtimes (default: both)")
    p.add_argument("--model", default="tiny", help="model name or HF folder (default tiny)")
    p.add_argument("--warm-start", type=int, default=75, metavar="STEPS",
                   help="supervised steps on guess_number demonstrations first, cached (default 75; 0: none)")
    p.add_argument("--groups-per-step", type=int, default=8, help="task groups per learner step (default 8)")
    p.add_argument("--group-size", type=int, default=8, help="episodes per task (default 8)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="held-out episodes before and after training, not measured (default 16; --quick 0)")
    p.add_argument("--generator-replicas", type=int, default=2, help="monarch generator replicas (default 2)")
    p.add_argument("--learner-procs", type=int, default=1, help="monarch learner processes (default 1)")
    p.add_argument("--env-procs", type=int, default=1, help="monarch env processes (default 1)")
    p.add_argument("--overhead-calls", type=int, default=None,
                   help="no-op calls per way in the call-overhead measurement (default 2000; --quick 200; "
                        "0: skip)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override of both runs (repeatable), e.g. monarch.threads_per_proc=1")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep the runs' output folders here (default: a temporary folder, removed)")
    p.add_argument("--quiet", action="store_true", help="no per-step progress lines of the runs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"JSON output path (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench; returns the exit code (1 when an episode failed)."""
    args = build_parser().parse_args(argv)
    try:
        settings = BenchSettings(
            model=args.model, warm_start_steps=args.warm_start, runtimes=tuple(dict.fromkeys(args.runtimes)),
            quick=args.quick, warmup_steps=args.warmup, measured_steps=args.steps, repeats=args.repeats,
            groups_per_step=args.groups_per_step, group_size=args.group_size,
            eval_episodes=args.eval_episodes,
            generator_replicas=args.generator_replicas, learner_procs=args.learner_procs,
            env_procs=args.env_procs, overhead_calls=args.overhead_calls, overrides=tuple(args.overrides),
        )
    except ValueError as e:
        raise SystemExit(f"runtimes: {e}") from None
    from bench.async_vs_sync import warm_started_model

    run = BenchRun("runtimes", argv)
    if (note := run.busy_note()) is not None:
        _log(note)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # as the app's CLI: no per-reload warnings
    model_path = warm_started_model(settings.model, settings.warm_start_steps, settings.seed)
    _log(f"runtimes: {settings.model} (warm start {settings.warm_start_steps} steps), runtimes "
         f"{list(settings.runtimes)}, {settings.warmup_steps} warm-up + {settings.measured_steps} measured "
         "steps, "
         f"{settings.groups_per_step} groups x {settings.group_size} episodes per step, {settings.repeats} "
         f"repeat(s); monarch: {settings.generator_replicas} generator replicas, {settings.learner_procs} "
         f"learner proc(s), {settings.env_procs} env proc(s)")

    out = open(os.devnull, "w") if args.quiet else None  # closed below
    try:
        if args.runs_dir is not None:
            args.runs_dir.mkdir(parents=True, exist_ok=True)
            runs, overhead = asyncio.run(_bench(settings, model_path, args.runs_dir, out, _log))
        else:
            with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
                runs, overhead = asyncio.run(_bench(settings, model_path, Path(tmp), out, _log))
    finally:
        if out is not None:
            out.close()

    rows = aggregate([r["summary"] for r in runs])
    ratio_rows = ratios(rows)
    print()
    print(format_tables(rows, ratio_rows, overhead))
    failed = sum(r["failed_episodes"] for r in runs)
    report = {
        **run.header(),
        "settings": {**dataclasses.asdict(settings), "steps_per_run": settings.steps,
                     "model_path": model_path, "env": "guess_number, env_kwargs={progress_reward: 0.5}",
                     "samples": "episodes trained on (batch/groups x group_size) per second of the measured "
                                "window",
                     "tokens": "completion tokens generated per second of the measured window",
                     "overrides_local": run_overrides(settings, "local", model_path=model_path,
                                                      output_dir="RUN"),
                     "overrides_monarch": run_overrides(settings, "monarch", model_path=model_path,
                                                        output_dir="RUN")},
        "rows": rows,
        "ratios": ratio_rows,
        "call_overhead": overhead,
        "runs": runs,
        "failed_episodes": failed,
    }
    return run.finish(report, args.out, failed_episodes=failed)


if __name__ == "__main__":
    sys.exit(main())
