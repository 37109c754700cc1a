"""Lease env sessions across several servers; watch them and replace the ones that die."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forge_env._exceptions import (
    ConnectionClosedError,
    EnvTimeoutError,
    ServerError,
    TransportError,
)
from forge_env.env import AsyncEnv
from forge_env.runtime._base import EnvRuntime

__all__ = ["EnvPool"]

logger = logging.getLogger(__name__)

_DEFAULT_SESSIONS_PER_SERVER = 64
_CLOSE_TIMEOUT = 5.0
_WAIT_SAMPLES = 4096  # lease waits kept for the percentile


class _UseDefault:
    """Sentinel: use the pool's ``lease_timeout`` (None already means "no limit")."""

    def __repr__(self) -> str:
        return "USE_POOL_DEFAULT"


_USE_DEFAULT = _UseDefault()


@dataclass(eq=False)
class _Server:
    """One runtime in the pool and its bookkeeping."""

    index: int
    runtime: EnvRuntime
    healthy: bool = False
    active: int = 0
    leases_total: int = 0
    generation: int = 0  # bumped on every replacement: leases of an older one are orphans
    restarts: int = 0
    restart_failures: int = 0
    recovery: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def recovering(self) -> bool:
        return self.recovery is not None and not self.recovery.done()


class EnvPool:
    """Sessions leased across several env servers, with health checks and restarts.

    ``lease()`` picks the healthy server with the fewest active leases, opens a session
    on it, and closes the session when the block exits. A background task checks every
    server each ``health_interval`` seconds and restarts a dead one (``runtime.restart()``,
    or a new runtime from ``runtime_factory`` if that fails). A lease whose server dies
    mid-episode raises :class:`~forge_env.ConnectionClosedError` — the episode is lost and
    should be counted as failed — and the server is replaced at once.

    >>> import asyncio
    >>> async def main():
    ...     pool = EnvPool(lambda: LocalProcessRuntime("guess_number"), size=2)
    ...     async with pool:
    ...         async with pool.lease() as env:
    ...             obs, info = await env.reset(seed=1)
    ...         print(pool.stats()["leases_total"])
    >>> asyncio.run(main())  # doctest: +SKIP

    Args:
        runtimes: the runtimes to pool (not started yet, or started), or a zero-argument
            factory building one (then ``size`` of them are built).
        size: number of servers when ``runtimes`` is a factory (default 1); must equal
            ``len(runtimes)`` if given with a sequence.
        max_sessions_per_server: concurrent leases per server; default: the runtime's
            ``max_sessions`` attribute if it has one, else 64.
        health_interval: seconds between background health checks.
        health_timeout: seconds one health check may take before it counts as failed.
        lease_timeout: seconds ``lease()`` waits for a free slot before raising
            :class:`~forge_env.EnvTimeoutError`; None waits without limit.
    """

    def __init__(
        self,
        runtimes: Sequence[EnvRuntime] | Callable[[], EnvRuntime],
        *,
        size: int | None = None,
        max_sessions_per_server: int | None = None,
        health_interval: float = 5.0,
        health_timeout: float = 5.0,
        lease_timeout: float | None = 60.0,
    ) -> None:
        if callable(runtimes) and not isinstance(runtimes, Sequence):
            self._factory: Callable[[], EnvRuntime] | None = runtimes
            size = 1 if size is None else size
            if size < 1:
                raise ValueError(f"size must be >= 1, got {size}")
            built = [runtimes() for _ in range(size)]
        else:
            self._factory = None
            built = list(runtimes)
            if not built:
                raise ValueError("EnvPool needs at least one runtime (or a runtime factory and size)")
            if size is not None and size != len(built):
                raise ValueError(f"size={size} but {len(built)} runtimes were given; drop size")
        for runtime in built:
            if not isinstance(runtime, EnvRuntime):
                raise TypeError(
                    f"{runtime!r} is not an EnvRuntime (needs url, start, stop, restart, "
                    "health, session)"
                )
        if max_sessions_per_server is not None and max_sessions_per_server < 1:
            raise ValueError(f"max_sessions_per_server must be >= 1, got {max_sessions_per_server}")
        if health_interval <= 0 or health_timeout <= 0:
            raise ValueError(
                f"health_interval and health_timeout must be > 0, got {health_interval}, {health_timeout}"
            )
        if lease_timeout is not None and lease_timeout < 0:
            raise ValueError(f"lease_timeout must be >= 0 or None, got {lease_timeout}")
        self._servers = [_Server(i, r) for i, r in enumerate(built)]
        self._max_per_server = max_sessions_per_server
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.lease_timeout = lease_timeout
        self._cond = asyncio.Condition()
        self._health_task: asyncio.Task[None] | None = None
        self._started = False
        self._leases_total = 0
        self._failures = 0
        self._lease_timeouts = 0
        self._waits: deque[float] = deque(maxlen=_WAIT_SAMPLES)
        self._wait_max = 0.0

    def __repr__(self) -> str:
        healthy = sum(s.healthy for s in self._servers)
        return f"EnvPool(servers={len(self._servers)}, healthy={healthy}, started={self._started})"

    @property
    def runtimes(self) -> list[EnvRuntime]:
        """The pooled runtimes, in order (a replaced runtime takes its predecessor's place)."""
        return [s.runtime for s in self._servers]

    def _capacity(self, server: _Server) -> int:
        if self._max_per_server is not None:
            return self._max_per_server
        cap = getattr(server.runtime, "max_sessions", None)
        return int(cap) if isinstance(cap, int) and cap > 0 else _DEFAULT_SESSIONS_PER_SERVER

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start every runtime (concurrently) and the health checker. Idempotent.

        Raises:
            RuntimeStartError: a runtime failed to start; the others are stopped again.
        """
        if self._started:
            return
        results = await asyncio.gather(
            *(s.runtime.start() for s in self._servers), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(s.runtime.stop() for s in self._servers), return_exceptions=True)
            raise errors[0]
        for server in self._servers:
            server.healthy = True
        self._started = True
        self._health_task = asyncio.create_task(self._health_loop(), name="env-pool-health")

    async def stop(self) -> None:
        """Stop the health checker, any restart in progress and every runtime. Idempotent."""
        if not self._started:
            return
        self._started = False
        tasks = [t for t in [self._health_task, *(s.recovery for s in self._servers)] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._health_task = None
        results = await asyncio.gather(
            *(s.runtime.stop() for s in self._servers), return_exceptions=True
        )
        for server, result in zip(self._servers, results):
            server.healthy = False
            if isinstance(result, BaseException):
                logger.warning("stopping %r failed: %r", server.runtime, result)
        async with self._cond:
            self._cond.notify_all()  # waiters see the pool closed

    async def __aenter__(self) -> "EnvPool":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- leasing ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(
        self, *, timeout: float | None | _UseDefault = _USE_DEFAULT
    ) -> AsyncIterator[AsyncEnv[Any, Any]]:
        """Borrow a connected session on the least-loaded healthy server.

        >>> async with pool.lease() as env:  # doctest: +SKIP
        ...     obs, info = await env.reset(seed=3)

        The session is closed and its slot returned when the block exits.

        Args:
            timeout: seconds to wait for a free slot; default: the pool's ``lease_timeout``.

        Raises:
            EnvTimeoutError: no slot became free in time (the pool is at capacity or its
                servers are down).
            ConnectionClosedError: the server died during the lease (episode lost; the
                pool is replacing the server) — take a new lease to retry.
        """
        wait_limit = self.lease_timeout if isinstance(timeout, _UseDefault) else timeout
        started = time.monotonic()
        deadline = None if wait_limit is None else started + float(wait_limit)
        tried: set[int] = set()
        while True:
            server, generation = await self._acquire(deadline, started, exclude=tried)
            try:
                env = await server.runtime.session()
                break
            except TransportError as e:
                # The server may be gone: have it checked (and replaced), try another.
                tried.add(server.index)
                await self._release(server)
                if await self._check_after_failure(server, generation):
                    self._failures += 1
                if len(tried) >= len(self._servers) or (deadline and time.monotonic() >= deadline):
                    raise
                logger.warning("opening a session on %s failed (%s); trying another server",
                               server.runtime.url, e)
            except BaseException:
                await self._release(server)
                raise
        try:
            yield env
        except TransportError as e:
            if isinstance(e, ServerError):
                raise  # the server answered: it is alive
            if await self._check_after_failure(server, generation):
                self._failures += 1
                raise ConnectionClosedError(
                    f"env server #{server.index} died during this lease: the episode is lost "
                    f"(count it as failed) and the pool is restarting the server; take a new "
                    f"lease to retry. Cause: {e}",
                    url=server.runtime.url or getattr(e, "url", None),
                    session_id=getattr(e, "session_id", None),
                ) from e
            raise
        finally:
            try:
                await asyncio.wait_for(env.close(), _CLOSE_TIMEOUT)
            except Exception as e:  # a dead server's session cannot close cleanly
                logger.debug("closing a leased session failed: %r", e)
            await self._release(server)

    async def _acquire(
        self, deadline: float | None, started: float, *, exclude: set[int]
    ) -> tuple[_Server, int]:
        async with self._cond:
            while True:
                if not self._started:
                    raise RuntimeError("EnvPool is not started: use `async with pool:` or `await pool.start()`")
                server = self._pick(exclude)
                if server is not None:
                    server.active += 1
                    server.leases_total += 1
                    self._leases_total += 1
                    waited = time.monotonic() - started
                    self._waits.append(waited)
                    self._wait_max = max(self._wait_max, waited)
                    return server, server.generation
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._lease_timeouts += 1
                    raise EnvTimeoutError(self._capacity_message(time.monotonic() - started))
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except TimeoutError:
                    pass  # re-checked above: a slot may have freed at the last moment

    def _pick(self, exclude: set[int]) -> _Server | None:
        candidates = [
            s for s in self._servers
            if s.healthy and s.index not in exclude and s.active < self._capacity(s)
        ]
        if not candidates and exclude:
            # Every server was tried once; a replaced one may work now.
            candidates = [s for s in self._servers if s.healthy and s.active < self._capacity(s)]
        if not candidates:
            return None
        # Least loaded; among equals the least used, so sequential leases rotate.
        return min(candidates, key=lambda s: (s.active, s.leases_total, s.index))

    async def _release(self, server: _Server) -> None:
        async with self._cond:
            server.active -= 1
            self._cond.notify_all()

    def _capacity_message(self, waited: float) -> str:
        healthy = [s for s in self._servers if s.healthy]
        total = sum(self._capacity(s) for s in healthy)
        active = sum(s.active for s in self._servers)
        down = len(self._servers) - len(healthy)
        return (
            f"no env session free after {waited:.1f}s: the pool has {len(healthy)} healthy "
            f"of {len(self._servers)} servers ({down} down/restarting), capacity {total} "
            f"sessions, {active} leased. Release leases sooner, raise size or "
            f"max_sessions_per_server, or raise lease_timeout"
        )

    # --- health and recovery ------------------------------------------------------------

    async def _health_loop(self) -> None:
        while self._started:
            await asyncio.sleep(self.health_interval)
            await asyncio.gather(
                *(self._check(s) for s in self._servers if not s.recovering),
                return_exceptions=True,
            )

    async def _probe(self, server: _Server) -> bool:
        try:
            return bool(await asyncio.wait_for(server.runtime.health(), self.health_timeout))
        except Exception:
            return False

    async def _check(self, server: _Server) -> None:
        if await self._probe(server):
            if not server.healthy and not server.recovering and self._started:
                server.healthy = True  # came back by itself (e.g. restarted from outside)
                async with self._cond:
                    self._cond.notify_all()
        else:
            self._schedule_recovery(server, reason="failed its health check")

    async def _check_after_failure(self, server: _Server, generation: int) -> bool:
        """After a transport error on a lease: True if that server is dead (recovery started)."""
        if server.generation != generation:
            return True  # already replaced: the lease was on the old server
        if server.recovering or not server.healthy:
            return True
        if await self._probe(server):
            return False
        self._schedule_recovery(server, reason="died during a lease")
        return True

    def _schedule_recovery(self, server: _Server, *, reason: str) -> None:
        if server.recovering or not self._started:
            return
        logger.warning("env server #%d (%s) %s: restarting it", server.index, server.runtime.url, reason)
        server.healthy = False
        server.recovery = asyncio.create_task(self._recover(server), name=f"env-pool-restart-{server.index}")

    async def _recover(self, server: _Server) -> None:
        try:
            try:
                await server.runtime.restart()
            except Exception as e:
                if self._factory is None:
                    raise
                logger.warning("restarting env server #%d failed (%s); building a new runtime",
                               server.index, e)
                with contextlib.suppress(Exception):
                    await server.runtime.stop()
                fresh = self._factory()
                await fresh.start()
                server.runtime = fresh
            server.generation += 1
            server.restarts += 1
            server.healthy = True
            logger.info("env server #%d is back at %s", server.index, server.runtime.url)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Stays unhealthy: the next health check schedules another attempt.
            server.restart_failures += 1
            logger.error("env server #%d could not be restarted: %s", server.index, e)
        finally:
            async with self._cond:
                self._cond.notify_all()

    # --- metrics ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Pool metrics.

        Returns:
            ``servers``, ``healthy``, ``capacity`` (sessions the healthy servers
            take at once), ``leases_active``, ``leases_total``,
            ``lease_wait_p50_s`` / ``lease_wait_max_s`` (time from ``lease()`` to a
            reserved slot), ``restarts``, ``restart_failures``, ``failures`` (leases or
            session opens that hit a dead server), ``lease_timeouts``, and ``per_server``
            (url, healthy, active, leases_total, restarts for each).
        """
        waits = list(self._waits)
        return {
            "servers": len(self._servers),
            "healthy": sum(s.healthy for s in self._servers),
            "capacity": sum(self._capacity(s) for s in self._servers if s.healthy),
            "leases_active": sum(s.active for s in self._servers),
            "leases_total": self._leases_total,
            "lease_wait_p50_s": statistics.median(waits) if waits else 0.0,
            "lease_wait_max_s": self._wait_max,
            "restarts": sum(s.restarts for s in self._servers),
            "restart_failures": sum(s.restart_failures for s in self._servers),
            "failures": self._failures,
            "lease_timeouts": self._lease_timeouts,
            "per_server": [
                {
                    "url": s.runtime.url,
                    "healthy": s.healthy,
                    "active": s.active,
                    "leases_total": s.leases_total,
                    "restarts": s.restarts,
                }
                for s in self._servers
            ],
        }
