"""The replay buffer as a Monarch actor in a process of its own.

:class:`BufferActor` holds a :class:`~forge_env.buffer.ReplayBuffer` in its process;
:class:`MonarchReplayBuffer` is the caller's handle, an :class:`~forge_env.buffer.AsyncBuffer`
the orchestrator awaits exactly as it awaits a local buffer (``runtime: monarch``).

The buffer has state the run cannot rebuild (groups generated and not yet trained on), so it
is one actor, not a Service of replicas: a dead buffer process is not respawned empty behind
the caller's back. Every call after its death raises :class:`BufferProcessError`, which says
that ``--resume`` restores the buffer's contents from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from monarch.actor import Actor, endpoint

from forge_env._exceptions import ForgeEnvError
from forge_env.buffer import BufferConfig, ReplayBuffer
from forge_env.monarch._mesh import ProcGroup, _await, start_procs
from forge_env.monarch._service import _app_exception, _first_line, _is_app_error
from forge_env.rollout._trajectory import TrajectoryGroup

__all__ = ["BufferActor", "BufferProcessError", "MonarchReplayBuffer"]

logger = logging.getLogger(__name__)


class BufferProcessError(ForgeEnvError):
    """The replay buffer's process died or stopped answering; the groups it held are gone."""


class BufferActor(Actor):
    """A :class:`~forge_env.buffer.ReplayBuffer` in this process (endpoints mirror its methods)."""

    def __init__(self, config: BufferConfig) -> None:
        self._buffer = ReplayBuffer(config)

    @endpoint
    def pid(self) -> int:
        return os.getpid()

    @endpoint
    def add(self, group: TrajectoryGroup) -> bool:
        return self._buffer.add(group)

    @endpoint
    def num_fresh(self, current_version: int) -> int:
        return self._buffer.num_fresh(current_version)

    @endpoint
    def sample(self, n_groups: int, current_version: int) -> list[TrajectoryGroup]:
        return self._buffer.sample(n_groups, current_version=current_version)

    @endpoint
    def stats(self) -> dict[str, Any]:
        return self._buffer.stats()

    @endpoint
    def state_dict(self) -> dict[str, Any]:
        return self._buffer.state_dict()

    @endpoint
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._buffer.load_state_dict(state)


class MonarchReplayBuffer:
    """A replay buffer in its own Monarch process, behind the :class:`~forge_env.buffer.AsyncBuffer`
    interface the orchestrator awaits.

    Example::

        async with MonarchReplayBuffer(BufferConfig(max_policy_age=1)) as buffer:
            await buffer.add(group)
            if await buffer.wait_for(8, current_version=3, timeout=60):
                batch = await buffer.sample(8, current_version=3)
            print(buffer.pid, buffer.metrics())

    Args:
        config: the buffer's config, as for :class:`~forge_env.buffer.ReplayBuffer`.
        name: the process mesh's name in Monarch's log.
        poll_s: :meth:`wait_for` re-asks the buffer at least this often, for groups added by
            someone other than this handle (adds through this handle wake it at once).
        call_timeout_s: most seconds one call may take before the buffer counts as dead.
    """

    def __init__(self, config: BufferConfig | None = None, *, name: str = "buffer", poll_s: float = 0.5,
                 call_timeout_s: float = 120.0) -> None:
        if not poll_s > 0:
            raise ValueError(f"MonarchReplayBuffer poll_s must be > 0, got {poll_s}")
        if not call_timeout_s > 0:
            raise ValueError(f"MonarchReplayBuffer call_timeout_s must be > 0, got {call_timeout_s}")
        self.config = config or BufferConfig()
        self.name = name
        self.poll_s = poll_s
        self.call_timeout_s = call_timeout_s
        self.pid: int | None = None
        """The buffer process's id, once started."""
        self._group: ProcGroup | None = None
        self._actor: Any = None
        self._added = asyncio.Event()
        self._dead: str | None = None
        self._calls = 0
        self._call_seconds = 0.0

    def __repr__(self) -> str:
        state = "dead" if self._dead else ("running" if self._actor is not None else "not started")
        return f"MonarchReplayBuffer(pid={self.pid}, capacity={self.config.capacity}, {state})"

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> MonarchReplayBuffer:
        """Spawn the buffer's process and actor; returns self. Idempotent."""
        if self._actor is not None:
            return self
        self._group = await start_procs(1, name=self.name)
        try:
            self._actor = self._group.procs.spawn("replay_buffer", BufferActor, self.config)
            self.pid = await self._call("pid")
        except BaseException:
            await self.stop()
            raise
        logger.info("replay buffer in process %d (capacity %d, max_policy_age %d)", self.pid,
                    self.config.capacity, self.config.max_policy_age)
        return self

    async def stop(self) -> None:
        """Stop the buffer's process (its contents go with it). Idempotent."""
        group, self._group = self._group, None
        self._actor = None
        if group is not None:
            await group.stop()

    async def __aenter__(self) -> MonarchReplayBuffer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the AsyncBuffer interface ----------------------------------------------------------

    async def add(self, group: TrajectoryGroup) -> bool:
        """Store a group; False when a filter dropped it."""
        kept = bool(await self._call("add", group))
        self._added.set()
        return kept

    async def num_fresh(self, current_version: int) -> int:
        return int(await self._call("num_fresh", current_version))

    async def wait_for(self, n_groups: int, *, current_version: int, timeout: float | None = None) -> bool:
        """Wait until at least ``n_groups`` fresh groups are held; False if ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._added.clear()  # before asking: an add landing after the answer wakes the wait
            if await self.num_fresh(current_version) >= n_groups:
                return True
            wait = self.poll_s if deadline is None else min(self.poll_s, deadline - time.monotonic())
            if wait <= 0:
                return False
            try:
                await asyncio.wait_for(self._added.wait(), wait)
            except TimeoutError:
                pass

    async def sample(self, n_groups: int, *, current_version: int) -> list[TrajectoryGroup]:
        """Remove and return up to ``n_groups`` fresh groups (stale ones are dropped and counted)."""
        return list(await self._call("sample", n_groups, current_version))

    async def stats(self) -> dict[str, Any]:
        return dict(await self._call("stats"))

    async def state_dict(self) -> dict[str, Any]:
        return dict(await self._call("state_dict"))

    async def load_state_dict(self, state: dict[str, Any]) -> None:
        await self._call("load_state_dict", state)
        self._added.set()

    def metrics(self) -> dict[str, float]:
        """``buffer/calls`` and ``buffer/call_ms_mean`` (round trips to the buffer's process)."""
        return {
            "buffer/calls": float(self._calls),
            "buffer/call_ms_mean": 1000 * self._call_seconds / self._calls if self._calls else 0.0,
        }

    # --- calls --------------------------------------------------------------------------------

    async def _call(self, name: str, *args: Any) -> Any:
        if self._dead is not None:
            raise BufferProcessError(self._dead)
        if self._actor is None:
            raise RuntimeError(f"MonarchReplayBuffer.{name}: not started: use `async with MonarchReplayBuffer(...)`"
                               " or await start() first")
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(_await(getattr(self._actor, name).call_one(*args)), self.call_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if _is_app_error(e):
                raise _app_exception(e) from None  # the buffer's own error (a bad argument): as is
            why = "did not answer within call_timeout_s" if isinstance(e, TimeoutError) else "died"
            self._dead = (
                f"the replay buffer's process (pid {self.pid}) {why} during {name}() "
                f"({type(e).__name__}: {_first_line(e, 300)}); the "
                "groups it held are lost. Restart the run with --resume: the last checkpoint holds the buffer's "
                "contents"
            )
            logger.error("%s", self._dead)
            raise BufferProcessError(self._dead) from e
        self._calls += 1
        self._call_seconds += time.perf_counter() - started
        return result
