"""The runtime seam: what starts an env server and hands out sessions on it.

Every way of running an environment — in this process, as a local subprocess, in a
Docker container — is an :class:`EnvRuntime`. :class:`~forge_env.runtime.EnvPool` and the
rollout code only speak this Protocol, so a new runtime plugs in without touching them.
:class:`BaseRuntime` holds the shared lifecycle guard (idempotent start/stop, restart
counting, ``async with``); an implementation fills in ``_start``/``_stop``/``health``/
``session``.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from typing import Any, Protocol, runtime_checkable

from forge_env.env import AsyncEnv

__all__ = ["EnvRuntime", "BaseRuntime", "RuntimeState"]


@runtime_checkable
class EnvRuntime(Protocol):
    """Something that runs an environment and opens sessions on it.

    >>> async def play(runtime: EnvRuntime) -> None:
    ...     async with runtime:                      # start() ... stop()
    ...         assert await runtime.health()
    ...         async with await runtime.session() as env:
    ...             obs, info = await env.reset(seed=1)

    Attributes:
        url: the server's base URL (``http://127.0.0.1:PORT``) while running; None for
            runtimes without a server (in-process) and before ``start()``.
    """

    @property
    def url(self) -> str | None: ...

    async def start(self) -> None:
        """Start the server and wait until it is healthy. Idempotent."""

    async def stop(self) -> None:
        """Stop the server and release everything it held. Idempotent."""

    async def restart(self) -> None:
        """Stop (whatever state it is in) and start again."""

    async def health(self) -> bool:
        """True when the server answers its health check; never raises."""

    async def session(self) -> AsyncEnv[Any, Any]:
        """A fresh env session (one episode stream). The caller closes it."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc: object) -> None: ...


class RuntimeState(str, enum.Enum):
    """Lifecycle of a runtime: NEW -> RUNNING <-> STOPPED (start again after stop)."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class BaseRuntime(abc.ABC):
    """Shared lifecycle for :class:`EnvRuntime` implementations.

    Public ``start``/``stop``/``restart`` hold one lock and the state; subclasses
    implement ``_start`` (raise :class:`~forge_env.RuntimeStartError` on failure, leaving
    nothing running), ``_stop`` (must not raise for an already-dead server), ``health``
    and ``_session``.

    Attributes:
        restarts: how many times :meth:`restart` brought this runtime back up.
    """

    def __init__(self) -> None:
        self._state = RuntimeState.NEW
        self._lifecycle = asyncio.Lock()
        self.restarts = 0

    # --- to implement -------------------------------------------------------------------

    @abc.abstractmethod
    async def _start(self) -> None: ...

    @abc.abstractmethod
    async def _stop(self) -> None: ...

    @abc.abstractmethod
    async def health(self) -> bool: ...

    @abc.abstractmethod
    async def _session(self) -> AsyncEnv[Any, Any]: ...

    @property
    def url(self) -> str | None:
        return None

    # --- shared lifecycle ---------------------------------------------------------------

    @property
    def state(self) -> RuntimeState:
        return self._state

    @property
    def running(self) -> bool:
        return self._state is RuntimeState.RUNNING

    async def start(self) -> None:
        async with self._lifecycle:
            if self._state is RuntimeState.RUNNING:
                return
            await self._start()
            self._state = RuntimeState.RUNNING

    async def stop(self) -> None:
        async with self._lifecycle:
            if self._state is not RuntimeState.RUNNING:
                return
            try:
                await self._stop()
            finally:
                self._state = RuntimeState.STOPPED

    async def restart(self) -> None:
        async with self._lifecycle:
            if self._state is RuntimeState.RUNNING:
                try:
                    await self._stop()
                finally:
                    self._state = RuntimeState.STOPPED
            await self._start()
            self._state = RuntimeState.RUNNING
            self.restarts += 1

    async def session(self) -> AsyncEnv[Any, Any]:
        if self._state is not RuntimeState.RUNNING:
            raise RuntimeError(
                f"{self!r} is {self._state.value}: call `await runtime.start()` "
                "(or use `async with runtime:`) before opening sessions"
            )
        return await self._session()

    async def __aenter__(self) -> "BaseRuntime":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
