"""``python -m apps.agent_grpo``: warm start, held-out baseline, GRPO, held-out final, plot.

Read :func:`train` top to bottom. The output folder (``output_dir=``) holds::

    config.yaml         the resolved config of the run
    warm_start/hf/      the warm-started policy (skipped when warm_start.enabled is false)
    checkpoints/        step_000010/ ... (learner + optimizer, buffer, task position, RNG)
    metrics.jsonl       one line per learner step and per evaluation
    tensorboard/        the same scalars for TensorBoard
    plot.png            reward and held-out success over learner steps
    summary.json        baseline_success, final_success, steps, timings, paths
    hf/                 the final policy as a Hugging Face folder

``--resume`` continues from the newest complete checkpoint of ``output_dir`` (a run killed at
any moment, ``kill -9`` included): the learner, optimizer, replay buffer, task stream and RNG
are restored; episodes that were generating when it died are played again.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from apps.agent_grpo._config import AgentGRPOConfig, ConfigError, load_config
from forge_env.rollout import EvalResult, open_env

__all__ = ["RunError", "TrainResult", "main", "run", "train"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class TrainResult:
    """What :func:`train` did."""

    output_dir: Path
    steps: int
    baseline: EvalResult | None
    final: EvalResult | None
    summary: dict[str, Any]


class RunError(RuntimeError):
    """The run cannot start as asked (the message says why and what to do)."""


async def train(config: AgentGRPOConfig, *, resume: bool = False, out: TextIO | None = None) -> TrainResult:
    """Run the whole job described by ``config`` (async).

    Example::

        config = load_config(None, ["orchestrator.steps=5", "output_dir=/tmp/run"])
        result = await train(config)
        result.summary["baseline_success"], result.summary["final_success"]
    """
    from transformers import AutoTokenizer

    from forge_env.checkpoint import CheckpointConfig, Checkpointer, rng_state, set_rng_state
    from forge_env.models import resolve_model
    from forge_env.orchestrator import Orchestrator
    from forge_env.rollout import RolloutCollector
    from forge_env.tracking import RunTracker, TrackingConfig

    out = out or sys.stdout
    started = time.monotonic()
    root = Path(config.output_dir)
    checkpointer = Checkpointer(CheckpointConfig(directory=str(root / "checkpoints"), keep=config.checkpoint.keep))
    latest = checkpointer.latest()
    if latest is not None and not resume:
        raise RunError(
            f"{root} already holds a run (checkpoint {latest.name}): pass --resume to continue it, "
            f"or set output_dir= to a new folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(config.to_yaml())
    _say(out, f"agent_grpo: {config.env} with {config.model}, {config.orchestrator.mode} GRPO, "
              f"{config.orchestrator.steps} steps -> {root}")

    # 1. The policy to start from: the warm-started folder, or the model itself.
    model_path = str(resolve_model(config.model))
    if config.warm_start.enabled:
        model_path = await _warm_start(config, model_path, root / "warm_start", out)

    # 2. Components: tokenizer + agent, envs, learner, generator, buffer, collector, loop.
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    state: dict[str, Any] = {}
    if resume and latest is not None:
        step, state = checkpointer.load(latest)
    elif resume:
        _say(out, f"--resume: no checkpoint in {root / 'checkpoints'} yet; starting the run from step 0")
    run_state: dict[str, Any] = dict(state.get("run", {}))

    async with (_learner(config, model_path, out) as learner, _env_source(config) as envs,
                _build_generator(config, model_path) as generator, _buffer(config, out) as buffer,
                _reference(config, model_path, out) as reference, _reward_workers(config, out) as rewards):
        if state:
            learner.load_state_dict(state["learner"])
            set_rng_state(state["rng"])
            _say(out, f"resuming from {latest} (learner step {step}, policy version {learner.version})")
        agent = await _make_agent(config, tokenizer, envs)
        collector = RolloutCollector(agent, generator, envs, config.rollout.collector_config())
        loop = Orchestrator(learner=learner, generator=generator, collector=collector, buffer=buffer,
                            config=config.orchestrator.orchestrator_config(),
                            advantage=config.advantage.advantage_config(), reference=reference, rewards=rewards)
        if "orchestrator" in state:
            await loop.load_state_dict(state["orchestrator"])
        else:  # a new run: metrics of an earlier attempt that never checkpointed go
            (root / "metrics.jsonl").unlink(missing_ok=True)
            (root / "wandb_run_id.txt").unlink(missing_ok=True)
            shutil.rmtree(root / "tensorboard", ignore_errors=True)
        tracker = RunTracker(
            TrackingConfig(output_dir=str(root), console=config.logging.console, jsonl=config.logging.jsonl,
                           tensorboard=config.logging.tensorboard, wandb=config.logging.wandb,
                           wandb_project=config.logging.wandb_project, run_name=root.name),
            total_steps=config.orchestrator.steps, out=out,
            # A resumed run drops what its killed tail logged after the checkpoint.
            resume_from_step=loop.step if state else None,
        )
        with tracker:
            # 3. Held-out baseline (once per run: a resumed run keeps the first one's).
            if "baseline" not in run_state:
                baseline = await _evaluate(config, agent, generator, envs)
                run_state["baseline"] = dataclasses.asdict(baseline) if baseline is not None else None
                if baseline is not None:
                    tracker.log(0, _eval_metrics(baseline), kind="eval")
            baseline = EvalResult(**run_state["baseline"]) if run_state.get("baseline") else None

            # 4. GRPO.
            train_started = time.monotonic()
            train_before = float(run_state.get("train_seconds", 0.0))
            deadline = None if config.orchestrator.max_minutes is None else (
                train_started + 60 * config.orchestrator.max_minutes - train_before)
            tracker.stop_by(deadline)   # the console's ETA counts down to whichever ends first
            tokens = float(run_state.get("completion_tokens", 0.0))
            async for report in loop.run():
                step = loop.step
                tokens += report["throughput/completion_tokens"]
                # Requests, weight pushes and (runtime: monarch) replica deaths, respawns, retries.
                report.update({k: v for k, v in generator.metrics.items() if isinstance(v, (int, float))})
                for part in (reference, rewards):  # the reference policy's / reward workers' own metrics
                    if part is not None:
                        report.update(part.metrics())
                tracker.log(step, report)
                run_state["train_seconds"] = train_before + time.monotonic() - train_started
                run_state["completion_tokens"] = tokens
                last = step == config.orchestrator.steps
                out_of_time = deadline is not None and time.monotonic() > deadline
                # The final evaluation follows the last step, or this one when time is up.
                if config.eval.every and step % config.eval.every == 0 and not (last or out_of_time):
                    result = await _evaluate(config, agent, generator, envs)
                    if result is not None:
                        tracker.log(step, _eval_metrics(result), kind="eval")
                if config.checkpoint.every and step % config.checkpoint.every == 0 and not last:
                    path = checkpointer.save(step, {
                        "learner": learner.state_dict(), "orchestrator": await loop.state_dict(),
                        "rng": rng_state(), "run": run_state,
                    })
                    tracker.print(f"checkpoint {path}")
                if out_of_time:
                    tracker.print(f"orchestrator.max_minutes={config.orchestrator.max_minutes} reached "
                                  f"after step {step}: stopping training")
                    break
            train_seconds = float(run_state.get("train_seconds", 0.0))

            # 5. Held-out final, the policy, the plot and the summary.
            final = await _evaluate(config, agent, generator, envs)
            if final is not None:
                tracker.log(loop.step, _eval_metrics(final), kind="eval")
            hf_path = None
            if config.checkpoint.save_final_hf:
                hf_path = _save_atomically(learner, root / "hf")
            summary = {
                "baseline_success": None if baseline is None else baseline.success_rate,
                "final_success": None if final is None else final.success_rate,
                "baseline": None if baseline is None else dataclasses.asdict(baseline),
                "final": None if final is None else dataclasses.asdict(final),
                "steps": loop.step,
                "policy_version": learner.version,
                "mode": config.orchestrator.mode,
                "runtime": config.runtime,
                "generator": dict(generator.metrics),
                "reference": None if reference is None else reference.metrics(),
                "reward_fn": None if rewards is None else rewards.metrics(),
                "wall_seconds": time.monotonic() - started,
                "train_seconds": train_seconds,
                "tokens_per_s": tokens / train_seconds if train_seconds else 0.0,
                "resumed": bool(state),
                "output_dir": str(root),
                "hf_path": None if hf_path is None else str(hf_path),
                "plot_path": None,
                "buffer": await loop.buffer.stats(),
                "collector": collector.stats.to_dict(),
            }
    if config.logging.plot and (root / "metrics.jsonl").exists():
        from forge_env.tracking import plot_run

        summary["plot_path"] = str(plot_run(
            root / "metrics.jsonl", root / "plot.png",
            title=f"{config.env}: {config.model}, {config.orchestrator.mode} GRPO",
            baseline=None if baseline is None else baseline.success_rate))
    from forge_env.tracking import format_summary, write_summary

    write_summary(root / "summary.json", summary)
    _say(out, format_summary(summary))
    return TrainResult(output_dir=root, steps=loop.step, baseline=baseline, final=final, summary=summary)


def _learner_config(config: AgentGRPOConfig, model_path: str) -> Any:
    return config.learner.learner_config(
        model_path, total_steps=config.orchestrator.steps, temperature=config.rollout.temperature,
        seed=config.seed, max_completion_tokens=config.rollout.max_turns * config.rollout.max_tokens)


@asynccontextmanager
async def _learner(config: AgentGRPOConfig, model_path: str, out: TextIO) -> AsyncIterator[Any]:
    """The GRPO learner: in this process, or (``runtime: monarch``) across ``monarch.learner_procs``
    Monarch processes behind the same interface, closed (its processes stopped) on exit."""
    learner_config = _learner_config(config, model_path)
    if config.runtime == "local":
        from forge_env.learner import Learner

        yield Learner(learner_config)
        return
    from forge_env.monarch import MonarchLearner

    _say(out, f"runtime monarch: learner on {config.monarch.learner_procs} process(es), "
              f"{config.monarch.generator_replicas} generator replica(s), {config.monarch.env_procs} env process(es)")
    learner = MonarchLearner(learner_config, procs=config.monarch.learner_procs,
                             threads_per_proc=config.monarch.threads_per_proc,
                             hosts=config.monarch.hosts_config())
    try:
        yield learner
    finally:
        await asyncio.to_thread(learner.close)


@asynccontextmanager
async def _buffer(config: AgentGRPOConfig, out: TextIO) -> AsyncIterator[Any]:
    """The replay buffer: in this process, or (``runtime: monarch`` with ``monarch.buffer_process``)
    a Monarch actor in a process of its own, stopped on exit."""
    buffer_config = config.buffer.buffer_config(config.seed)
    if config.runtime == "local" or not config.monarch.buffer_process:
        from forge_env.buffer import ReplayBuffer

        yield ReplayBuffer(buffer_config)
        return
    from forge_env.monarch import MonarchReplayBuffer

    async with MonarchReplayBuffer(buffer_config) as buffer:
        _say(out, f"runtime monarch: replay buffer in process {buffer.pid}")
        yield buffer


@asynccontextmanager
async def _reference(config: AgentGRPOConfig, model_path: str, out: TextIO) -> AsyncIterator[Any]:
    """The frozen reference policy for the KL term (``learner.loss.kl_coef > 0``), else None: in this
    process, or (``runtime: monarch``) ``monarch.reference_replicas`` processes behind one service."""
    if config.learner.loss.kl_coef <= 0:
        yield None
        return
    learner_config = _learner_config(config, model_path)
    if config.runtime == "local":
        from forge_env.learner import ReferencePolicy

        async with ReferencePolicy(learner_config) as reference:
            yield reference
        return
    from forge_env.monarch import MonarchReference

    mon = config.monarch
    _say(out, f"runtime monarch: reference policy on {mon.reference_replicas} process(es)")
    async with MonarchReference(learner_config, replicas=mon.reference_replicas,
                                threads_per_proc=mon.threads_per_proc, respawn=mon.respawn,
                                hosts=mon.hosts_config()) as reference:
        yield reference


@asynccontextmanager
async def _reward_workers(config: AgentGRPOConfig, out: TextIO) -> AsyncIterator[Any]:
    """The reward function's workers (``reward.fn``), else None: threads here, or (``runtime:
    monarch``) ``monarch.reward_replicas`` processes behind one service."""
    reward_config = config.reward.reward_config()
    if reward_config is None:
        yield None
        return
    if config.runtime == "local":
        from forge_env.reward import RewardWorkers

        async with RewardWorkers(reward_config) as workers:
            yield workers
        return
    from forge_env.monarch import MonarchRewardWorkers

    mon = config.monarch
    _say(out, f"runtime monarch: reward function {reward_config.fn} on {mon.reward_replicas} process(es)")
    async with MonarchRewardWorkers(reward_config, replicas=mon.reward_replicas, threads_per_proc=mon.threads_per_proc,
                                    respawn=mon.respawn, health_check_interval_s=mon.health_check_interval_s,
                                    hosts=mon.hosts_config()) as workers:
        yield workers


def _build_generator(config: AgentGRPOConfig, model_path: str) -> Any:
    """The generator (not started; use ``async with``): one engine here, or a service of
    ``monarch.generator_replicas`` replicas in their own processes."""
    if config.runtime == "local":
        return config.generator.build(model_path, config.seed)
    from forge_env.monarch import MonarchGenerator, ServiceConfig

    mon = config.monarch
    threads = {} if mon.threads_per_proc is None else {"OMP_NUM_THREADS": str(mon.threads_per_proc)}
    return MonarchGenerator(
        config.generator.generator_config(model_path, seed=config.seed),
        service=ServiceConfig(replicas=mon.generator_replicas, routing=mon.routing, respawn=mon.respawn,
                              health_check_interval_s=mon.health_check_interval_s, hosts=mon.hosts_config()),
        weight_transport=mon.weight_transport, env=threads,
    )


async def _warm_start(config: AgentGRPOConfig, model_path: str, folder: Path, out: TextIO) -> str:
    """Supervised warm start (apps.sft) once per run; a finished one is reused (on resume too)."""
    from apps.sft import sft

    hf = folder / "hf"
    if (hf / "config.json").exists():
        _say(out, f"warm start: reusing {hf}")
        return str(hf)
    sft_config = config.warm_start.sft_config(config, output_dir=None)
    sft_config.model = model_path
    _say(out, f"warm start: {sft_config.steps} supervised steps on {sft_config.env} demonstrations")
    result = await sft(sft_config, out=out)
    path = _save_atomically(result.learner, hf)
    (folder / "summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    _say(out, f"warm start: {result.train_seconds:.0f} s, saved {path}")
    return str(path)


def _save_atomically(learner: Any, path: Path) -> Path:
    """``learner.save_hf`` into a sibling temp folder, then rename: a kill leaves no half folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    learner.save_hf(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


async def _evaluate(config: AgentGRPOConfig, agent: Any, generator: Any, envs: Any) -> EvalResult | None:
    from forge_env.rollout import evaluate

    if config.eval.episodes == 0:
        return None
    # The training rollout's limits and sampling, at the evaluation's temperature.
    sampling = dataclasses.replace(config.rollout.sampling_params(), temperature=config.eval.temperature)
    rollout = dataclasses.replace(config.rollout.rollout_config(), sampling=sampling)
    return await evaluate(agent, generator, envs, episodes=config.eval.episodes, rollout=rollout,
                          max_concurrent_episodes=config.rollout.max_concurrent_episodes)


def _eval_metrics(result: EvalResult) -> dict[str, float]:
    return {
        "eval/success_rate": result.success_rate,
        "eval/mean_reward": result.mean_reward,
        "eval/invalid_reply_rate": result.invalid_reply_rate,
        "eval/mean_turns": result.mean_turns,
        "eval/episodes": float(result.episodes),
        "eval/failed": float(result.failed),
        "eval/seconds": result.seconds,
        "eval/version": float(result.version),
    }


@asynccontextmanager
async def _env_source(config: AgentGRPOConfig) -> AsyncIterator[Any]:
    """Where episodes get their envs: in-process (built-in name, module:Class, folder), an
    OpenEnv server URL, or ``docker:IMAGE`` (a pool of locked-down containers)."""
    spec = config.env
    if spec.startswith(("http://", "https://", "ws://", "wss://")):
        from forge_env.client import RemoteEnv

        probe: Any = RemoteEnv(spec)
        try:
            await probe.health()
        except Exception as e:
            raise RunError(f"env={spec}: no OpenEnv server answers there ({e}); start one, e.g. "
                           "`forge-env serve guess_number --port 8000`, or fix the URL") from None
        finally:
            await probe.close()
        yield lambda: RemoteEnv(spec)
        return
    if spec.startswith("docker:"):
        from forge_env.runtime import DockerRuntime, EnvPool

        image = spec.removeprefix("docker:")
        pool = EnvPool(lambda: DockerRuntime(image), size=config.env_pool_size)
        async with pool:
            yield pool
        return
    from forge_env.runtime import EnvSpecError, resolve_env_factory

    try:
        factory = resolve_env_factory(spec)
    except EnvSpecError as e:
        raise RunError(f"env={spec}: {e}") from None
    if config.runtime == "monarch":
        from forge_env.monarch import MonarchEnvPool

        mon = config.monarch
        async with MonarchEnvPool(spec, env_kwargs=dict(config.env_kwargs), procs=mon.env_procs,
                                  sessions_per_proc=mon.sessions_per_env_proc, respawn=mon.respawn,
                                  health_check_interval_s=mon.health_check_interval_s,
                                  hosts=mon.hosts_config()) as env_procs:
            yield env_procs
        return
    if config.env_kwargs:
        import functools

        factory = functools.partial(factory, **config.env_kwargs)
    yield factory


async def _make_agent(config: AgentGRPOConfig, tokenizer: Any, envs: Any) -> Any:
    from agents import make_agent

    if config.rollout.agent != "auto":
        return await make_agent(config.rollout.agent, tokenizer, system_prompt=config.rollout.system_prompt)
    async with open_env(envs) as env:
        return await make_agent("auto", tokenizer, env, system_prompt=config.rollout.system_prompt)


def _say(out: TextIO, line: str) -> None:
    print(line, file=out, flush=True)


def run(config: AgentGRPOConfig, *, resume: bool = False, out: TextIO | None = None) -> TrainResult:
    """:func:`train` from synchronous code (starts its own event loop)."""
    return asyncio.run(train(config, resume=resume, out=out))


_EPILOG = """\
overrides (any number, after the options): dotted keys of the config, e.g.
  orchestrator.steps=20 learner.lr=2e-3 output_dir=runs/try2 logging.wandb=true env=http://127.0.0.1:8000

examples:
  python -m apps.agent_grpo                                     # the CPU default (tiny model, guess_number)
  python -m apps.agent_grpo orchestrator.mode=sync              # generate, then train (for comparison)
  python -m apps.agent_grpo --config apps/agent_grpo/configs/smollm2_cpu.yaml
  python -m apps.agent_grpo --resume output_dir=runs/agent_grpo # continue a killed run
  python -m apps.agent_grpo --print-config                      # every key with its value and meaning
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apps.agent_grpo",
        description="Train an LLM agent with GRPO on a multi-turn environment: warm start, held-out "
                    "baseline, async GRPO (vLLM generator, torchtitan learner), held-out final, plot.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=None,
                        help="YAML config (default: apps/agent_grpo/configs/default.yaml; with --resume: "
                             "the run's own config.yaml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in output_dir from its newest checkpoint")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key) and exit")
    parser.add_argument("--debug", action="store_true", help="verbose logs (vLLM's included)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def _resolve_config(ns: argparse.Namespace) -> AgentGRPOConfig:
    path = ns.config
    if path is None and ns.resume:
        # --resume without --config: the run's own config, found through output_dir.
        probe = load_config(None, ns.overrides)
        saved = Path(probe.output_dir) / "config.yaml"
        if saved.exists():
            path = saved
    return load_config(path, ns.overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; 0 when it ran, 2 for a bad config or argument, 1 when the run failed."""
    ns = _parser().parse_args(argv)
    try:
        config = _resolve_config(ns)
    except ConfigError as e:
        print(f"agent_grpo: config error: {e}", file=sys.stderr)
        return 2
    if ns.print_config:
        print(config.to_yaml(), end="")
        return 0
    logging.basicConfig(level=logging.INFO if ns.debug else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not ns.debug:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        result = run(config, resume=ns.resume)
    except RunError as e:
        print(f"agent_grpo: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"agent_grpo: interrupted; continue with --resume output_dir={config.output_dir}", file=sys.stderr)
        return 130
    s = result.summary
    if s.get("baseline_success") is not None and s.get("final_success") is not None:
        print(f"agent_grpo: held-out success {s['baseline_success']:.0%} -> {s['final_success']:.0%} "
              f"in {s['steps']} steps; {result.output_dir / 'summary.json'}", flush=True)
    return 0
