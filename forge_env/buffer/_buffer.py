"""Replay buffer of trajectory groups with a bound on policy staleness."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from typing import Any, Literal

from forge_env.rollout._trajectory import Task, Trajectory, TrajectoryGroup

__all__ = ["BufferConfig", "BufferStats", "ReplayBuffer", "SamplingMode"]

logger = logging.getLogger("forge_env.buffer")

SamplingMode = Literal["fifo", "lifo", "uniform"]

_STATE_FORMAT = 1


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class BufferConfig:
    """Size, staleness bound, sampling order and filters of a :class:`ReplayBuffer`.

    >>> BufferConfig(capacity=64, max_policy_age=2).sampling
    'fifo'
    """

    capacity: int = 1024
    """Groups held at most; adding to a full buffer evicts the oldest (``dropped_capacity``)."""
    max_policy_age: int = 1
    """A group is stale, and dropped when sampling, once its oldest turn's policy version is
    below ``current_version - max_policy_age`` (0: only samples of the current policy)."""
    sampling: SamplingMode = "fifo"
    """Which groups :meth:`ReplayBuffer.sample` takes: ``fifo`` oldest first, ``lifo`` newest
    first, ``uniform`` at random without replacement (seeded)."""
    drop_degenerate: bool = False
    """Drop groups whose advantages would all be 0 (every episode return equal): they carry
    no GRPO signal but cost a forward and backward pass."""
    drop_failed: bool = False
    """Remove failed trajectories (env error, generator error, deadline) from each group on
    ``add``; a group left with none is dropped (``dropped_empty``)."""
    seed: int = 0
    """Seed of the ``uniform`` sampler."""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"BufferConfig.capacity must be >= 1, got {self.capacity}")
        if self.max_policy_age < 0:
            raise ValueError(f"BufferConfig.max_policy_age must be >= 0, got {self.max_policy_age}")
        if self.sampling not in ("fifo", "lifo", "uniform"):
            raise ValueError(f"BufferConfig.sampling must be 'fifo', 'lifo' or 'uniform', got {self.sampling!r}")


@dataclasses.dataclass
class BufferStats:
    """Running counters; every group passed to ``add`` ends in exactly one of ``size``,
    ``sampled`` or a ``dropped_*`` group counter (``dropped_failed`` counts trajectories)."""

    added: int = 0
    """Groups passed to ``add``."""
    sampled: int = 0
    """Groups handed out by ``sample``."""
    dropped_stale: int = 0
    """Groups older than ``max_policy_age`` allows."""
    dropped_capacity: int = 0
    """Oldest groups evicted to make room."""
    dropped_degenerate: int = 0
    """Groups with no reward spread (``drop_degenerate``)."""
    dropped_failed: int = 0
    """Failed *trajectories* removed from their groups (``drop_failed``)."""
    dropped_empty: int = 0
    """Groups left with no trajectory (all failed, or added empty)."""


class ReplayBuffer:
    """Trajectory groups waiting for the learner; too-old ones are dropped and counted.

    >>> from forge_env.rollout import Task, Trajectory, TrajectoryGroup, Turn
    >>> def group(version):
    ...     turn = Turn(index=0, completion_start=0, completion_end=0, text="", finish_reason="stop",
    ...                 version=version)
    ...     return TrajectoryGroup(task=Task(seed=version),
    ...                            trajectories=[Trajectory(env_name="e", task=Task(), turns=[turn])])
    >>> buffer = ReplayBuffer(BufferConfig(max_policy_age=1))
    >>> for version in (0, 1, 2):
    ...     buffer.add(group(version))
    True
    True
    True
    >>> [g.task.seed for g in buffer.sample(4, current_version=2)]   # version 0 is stale
    [1, 2]
    >>> buffer.stats()["dropped_stale"]
    1

    Not thread-safe: call it from one thread (the orchestrator's event loop).
    """

    def __init__(self, config: BufferConfig | None = None) -> None:
        self.config = config or BufferConfig()
        self._groups: list[TrajectoryGroup] = []   # insertion order, oldest first
        self._rng = random.Random(self.config.seed)
        self._stats = BufferStats()
        self._waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return f"ReplayBuffer(size={len(self)}, capacity={self.config.capacity}, sampling={self.config.sampling!r})"

    # -- adding ---------------------------------------------------------------------------

    def add(self, group: TrajectoryGroup) -> bool:
        """Store a group; False when a filter dropped it (counted in :meth:`stats`)."""
        cfg = self.config
        self._stats.added += 1
        if cfg.drop_failed:
            kept = [t for t in group.trajectories if not t.failed]
            if len(kept) < len(group.trajectories):
                self._stats.dropped_failed += len(group.trajectories) - len(kept)
                group = TrajectoryGroup(task=group.task, trajectories=kept)
        if not group.trajectories:
            self._stats.dropped_empty += 1
            logger.debug("dropped an empty group of task %s", group.task.key)
            return False
        if cfg.drop_degenerate:
            # Imported here: forge_env.learner may pull in heavier modules than the buffer needs.
            from forge_env.learner._advantages import is_degenerate

            if is_degenerate(group):
                self._stats.dropped_degenerate += 1
                logger.debug("dropped a degenerate group of task %s (rewards %s)", group.task.key, group.rewards)
                return False
        if len(self._groups) >= cfg.capacity:
            evicted = self._groups.pop(0)
            self._stats.dropped_capacity += 1
            logger.info(
                "buffer full (capacity %d): evicted the oldest group (task %s, version %d); %d evicted so far",
                cfg.capacity, evicted.task.key, evicted.min_version, self._stats.dropped_capacity,
            )
        self._groups.append(group)
        self._wake_waiters()
        return True

    # -- staleness ------------------------------------------------------------------------

    def _is_stale(self, group: TrajectoryGroup, current_version: int) -> bool:
        return group.min_version < current_version - self.config.max_policy_age

    def num_fresh(self, current_version: int) -> int:
        """Groups that are not stale at ``current_version``."""
        return sum(not self._is_stale(g, current_version) for g in self._groups)

    def evict_stale(self, current_version: int) -> int:
        """Drop every group too old for ``current_version``; returns how many."""
        kept = [g for g in self._groups if not self._is_stale(g, current_version)]
        dropped = len(self._groups) - len(kept)
        if dropped:
            self._groups = kept
            self._stats.dropped_stale += dropped
            logger.info(
                "dropped %d stale groups (oldest policy version < %d at current version %d, "
                "max_policy_age %d); %d stale so far",
                dropped, current_version - self.config.max_policy_age, current_version,
                self.config.max_policy_age, self._stats.dropped_stale,
            )
        return dropped

    # -- sampling -------------------------------------------------------------------------

    def sample(self, n_groups: int, *, current_version: int) -> list[TrajectoryGroup]:
        """Remove and return up to ``n_groups`` fresh groups (fewer when fewer are held).

        Stale groups are evicted first and counted.
        """
        if n_groups < 0:
            raise ValueError(f"n_groups must be >= 0, got {n_groups}")
        self.evict_stale(current_version)
        n = min(n_groups, len(self._groups))
        mode = self.config.sampling
        if mode == "fifo":
            out, self._groups = self._groups[:n], self._groups[n:]
        elif mode == "lifo":
            split = len(self._groups) - n
            out, self._groups = self._groups[split:][::-1], self._groups[:split]
        else:
            picked = self._rng.sample(range(len(self._groups)), n)
            out = [self._groups[i] for i in picked]
            chosen = set(picked)
            self._groups = [g for i, g in enumerate(self._groups) if i not in chosen]
        self._stats.sampled += len(out)
        return out

    async def wait_for(self, n_groups: int, *, current_version: int, timeout: float | None = None) -> bool:
        """Wait until at least ``n_groups`` fresh groups are held; False if ``timeout`` passes first.

        Example::

            if await buffer.wait_for(8, current_version=step, timeout=60):
                batch = buffer.sample(8, current_version=step)
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while self.num_fresh(current_version) < n_groups:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
        except TimeoutError:
            return False
        return True

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- stats and checkpoints ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters (see :class:`BufferStats`) plus ``size`` and the held ``oldest_version`` /
        ``newest_version`` (None when empty)."""
        out: dict[str, Any] = dataclasses.asdict(self._stats)
        versions = [g.min_version for g in self._groups]
        out["size"] = len(self._groups)
        out["oldest_version"] = min(versions) if versions else None
        out["newest_version"] = max(versions) if versions else None
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (groups, counters, the sampler's RNG) as plain JSON data."""
        version, internal, gauss_next = self._rng.getstate()
        return {
            "format": _STATE_FORMAT,
            "groups": [
                {"task": dataclasses.asdict(g.task), "trajectories": [t.to_dict() for t in g.trajectories]}
                for g in self._groups
            ],
            "stats": dataclasses.asdict(self._stats),
            "rng": [version, list(internal), gauss_next],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (this buffer's config stays as constructed)."""
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"buffer state has format {state.get('format')!r}, this forge-env reads format "
                f"{_STATE_FORMAT}: load it with the version that saved it"
            )
        self._groups = [
            TrajectoryGroup(
                task=Task(**g["task"]),
                trajectories=[Trajectory.from_dict(t) for t in g["trajectories"]],
            )
            for g in state["groups"]
        ]
        self._stats = BufferStats(**state["stats"])
        version, internal, gauss_next = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss_next))
        overflow = len(self._groups) - self.config.capacity
        if overflow > 0:
            # Resuming with a smaller capacity: keep the newest, as add() would have.
            self._groups = self._groups[overflow:]
            self._stats.dropped_capacity += overflow
            logger.warning("loaded buffer state exceeds capacity %d: evicted the %d oldest groups",
                           self.config.capacity, overflow)
        self._wake_waiters()
