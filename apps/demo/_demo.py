"""Serve a built-in env in a subprocess and play it with its scripted agent, over the wire.

This is what forge-env does end to end, without a model: a real server process, a real
WebSocket session per episode stream, typed observations, a policy choosing actions, and
a clean shutdown. Read it top to bottom: parse args, start the server, play, summarise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

__all__ = ["DemoArgs", "DemoSummary", "EpisodeRecord", "run_demo", "main"]


@dataclasses.dataclass(kw_only=True, slots=True)
class DemoArgs:
    """What to play."""

    episodes: int = 5
    """Episodes to play."""
    seed: int = 0
    """Seed of the first episode; episode ``i`` uses ``seed + i`` (reproducible games)."""
    env: str = "guess_number"
    """Built-in env to play; its package must export a scripted policy ``solve(obs)``."""
    remote: str | None = None
    """URL of an already running server to play instead of starting one."""
    max_turns: int = 100
    """Safety bound on turns per episode (the env ends its episodes much sooner)."""

    def __post_init__(self) -> None:
        if self.episodes < 1:
            raise ValueError(f"--episodes must be >= 1, got {self.episodes}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")


@dataclasses.dataclass(slots=True)
class EpisodeRecord:
    """One played episode."""

    seed: int
    turns: int
    episode_return: float
    solved: bool
    transcript: list[str]


@dataclasses.dataclass(slots=True)
class DemoSummary:
    """What the demo measured."""

    episodes: list[EpisodeRecord]
    steps: int
    play_seconds: float
    server_start_seconds: float | None

    @property
    def success_rate(self) -> float:
        return sum(e.solved for e in self.episodes) / len(self.episodes)

    @property
    def mean_turns(self) -> float:
        return sum(e.turns for e in self.episodes) / len(self.episodes)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.play_seconds if self.play_seconds > 0 else float("nan")


def _load_policy(env_name: str) -> tuple[Callable[[Any], Any], type[Any] | None, type[Any] | None]:
    """The env's scripted ``solve`` and its action/observation types."""
    import envs

    if env_name not in envs.BUILTIN_ENVS:
        raise ValueError(
            f"unknown env {env_name!r}; built-in envs: {', '.join(sorted(envs.BUILTIN_ENVS))}"
        )
    package = importlib.import_module(f"envs.{env_name}")
    solve = getattr(package, "solve", None)
    if not callable(solve):
        with_solver = [name for name in sorted(envs.BUILTIN_ENVS) if _has_solver(name)]
        raise ValueError(
            f"env {env_name!r} has no scripted agent (envs.{env_name}.solve); the demo can "
            f"play: {', '.join(with_solver) or 'none'}"
        )
    factory = envs.load_env_factory(env_name)
    return solve, getattr(factory, "action_type", None), getattr(factory, "observation_type", None)


def _has_solver(env_name: str) -> bool:
    try:
        package = importlib.import_module(f"envs.{env_name}")
    except ImportError:  # e.g. frozen_lake without gymnasium: it cannot be played anyway
        return False
    return callable(getattr(package, "solve", None))


def _describe_action(action: Any) -> str:
    data = action.model_dump() if hasattr(action, "model_dump") else action
    if isinstance(data, dict) and len(data) == 1:
        (name, value), = data.items()
        return f"{name} {value!s:>3}"
    return json.dumps(data, default=repr)


def _describe_observation(env: Any, observation: Any) -> str:
    feedback = getattr(observation, "feedback", None)
    if isinstance(feedback, str):
        return feedback
    return env.render_text(observation).strip().splitlines()[0][:60]


def _interval(observation: Any) -> str:
    lo, hi = getattr(observation, "lo", None), getattr(observation, "hi", None)
    if isinstance(lo, int) and isinstance(hi, int) and getattr(observation, "feedback", "") in (
        "higher", "lower"
    ):
        return f" (now {lo}..{hi})"
    return ""


async def _play_episode(env: Any, solve: Callable[[Any], Any], seed: int, index: int,
                        args: DemoArgs, out: TextIO) -> tuple[EpisodeRecord, int]:
    def say(line: str) -> None:
        transcript.append(line)
        out.write(line + "\n")
        out.flush()

    transcript: list[str] = []
    observation, _info = await env.reset(seed=seed)
    if index == 0:  # every episode starts with the same prompt; show it once
        say(f"the env says: {env.render_text(observation).strip().splitlines()[0]}")
    say(f"episode {index + 1}/{args.episodes} (seed {seed})")
    episode_return, turns, solved = 0.0, 0, False
    for turn in range(1, args.max_turns + 1):
        action = solve(observation)
        result = await env.step(action)
        observation, turns = result.observation, turn
        episode_return += result.reward
        say(f"  turn {turn}  {_describe_action(action)}  -> "
            f"{_describe_observation(env, observation):<8}{_interval(observation):<14}"
            f"  reward {result.reward:g}")
        if result.done:
            solved = result.terminated and result.reward > 0
            break
    verdict = "solved" if solved else "NOT solved"
    say(f"  {verdict} in {turns} turn(s), return {episode_return:g}")
    return EpisodeRecord(seed, turns, episode_return, solved, transcript), turns


async def run_demo(args: DemoArgs, *, out: TextIO | None = None) -> DemoSummary:
    """Start the server (unless ``args.remote``), play ``args.episodes`` episodes, stop it.

    >>> # summary = asyncio.run(run_demo(DemoArgs(episodes=2, seed=1)))
    """
    from forge_env.client import RemoteEnv
    from forge_env.runtime import LocalProcessRuntime

    out = out if out is not None else sys.stdout
    solve, action_type, observation_type = _load_policy(args.env)
    typed: dict[str, Any] = {}
    if action_type is not None and observation_type is not None:
        typed = {"action_type": action_type, "observation_type": observation_type}

    runtime = None
    start_seconds = None
    pid = None
    if args.remote is None:
        print(f"starting a {args.env} server (forge_env.runtime.LocalProcessRuntime) ...",
              file=out, flush=True)
        runtime = LocalProcessRuntime(args.env, log_level="warning")
        t0 = time.perf_counter()
        await runtime.start()
        start_seconds = time.perf_counter() - t0
        pid = runtime.pid
        assert runtime.url is not None  # set once start() returned
        url: str = runtime.url
        print(f"server up at {url} (pid {pid}) in {start_seconds:.2f} s", file=out, flush=True)
    else:
        url = args.remote
        print(f"playing the server at {url}", file=out, flush=True)

    records: list[EpisodeRecord] = []
    steps = 0
    try:
        async with RemoteEnv(url, **typed) as env:
            t0 = time.perf_counter()
            for i in range(args.episodes):
                record, turns = await _play_episode(env, solve, args.seed + i, i, args, out)
                records.append(record)
                steps += turns
            play_seconds = time.perf_counter() - t0
    finally:
        if runtime is not None:
            await runtime.stop()
            print(f"server stopped (pid {pid}: {_process_state(pid)})", file=out, flush=True)
    return DemoSummary(records, steps, play_seconds, start_seconds)


def _process_state(pid: int | None) -> str:
    if pid is None:
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "exited, no process left"
    except PermissionError:  # pragma: no cover - another user's process took the pid
        return "exited"
    return "STILL RUNNING"


def _parse(argv: Sequence[str] | None) -> DemoArgs:
    parser = argparse.ArgumentParser(
        prog="python -m apps.demo",
        description="Serve a built-in env in a subprocess and play it over the OpenEnv wire "
                    "with its scripted agent (binary search for guess_number).",
        epilog="examples:\n"
               "  python -m apps.demo\n"
               "  python -m apps.demo --episodes 20 --seed 7\n"
               "  forge-env serve guess_number --port 8000 &  "
               "python -m apps.demo --remote http://127.0.0.1:8000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = DemoArgs()
    parser.add_argument("--episodes", type=int, default=defaults.episodes,
                        help=f"episodes to play (default {defaults.episodes})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="seed of the first episode; episode i uses seed+i (default 0)")
    parser.add_argument("--env", default=defaults.env,
                        help="built-in env with a scripted agent (default guess_number)")
    parser.add_argument("--remote", metavar="URL", default=None,
                        help="play an already running server instead of starting one")
    ns = parser.parse_args(argv)
    return DemoArgs(episodes=ns.episodes, seed=ns.seed, env=ns.env, remote=ns.remote)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when it ran, 2 for a bad argument, 1 when the server or env failed
    (the reason on one line)."""
    try:
        args = _parse(argv)
    except ValueError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    from forge_env._exceptions import ForgeEnvError

    try:
        summary = asyncio.run(run_demo(args))
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130
    except (ForgeEnvError, ImportError) as e:  # the server or the env failed
        print(f"demo: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    except ValueError as e:  # a bad argument, e.g. an env without a scripted agent
        print(f"demo: error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    solved = sum(e.solved for e in summary.episodes)
    print(
        f"summary: {solved}/{len(summary.episodes)} solved, success rate "
        f"{summary.success_rate:.0%}, mean turns {summary.mean_turns:.2f}, "
        f"{summary.steps} steps in {summary.play_seconds:.3f} s "
        f"({summary.steps_per_second:.0f} steps/s over the WebSocket)",
        flush=True,
    )
    return 0
