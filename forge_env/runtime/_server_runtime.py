"""What every runtime that starts a real env server shares (subprocess, container, ...).

Such a runtime starts *something* (a process, a container) that serves the OpenEnv wire
on a URL. Waiting for ``/health`` with a deadline, failing fast with the log tail, health
checks, and opening :class:`~forge_env.RemoteEnv` sessions are the same for all of them;
only starting, stopping and "is it still running" differ.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

from forge_env._exceptions import RuntimeStartError
from forge_env.env import Action, AnyAction, AnyObservation, AsyncEnv, Observation
from forge_env.runtime._base import BaseRuntime

__all__ = ["ServerRuntime"]

logger = logging.getLogger(__name__)


class ServerRuntime(BaseRuntime):
    """Base of runtimes whose sessions are RemoteEnv connections to a server they started.

    A subclass implements ``_start`` (launch, then ``await self._wait_until_healthy(...)``),
    ``_stop``, :meth:`_server_running` and :attr:`url`.

    Args:
        max_sessions: concurrent sessions the server accepts (a pool leases at most this
            many; corrected from the server's ``GET /sessions`` once it is up).
        action_type / observation_type: types sessions parse into (default: any fields).
        connect_timeout / message_timeout: passed to each session's RemoteEnv.
        health_timeout: seconds one health probe may take.
    """

    def __init__(
        self,
        *,
        max_sessions: int = 256,
        action_type: type[Action] | None = None,
        observation_type: type[Observation] | None = None,
        connect_timeout: float = 10.0,
        message_timeout: float | None = 60.0,
        health_timeout: float = 5.0,
    ) -> None:
        super().__init__()
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.action_type: type[Action] = action_type or AnyAction
        self.observation_type: type[Observation] = observation_type or AnyObservation
        self.connect_timeout = connect_timeout
        self.message_timeout = message_timeout
        self.health_timeout = health_timeout

    @abc.abstractmethod
    def _server_running(self) -> bool:
        """Cheap local check that the process/container still runs (no network)."""

    async def health(self) -> bool:
        """True when the server still runs and ``GET /health`` answers 200."""
        url = self.url
        if url is None or not self.running or not self._server_running():
            return False
        try:
            async with httpx.AsyncClient(timeout=self.health_timeout, trust_env=False) as client:
                return (await client.get(url + "/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _session(self) -> AsyncEnv[Any, Any]:
        from forge_env.client import RemoteEnv

        url = self.url
        assert url is not None
        env = RemoteEnv(
            url,
            action_type=self.action_type,
            observation_type=self.observation_type,
            connect_timeout=self.connect_timeout,
            message_timeout=self.message_timeout,
        )
        connect = getattr(env, "connect", None)
        if connect is not None and inspect.iscoroutinefunction(connect):
            # Connect now, so a dead server fails the lease, not the first reset.
            await connect()
        return env

    async def _wait_until_healthy(
        self,
        url: str,
        *,
        what: str,
        timeout: float,
        exit_code: Callable[[], int | None],
        log_tail: Callable[[], str],
        log_hint: str = "",
    ) -> float:
        """Poll ``GET url/health`` until 200; return the seconds it took.

        Args:
            url: the server's base URL.
            what: how to name the server in errors (e.g. ``"env server for 'echo'"``).
            timeout: the deadline, in seconds.
            exit_code: the exit code once the server ended, else None (checked each poll,
                so a crash fails at once rather than at the deadline).
            log_tail: the server's recent output, attached to the error.
            log_hint: appended to error messages (e.g. where the full log is).

        Raises:
            RuntimeStartError: the server exited, or did not answer in time. The caller
                still owns the server and must stop it.
        """
        started = time.monotonic()
        deadline = started + timeout
        delay = 0.02
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while True:
                code = exit_code()
                if code is not None:
                    raise RuntimeStartError(
                        f"{what} exited with code {code} after {time.monotonic() - started:.1f}s, "
                        f"before becoming healthy{log_hint}",
                        logs=log_tail(),
                        url=url,
                    )
                try:
                    if (await client.get(url + "/health")).status_code == 200:
                        await self._adopt_server_capacity(client, url)
                        return time.monotonic() - started
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    raise RuntimeStartError(
                        f"{what} did not answer GET /health within startup_timeout={timeout:g}s "
                        f"(it was stopped); raise startup_timeout if the env is slow to "
                        f"import{log_hint}",
                        logs=log_tail(),
                        url=url,
                    )
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.5, 0.25)

    async def _adopt_server_capacity(self, client: httpx.AsyncClient, url: str) -> None:
        """Take the server's real capacity (an env that declares
        ``supports_concurrent_sessions = False`` is served with one), so a pool never
        leases more sessions than the server accepts."""
        try:
            response = await client.get(url + "/sessions")
            served = response.json().get("max_sessions") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return  # not a forge-env server (e.g. an OpenEnv app): keep ours
        if isinstance(served, int) and 0 < served < self.max_sessions:
            logger.info("%s serves %d sessions at most, not %d", url, served, self.max_sessions)
            self.max_sessions = served
