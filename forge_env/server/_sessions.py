"""The server's session table: one env per session, capacity, idle reaping, stats.

A session is one env instance with its own episode bookkeeping. Sessions are opened by a
WebSocket connection (``/ws``, the usual case) or by the MCP extension method
``openenv/session/create`` (HTTP ``/mcp``), and every way a session ends — a ``close``
frame, a disconnect, the idle reaper, server shutdown — goes through
:meth:`SessionManager.close`, which awaits the env's ``close()`` exactly once.

Nothing here grows with the number of episodes: a session holds counters, not histories,
and the table holds only live sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from forge_env.env._core import AsyncEnv
from forge_env.server._factory import EnvFactory

__all__ = [
    "ServerStats",
    "Session",
    "SessionManager",
    "CapacityError",
    "FactoryFailedError",
]

logger = logging.getLogger(__name__)

EndReason = Literal["closed", "disconnected", "idle_timeout", "shutdown", "factory_error"]


@dataclass(slots=True)
class ServerStats:
    """Counters of one server, served at ``GET /sessions`` and kept on ``app.state.stats``.

    >>> stats = ServerStats(max_sessions=4)
    >>> stats.count_error("EXECUTION_ERROR")
    >>> stats.snapshot()["errors"]
    {'EXECUTION_ERROR': 1}

    Attributes:
        max_sessions: the capacity (``create_app(max_sessions=...)``).
        active_sessions: sessions open now.
        peak_sessions: the most sessions open at once since start.
        total_sessions: sessions ever opened.
        closed_sessions: sessions that ended, for any reason (reaped ones included).
        reaped_sessions: sessions closed by the idle reaper.
        rejected_sessions: connections refused with ``CAPACITY_REACHED``.
        env_close_errors: env ``close()`` calls that raised (logged, then ignored).
        resets / steps: successful reset and step messages, all sessions together.
        errors: error frames sent, by error code (WebSocket ``ErrorCode`` values).
    """

    max_sessions: int
    active_sessions: int = 0
    peak_sessions: int = 0
    total_sessions: int = 0
    closed_sessions: int = 0
    reaped_sessions: int = 0
    rejected_sessions: int = 0
    env_close_errors: int = 0
    resets: int = 0
    steps: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def count_error(self, code: str) -> None:
        """Count one error frame of ``code``."""
        self.errors[code] = self.errors.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of every counter."""
        return {
            "max_sessions": self.max_sessions,
            "active_sessions": self.active_sessions,
            "peak_sessions": self.peak_sessions,
            "total_sessions": self.total_sessions,
            "closed_sessions": self.closed_sessions,
            "reaped_sessions": self.reaped_sessions,
            "rejected_sessions": self.rejected_sessions,
            "env_close_errors": self.env_close_errors,
            "resets": self.resets,
            "steps": self.steps,
            "errors": dict(self.errors),
        }


class CapacityError(Exception):
    """No session can be opened: ``max_sessions`` are open (or the server is stopping)."""

    def __init__(self, active: int, maximum: int, *, shutting_down: bool = False) -> None:
        super().__init__(
            "server is shutting down; retry on another server"
            if shutting_down
            else f"server at capacity: {active} of {maximum} sessions in use; retry later, "
            "start more servers, or raise max_sessions"
        )
        self.active_sessions = active
        self.max_sessions = maximum


class FactoryFailedError(Exception):
    """The env factory raised (or returned something that is not an AsyncEnv)."""

    def __init__(self, factory_name: str, cause: BaseException) -> None:
        super().__init__(
            f"env factory {factory_name} failed: {type(cause).__name__}: {cause}"
        )
        self.factory_name = factory_name


@dataclass(slots=True, eq=False)
class Session:
    """One live session: an env plus the bookkeeping the wire needs.

    ``step_count`` and ``episode_id`` are kept here so ``state`` frames are right even
    for envs whose ``state()`` does not track them.
    """

    id: str
    env: AsyncEnv[Any, Any]
    owner: Literal["ws", "mcp"]
    created_at: float
    last_active: float
    busy: bool = False
    step_count: int = 0
    episode_id: str | None = None
    # A WebSocket attached to this session (its owner, or one attached by session_id).
    attached: bool = False
    # Called by the reaper / shutdown to end the attached connection with a reason.
    on_evict: Callable[[str, str], Awaitable[None]] | None = None
    close_requested: bool = False
    # Set by evict() before it notifies the connection, so that whichever of the two
    # (evict or the connection's own cleanup) closes first records the real reason.
    evict_reason: EndReason | None = None
    closed: bool = False
    end_reason: EndReason | None = None

    def new_episode(self, episode_id: str | None) -> None:
        self.step_count = 0
        self.episode_id = episode_id

    def current_episode_id(self) -> str:
        """The episode id, minted on first use when the client gave none."""
        if self.episode_id is None:
            self.episode_id = uuid.uuid4().hex
        return self.episode_id


class SessionManager:
    """Owns the session table: opens sessions within capacity, reaps idle ones.

    Args:
        factory: makes one env per session.
        max_sessions: capacity; ``open`` raises :class:`CapacityError` beyond it.
        idle_timeout: seconds a session may sit without a message before the reaper
            closes it; ``None`` disables reaping.
        stats: the counters to update.
    """

    def __init__(
        self,
        factory: EnvFactory,
        *,
        max_sessions: int,
        idle_timeout: float | None,
        stats: ServerStats,
    ) -> None:
        self.factory = factory
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.stats = stats
        self.sessions: dict[str, Session] = {}
        # Slots reserved by opens whose (async) factory is still running.
        self._pending = 0
        self._reaper: asyncio.Task[None] | None = None
        self._closing_tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = False

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start the idle reaper (idempotent; needs a running loop)."""
        self.shutting_down = False
        self._start_reaper()

    def _start_reaper(self) -> None:
        if self.idle_timeout is not None and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap_forever(), name="forge-env-session-reaper"
            )

    async def stop(self) -> None:
        """Stop the reaper and close every session left (server shutdown)."""
        self.shutting_down = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reaper
            self._reaper = None
        await asyncio.gather(
            *(
                self.evict(session, "shutdown", "server is shutting down")
                for session in list(self.sessions.values())
            ),
            return_exceptions=True,
        )
        if self._closing_tasks:
            await asyncio.gather(*self._closing_tasks, return_exceptions=True)

    # --- open / close -----------------------------------------------------------------

    async def open(self, owner: Literal["ws", "mcp"]) -> Session:
        """Create a session with a fresh env.

        Raises:
            CapacityError: ``max_sessions`` sessions are open (or being opened).
            FactoryFailedError: the env factory raised.
        """
        if self.shutting_down:
            raise CapacityError(len(self.sessions), self.max_sessions, shutting_down=True)
        if self._reaper is None:
            self._start_reaper()  # apps run without lifespan events (e.g. mounted sub-apps)
        in_use = len(self.sessions) + self._pending
        if in_use >= self.max_sessions:
            self.stats.rejected_sessions += 1
            raise CapacityError(in_use, self.max_sessions)
        # Reserve the slot before awaiting the factory so concurrent opens cannot
        # overshoot the capacity.
        self._pending += 1
        try:
            env = await self.factory.create()
        except Exception as e:
            raise FactoryFailedError(self.factory.name, e) from e
        finally:
            self._pending -= 1
        now = time.monotonic()
        session = Session(
            id=uuid.uuid4().hex, env=env, owner=owner, created_at=time.time(), last_active=now
        )
        self.sessions[session.id] = session
        stats = self.stats
        stats.total_sessions += 1
        stats.active_sessions = len(self.sessions)
        if stats.active_sessions > stats.peak_sessions:
            stats.peak_sessions = stats.active_sessions
        return session

    async def close(self, session: Session, reason: EndReason) -> None:
        """End ``session`` and await its env's ``close()`` (idempotent, cancel-safe)."""
        if session.closed:
            return
        if session.evict_reason is not None:
            reason = session.evict_reason
        session.closed = True
        session.end_reason = reason
        self.sessions.pop(session.id, None)
        stats = self.stats
        stats.active_sessions = len(self.sessions)
        stats.closed_sessions += 1
        if reason == "idle_timeout":
            stats.reaped_sessions += 1
        # Shield the env's close from the caller's cancellation (ASGI cancels the
        # handler on disconnect/shutdown): an env holding a container or a sandbox
        # must be released even then.
        task = asyncio.get_running_loop().create_task(self._close_env(session))
        self._closing_tasks.add(task)
        task.add_done_callback(self._closing_tasks.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
            raise

    async def _close_env(self, session: Session) -> None:
        try:
            await session.env.close()
        except Exception:
            self.stats.env_close_errors += 1
            logger.exception(
                "env %s of session %s raised in close()", self.factory.name, session.id
            )

    async def evict(self, session: Session, reason: EndReason, message: str) -> None:
        """Close ``session`` from outside its connection (reaper, shutdown).

        An attached WebSocket is told why (``on_evict`` sends an error frame and closes
        the socket with a reason) before the env is closed.
        """
        if session.closed:
            return
        session.evict_reason = reason
        callback = session.on_evict
        if callback is not None and session.attached:
            try:
                await callback(reason, message)
            except Exception:  # the peer may already be gone
                logger.debug("could not notify session %s of %s", session.id, reason)
        await self.close(session, reason)

    # --- idle reaping -------------------------------------------------------------------

    def reap_interval(self) -> float:
        assert self.idle_timeout is not None
        return min(max(self.idle_timeout / 4, 0.05), 5.0)

    async def reap_idle(self) -> int:
        """Close every session idle for longer than ``idle_timeout``; returns how many."""
        if self.idle_timeout is None:
            return 0
        deadline = time.monotonic() - self.idle_timeout
        stale = [s for s in self.sessions.values() if not s.busy and s.last_active < deadline]
        reaped = 0
        for session in stale:
            # Re-check: a message may have arrived while an earlier eviction awaited.
            if session.busy or session.closed or session.last_active >= time.monotonic() - self.idle_timeout:
                continue
            reaped += 1
            idle_for = time.monotonic() - session.last_active
            logger.info("closing session %s: idle for %.1fs", session.id, idle_for)
            await self.evict(
                session,
                "idle_timeout",
                f"session closed after {idle_for:.1f}s without messages "
                f"(session_idle_timeout={self.idle_timeout:g}s); reconnect to start a new "
                "session",
            )
        return reaped

    async def _reap_forever(self) -> None:
        interval = self.reap_interval()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_idle()
            except Exception:  # never let one bad close stop the reaper
                logger.exception("idle-session reaper failed; retrying")
