"""The one buffer interface the orchestrator talks to: async, so a buffer may live elsewhere.

:class:`ReplayBuffer` is synchronous and lives in the caller's process. A buffer in another
process (``forge_env.monarch.MonarchReplayBuffer``, a Monarch actor) can only answer with an
await. :class:`AsyncBuffer` is what both offer the training loop; :func:`as_async_buffer`
adapts a local :class:`ReplayBuffer` to it, so the loop's code is the same for both runtimes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from forge_env.buffer._buffer import BufferConfig, ReplayBuffer
from forge_env.rollout._trajectory import TrajectoryGroup

__all__ = ["AsyncBuffer", "InProcessBuffer", "as_async_buffer"]


@runtime_checkable
class AsyncBuffer(Protocol):
    """A replay buffer the orchestrator awaits; same meaning as :class:`ReplayBuffer`'s methods.

    Implemented by :class:`InProcessBuffer` (a :class:`ReplayBuffer` in this process) and
    ``forge_env.monarch.MonarchReplayBuffer`` (one in a Monarch actor's process).
    """

    config: BufferConfig

    async def add(self, group: TrajectoryGroup) -> bool: ...

    async def num_fresh(self, current_version: int) -> int: ...

    async def wait_for(self, n_groups: int, *, current_version: int, timeout: float | None = None) -> bool: ...

    async def sample(self, n_groups: int, *, current_version: int) -> list[TrajectoryGroup]: ...

    async def stats(self) -> dict[str, Any]: ...

    async def state_dict(self) -> dict[str, Any]: ...

    async def load_state_dict(self, state: dict[str, Any]) -> None: ...


class InProcessBuffer:
    """A :class:`ReplayBuffer` behind the :class:`AsyncBuffer` interface (nothing is awaited
    but the buffer's own ``wait_for``).

    >>> import asyncio
    >>> view = InProcessBuffer(ReplayBuffer(BufferConfig(capacity=4)))
    >>> asyncio.run(view.stats())["size"]
    0
    """

    def __init__(self, buffer: ReplayBuffer) -> None:
        self.buffer = buffer
        """The wrapped buffer (its synchronous methods stay usable)."""
        self.config = buffer.config

    def __repr__(self) -> str:
        return f"InProcessBuffer({self.buffer!r})"

    async def add(self, group: TrajectoryGroup) -> bool:
        return self.buffer.add(group)

    async def num_fresh(self, current_version: int) -> int:
        return self.buffer.num_fresh(current_version)

    async def wait_for(self, n_groups: int, *, current_version: int, timeout: float | None = None) -> bool:
        return await self.buffer.wait_for(n_groups, current_version=current_version, timeout=timeout)

    async def sample(self, n_groups: int, *, current_version: int) -> list[TrajectoryGroup]:
        return self.buffer.sample(n_groups, current_version=current_version)

    async def stats(self) -> dict[str, Any]:
        return self.buffer.stats()

    async def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    async def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state)


def as_async_buffer(buffer: ReplayBuffer | AsyncBuffer) -> AsyncBuffer:
    """``buffer`` as an :class:`AsyncBuffer`: a :class:`ReplayBuffer` is wrapped in an
    :class:`InProcessBuffer`, anything already async is returned as is.

    Raises:
        TypeError: ``buffer`` is neither (the message names what is missing).
    """
    if isinstance(buffer, ReplayBuffer):
        return InProcessBuffer(buffer)
    if isinstance(buffer, AsyncBuffer):
        return buffer
    missing = [name for name in ("config", "add", "num_fresh", "wait_for", "sample", "stats", "state_dict",
                                 "load_state_dict") if not hasattr(buffer, name)]
    raise TypeError(
        f"{type(buffer).__name__} is not a replay buffer: pass a forge_env.buffer.ReplayBuffer or an "
        f"AsyncBuffer (missing {', '.join(missing) or 'async methods'})"
    )
