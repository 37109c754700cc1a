"""Many episodes at once: G samples per task, bounded concurrency, failures kept."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Union

from forge_env.rollout._episode import RolloutConfig, run_episode
from forge_env.rollout._trajectory import Task, Trajectory, TrajectoryGroup

if TYPE_CHECKING:  # pragma: no cover
    from agents._base import Agent
    from forge_env.env import AsyncEnv
    from forge_env.generator._base import Generator

__all__ = ["CollectorConfig", "CollectorStats", "EnvSource", "RolloutCollector", "open_env"]

logger = logging.getLogger("forge_env.rollout")

EnvSource = Union[
    Callable[[], "AsyncEnv[Any, Any] | Awaitable[AsyncEnv[Any, Any]]"],
    Any,  # an EnvPool (has .lease()) or an EnvRuntime (has .session())
]
"""Where episodes get their env: an :class:`~forge_env.EnvPool` (a lease per episode), a
runtime (a session per episode), or a zero-argument callable returning a new env (sync or
async). Every episode gets its own env and closes it afterwards."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CollectorConfig:
    """How many episodes, how many at once.

    >>> CollectorConfig(group_size=4).group_size
    4
    """

    group_size: int = 1
    """Samples per task (GRPO's G)."""
    max_concurrent_episodes: int = 16
    """Episodes in flight at once (each holds an env session and a generator request)."""
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.max_concurrent_episodes < 1:
            raise ValueError(f"max_concurrent_episodes must be >= 1, got {self.max_concurrent_episodes}")


@dataclasses.dataclass
class CollectorStats:
    """Running totals over everything a collector has played."""

    episodes: int = 0
    successes: int = 0
    failed: int = 0
    """Episodes ended by a failure (env error, generator error, deadline)."""
    turns: int = 0
    invalid_actions: int = 0
    completion_tokens: int = 0
    generate_seconds: float = 0.0
    seconds: float = 0.0
    """Wall time spent inside collect/stream calls."""
    terminations: dict[str, int] = dataclasses.field(default_factory=dict)

    def add(self, traj: Trajectory) -> None:
        self.episodes += 1
        self.successes += traj.success
        self.failed += traj.failed
        self.turns += traj.num_turns
        self.invalid_actions += traj.invalid_actions
        self.completion_tokens += traj.num_completion_tokens
        self.generate_seconds += sum(t.generate_seconds for t in traj.turns)
        self.terminations[traj.termination] = self.terminations.get(traj.termination, 0) + 1

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens per wall second of collection."""
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["success_rate"] = self.success_rate
        out["tokens_per_second"] = self.tokens_per_second
        out["mean_turns"] = self.turns / self.episodes if self.episodes else 0.0
        return out


class RolloutCollector:
    """Runs episodes concurrently and returns them grouped by task.

    Example::

        collector = RolloutCollector(agent, generator, pool, CollectorConfig(group_size=8))
        groups = await collector.collect([Task(seed=s) for s in range(4)])   # 4 x 8 episodes
        async for group in collector.stream(tasks):                            # as they finish
            buffer.add(group)

    Failed episodes (env crash, deadline, generator error) are returned like the others,
    with ``termination``/``error`` set, and counted in :attr:`stats`; nothing is dropped.
    """

    def __init__(
        self,
        agent: Agent,
        generator: Generator,
        envs: EnvSource,
        config: CollectorConfig | None = None,
    ) -> None:
        self.agent = agent
        self.generator = generator
        self.envs = envs
        self.config = config or CollectorConfig()
        self.stats = CollectorStats()
        self._slots = asyncio.Semaphore(self.config.max_concurrent_episodes)

    async def collect(self, tasks: Sequence[Task]) -> list[TrajectoryGroup]:
        """Play ``group_size`` episodes of every task; groups in the order of ``tasks``."""
        by_key: dict[int, TrajectoryGroup] = {}
        async for index, group in self._run(tasks):
            by_key[index] = group
        return [by_key[i] for i in range(len(tasks))]

    async def stream(self, tasks: Sequence[Task]) -> AsyncIterator[TrajectoryGroup]:
        """Yield each task's group as soon as all its episodes have finished."""
        async for _, group in self._run(tasks):
            yield group

    async def play(self, task: Task, *, group_index: int = 0) -> Trajectory:
        """One episode (under the collector's concurrency limit), counted in :attr:`stats`."""
        async with self._slots:
            started = time.monotonic()
            async with open_env(self.envs) as env:
                traj = await run_episode(
                    self.agent, env, self.generator, task,
                    config=self.config.rollout, group_index=group_index,
                )
            self.stats.add(traj)
            if traj.failed:
                logger.warning("episode %s #%d failed (%s): %s", task.key, group_index,
                               traj.termination, traj.error)
            traj.seconds = max(traj.seconds, time.monotonic() - started)
            return traj

    async def _run(self, tasks: Sequence[Task]) -> AsyncIterator[tuple[int, TrajectoryGroup]]:
        started = time.monotonic()
        g = self.config.group_size

        async def one_group(index: int, task: Task) -> tuple[int, TrajectoryGroup]:
            trajs = await asyncio.gather(*(self.play(task, group_index=k) for k in range(g)))
            return index, TrajectoryGroup(task=task, trajectories=list(trajs))

        pending = [asyncio.ensure_future(one_group(i, t)) for i, t in enumerate(tasks)]
        try:
            for next_done in asyncio.as_completed(pending):
                yield await next_done
        finally:
            for fut in pending:
                fut.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self.stats.seconds += time.monotonic() - started


@contextlib.asynccontextmanager
async def open_env(source: EnvSource) -> AsyncIterator[AsyncEnv[Any, Any]]:
    """One env from ``source`` for the length of the block: leased from a pool, a session of
    a runtime, or made by a factory (then closed after, within 10 s; a dead env's failure to
    close is logged, not raised).

    Example::

        async with open_env(pool) as env:
            first = await env.reset(seed=0)
    """
    if hasattr(source, "lease"):
        async with source.lease() as env:
            yield env
        return
    if hasattr(source, "session"):
        env = await source.session()
    elif callable(source):
        made = source()
        env = await made if inspect.isawaitable(made) else made
    else:
        raise TypeError(
            f"envs must be an EnvPool, a runtime or a callable returning an env, got {source!r}"
        )
    try:
        yield env
    finally:
        try:
            await asyncio.wait_for(env.close(), 10.0)
        except Exception as e:  # a dead env cannot close cleanly; the episode is recorded
            logger.debug("closing an env failed: %r", e)
