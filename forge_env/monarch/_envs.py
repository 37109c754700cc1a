"""Environment pools as Monarch actors: env sessions live in their own processes.

:class:`EnvPoolActor` owns env sessions in one process (a fresh env per session, built from
an env spec in that process). :class:`MonarchEnvPool` runs ``procs`` of them behind a
:class:`~forge_env.monarch.Service` and is an env source for
:class:`~forge_env.rollout.RolloutCollector`: ``async with pool.lease() as env`` yields an
:class:`~forge_env.AsyncEnv` proxy whose calls go to the actor holding the session.

Failure model (the same as :class:`~forge_env.runtime.EnvPool`'s): an error raised by the
env inside the actor reaches the caller as the same exception (an ``InvalidActionError``
stays an ``InvalidActionError``, so a bad action is an error observation, not a failure); a
dead env process ends the episodes it held with :class:`~forge_env.ConnectionClosedError`
(run_episode records them as ``env_error``: counted, never dropped) and the Service respawns
it, so later leases work again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import logging
import os
import pickle
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from monarch.actor import Actor, concurrent_endpoint

from forge_env._exceptions import (
    ConnectionClosedError,
    EnvExecutionError,
    EnvTimeoutError,
)
from forge_env.env import (
    AnyAction,
    AnyObservation,
    AsyncEnv,
    EnvMetadata,
    ResetResult,
    State,
    StepResult,
    ToolSpec,
)
from forge_env.monarch._hosts import HostsConfig
from forge_env.runtime._resolve import new_env

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.monarch._service import Service

__all__ = ["EnvPoolActor", "MonarchEnv", "MonarchEnvPool"]

logger = logging.getLogger(__name__)

_URL_PREFIXES = ("http://", "https://", "ws://", "wss://")
_CLOSE_TIMEOUT = 5.0
_RENDER_CACHE = 4  # rendered observations a proxy remembers (run_episode renders the latest one)

EnvSpec = str | Callable[[], Any]
"""A built-in env name, ``module:Class``, an env folder, an OpenEnv server URL, or a picklable
zero-argument factory (an AsyncEnv subclass) importable in the env processes."""


# --- in the env process ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Reply:
    """What every endpoint returns: a value, or the env's exception to re-raise in the caller.

    Env errors travel as values, not as raised endpoint errors, so the Service never mistakes
    an env refusing an action for a broken replica (and never retries it elsewhere).
    """

    value: Any = None
    error: BaseException | None = None
    gone: bool = False
    """The actor has no such session: its process was respawned since the session opened."""


@dataclasses.dataclass(frozen=True)
class _EnvDescription:
    """The env's class-level facts, read once in an env process; the proxy copies them."""

    name: str
    metadata: EnvMetadata | None
    action_type: type[Any]
    observation_type: type[Any]
    state_type: type[Any]
    supports_concurrent_sessions: bool
    remote_schema: dict[str, Any] | None = None
    """For an OpenEnv URL: the server's ``/schema`` (agents read it instead of ``action_type``)."""


def _build_factory(spec: EnvSpec, env_kwargs: dict[str, Any]) -> Callable[[], Any]:
    """The env factory of ``spec`` in this process (what apps/agent_grpo's ``_env_source`` does)."""
    if isinstance(spec, str) and spec.startswith(_URL_PREFIXES):
        from forge_env.client import RemoteEnv

        if env_kwargs:
            raise ValueError(f"env_kwargs {sorted(env_kwargs)} do not apply to an OpenEnv URL ({spec})")
        return functools.partial(RemoteEnv, spec)
    if isinstance(spec, str) and spec.startswith("docker:"):
        raise ValueError(
            f"{spec!r}: docker images are pooled by forge_env.runtime.EnvPool(DockerRuntime), not by "
            "Monarch env processes; use runtime: local for docker envs, or give a built-in name, "
            "module:Class, an env folder or a server URL"
        )
    if isinstance(spec, str):
        from forge_env.runtime import resolve_env_factory

        factory: Callable[[], Any] = resolve_env_factory(spec)
    elif callable(spec):
        factory = spec
    else:
        raise TypeError(f"env spec must be a string or a zero-argument env factory, got {spec!r}")
    return functools.partial(factory, **env_kwargs) if env_kwargs else factory


def _portable(error: BaseException) -> BaseException:
    """``error`` with its remote traceback as a note, or a picklable stand-in of it."""
    tb = "".join(traceback.format_exception(error)).rstrip()
    try:
        error.add_note(f"raised in env process {os.getpid()}:\n{tb}")
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # an exception that does not pickle: keep its type name and message
        message = f"{type(error).__module__}.{type(error).__qualname__}: {error}"
        stand_in = EnvExecutionError(message, env_name=getattr(error, "env_name", None))
        stand_in.add_note(f"raised in env process {os.getpid()}:\n{tb}")
        return stand_in


class _EnvSessions:
    """The env sessions of one process, by id. A plain object: testable without Monarch.

    >>> import asyncio
    >>> host = _EnvSessions("guess_number")
    >>> async def play():
    ...     await host.open("s1")
    ...     reply = await host.reset("s1", 3, None)
    ...     return reply.value[0].observation.lo
    >>> asyncio.run(play())
    1
    """

    def __init__(self, spec: EnvSpec, env_kwargs: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.pid = os.getpid()
        self._sessions: dict[str, AsyncEnv[Any, Any]] = {}
        self._opened = 0
        self._calls = 0
        self._errors = 0
        self._call_seconds = 0.0
        try:
            self._factory: Callable[[], Any] | None = _build_factory(spec, dict(env_kwargs or {}))
            self._setup_error: BaseException | None = None
        except Exception as e:  # raised to the caller by describe(), not at spawn time
            self._factory, self._setup_error = None, e

    async def _new_env(self) -> AsyncEnv[Any, Any]:
        if self._factory is None:
            assert self._setup_error is not None
            raise self._setup_error
        return await new_env(self._factory, self.spec)

    async def describe(self) -> _Reply:
        try:
            return _Reply(await self._describe())
        except Exception as e:
            return _Reply(error=_portable(e))

    async def _describe(self) -> _EnvDescription:
        if self._factory is None:
            assert self._setup_error is not None
            raise self._setup_error
        cls = _env_class(self._factory)
        probe: AsyncEnv[Any, Any] | None = None
        if cls is None or _is_remote_class(cls):
            # A factory function, or a client whose types are set per instance: build one env.
            probe = await self._new_env()
            cls = type(probe)
        source: Any = probe if probe is not None else cls
        try:
            remote_schema: dict[str, Any] | None = None
            if _is_remote_class(cls):
                assert probe is not None
                remote_schema = await getattr(probe, "schema")()  # RemoteEnv: GET /schema
                metadata = await getattr(probe, "metadata")()  # RemoteEnv: GET /metadata
            else:
                metadata = cls.metadata
            return _EnvDescription(
                name=metadata.name if metadata is not None else cls.__name__,
                metadata=metadata,
                action_type=source.action_type,
                observation_type=source.observation_type,
                state_type=source.state_type,
                supports_concurrent_sessions=bool(cls.supports_concurrent_sessions),
                remote_schema=remote_schema,
            )
        finally:
            if probe is not None:
                with contextlib.suppress(Exception):
                    await probe.close()

    async def open(self, session_id: str) -> _Reply:
        try:
            env = await self._new_env()
        except Exception as e:
            return _Reply(error=_portable(e))
        self._sessions[session_id] = env
        self._opened += 1
        return _Reply(self.pid)

    async def _run(self, session_id: str, call: Callable[[AsyncEnv[Any, Any]], Any]) -> _Reply:
        env = self._sessions.get(session_id)
        if env is None:
            return _Reply(gone=True)
        started = time.perf_counter()
        self._calls += 1
        try:
            return _Reply(await call(env))
        except Exception as e:
            self._errors += 1
            return _Reply(error=_portable(e))
        finally:
            self._call_seconds += time.perf_counter() - started

    async def reset(self, session_id: str, seed: int | None, options: dict[str, Any] | None) -> _Reply:
        async def call(env: AsyncEnv[Any, Any]) -> tuple[Any, str]:
            result = await env.reset(seed=seed, options=options)
            return result, _render(env, result.observation)

        return await self._run(session_id, call)

    async def step(self, session_id: str, action: Any) -> _Reply:
        async def call(env: AsyncEnv[Any, Any]) -> tuple[Any, str]:
            result = await env.step(action)
            return result, _render(env, result.observation)

        return await self._run(session_id, call)

    async def state(self, session_id: str) -> _Reply:
        return await self._run(session_id, lambda env: env.state())

    async def list_tools(self, session_id: str) -> _Reply:
        return await self._run(session_id, lambda env: env.list_tools())

    async def call_tool(self, session_id: str, name: str, arguments: dict[str, Any]) -> _Reply:
        return await self._run(session_id, lambda env: env.call_tool(name, arguments))

    async def close(self, session_id: str) -> _Reply:
        env = self._sessions.pop(session_id, None)
        if env is None:
            return _Reply(gone=True)
        try:
            await env.close()
            return _Reply()
        except Exception as e:
            return _Reply(error=_portable(e))

    async def close_all(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for env in sessions:
            with contextlib.suppress(Exception):
                await env.close()

    def health(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "sessions_open": len(self._sessions),
            "sessions_opened": self._opened,
            "calls": self._calls,
            "errors": self._errors,
            "call_seconds": self._call_seconds,
        }


def _env_class(factory: Callable[[], Any]) -> type[AsyncEnv[Any, Any]] | None:
    target: Any = factory
    while isinstance(target, functools.partial):
        target = target.func
    return target if inspect.isclass(target) and issubclass(target, AsyncEnv) else None


def _is_remote_class(cls: type[Any]) -> bool:
    """A client of an env server (RemoteEnv or alike): it reads its schema over the wire."""
    from forge_env.client import RemoteEnv

    return issubclass(cls, RemoteEnv) or (
        cls.action_type is AnyAction and callable(getattr(cls, "schema", None))
    )


def _render(env: AsyncEnv[Any, Any], observation: Any) -> str:
    try:
        return env.render_text(observation)
    except Exception as e:  # rendering is the agent's business; never fail a step for it
        logger.debug("render_text failed in the env process: %r", e)
        return AsyncEnv.render_text(env, observation)


class EnvPoolActor(Actor):
    """A Monarch actor owning env sessions in its own process, addressed by session id.

    Endpoints are thin: each calls :class:`_EnvSessions` and returns a ``_Reply`` (the env's
    errors travel as values). They are concurrent, so a slow env step of one session does not
    hold up the others. Spawn it through a :class:`~forge_env.monarch.Service` (what
    :class:`MonarchEnvPool` does)::

        svc = await Service.start(EnvPoolActor, "guess_number", {}, config=ServiceConfig(replicas=2))
        reply = await svc.call("open", "s1", session="s1")

    Args:
        env_spec: as :class:`MonarchEnvPool`'s.
        env_kwargs: keyword arguments of every env built.
    """

    def __init__(self, env_spec: EnvSpec, env_kwargs: dict[str, Any] | None = None) -> None:
        self._host = _EnvSessions(env_spec, env_kwargs)

    @concurrent_endpoint
    async def describe(self) -> _Reply:
        return await self._host.describe()

    @concurrent_endpoint
    async def open(self, session_id: str) -> _Reply:
        return await self._host.open(session_id)

    @concurrent_endpoint
    async def reset(self, session_id: str, seed: int | None, options: dict[str, Any] | None) -> _Reply:
        return await self._host.reset(session_id, seed, options)

    @concurrent_endpoint
    async def step(self, session_id: str, action: Any) -> _Reply:
        return await self._host.step(session_id, action)

    @concurrent_endpoint
    async def state(self, session_id: str) -> _Reply:
        return await self._host.state(session_id)

    @concurrent_endpoint
    async def list_tools(self, session_id: str) -> _Reply:
        return await self._host.list_tools(session_id)

    @concurrent_endpoint
    async def call_tool(self, session_id: str, name: str, arguments: dict[str, Any]) -> _Reply:
        return await self._host.call_tool(session_id, name, arguments)

    @concurrent_endpoint
    async def close(self, session_id: str) -> _Reply:
        return await self._host.close(session_id)

    @concurrent_endpoint
    async def health(self) -> dict[str, Any]:
        return self._host.health()

    async def __cleanup__(self, exc: Exception | None) -> None:
        await self._host.close_all()


# --- in the caller -----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class _Lease:
    session_id: str
    pid: int = 0
    lost: bool = False


class MonarchEnv(AsyncEnv[Any, Any]):
    """The caller's side of one env session held by an :class:`EnvPoolActor`.

    Looks like the env itself to agents and rollouts: its class carries the env's
    ``action_type``, ``observation_type``, ``state_type`` and ``metadata`` (so agents read
    the same schema and name as in-process), ``render_text`` returns the text the env
    rendered, and errors the env raised are raised again here with their own types. Get one
    from :meth:`MonarchEnvPool.lease`, not by constructing it.
    """

    def __init__(self, pool: MonarchEnvPool, lease: _Lease) -> None:
        self._pool = pool
        self._lease = lease
        self._rendered: list[tuple[Any, str]] = []
        self._closed = False

    @property
    def session_id(self) -> str:
        return self._lease.session_id

    @property
    def pid(self) -> int:
        """The process holding this session."""
        return self._lease.pid

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult[Any]:
        result, text = await self._pool._call(self._lease, "reset", seed, options)
        self._remember(result.observation, text)
        return result  # type: ignore[no-any-return]

    async def step(self, action: Any) -> StepResult[Any]:
        result, text = await self._pool._call(self._lease, "step", action)
        self._remember(result.observation, text)
        return result  # type: ignore[no-any-return]

    async def state(self) -> State:
        return await self._pool._call(self._lease, "state")  # type: ignore[no-any-return]

    async def list_tools(self) -> list[ToolSpec]:
        return await self._pool._call(self._lease, "list_tools")  # type: ignore[no-any-return]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        return await self._pool._call(self._lease, "call_tool", name, arguments)

    async def close(self) -> None:
        """Close the session in its process. Idempotent; a lost session closes quietly."""
        if self._closed:
            return
        self._closed = True
        await self._pool._close_session(self._lease)

    def render_text(self, observation: Any) -> str:
        for seen, text in reversed(self._rendered):
            if seen is observation:
                return text
        return super().render_text(observation)

    def _remember(self, observation: Any, text: str) -> None:
        self._rendered.append((observation, text))
        del self._rendered[:-_RENDER_CACHE]

    def __str__(self) -> str:
        return f"<MonarchEnv {self.name} session={self.session_id} pid={self.pid}>"


class _RemoteMonarchEnv(MonarchEnv):
    """A proxy of a session on an OpenEnv server: agents read its schema like a RemoteEnv's."""

    _description: _EnvDescription

    @property
    def name(self) -> str:
        return self._description.name

    async def schema(self) -> dict[str, Any]:
        return dict(self._description.remote_schema or {})

    async def metadata(self) -> EnvMetadata:  # type: ignore[override]
        assert self._description.metadata is not None
        return self._description.metadata


class MonarchEnvPool:
    """Env sessions across ``procs`` Monarch processes, leased like an :class:`~forge_env.EnvPool`.

    >>> import asyncio
    >>> async def main():
    ...     async with MonarchEnvPool("guess_number", procs=2) as pool:
    ...         async with pool.lease() as env:
    ...             obs, info = await env.reset(seed=1)
    ...         collector = RolloutCollector(agent, generator, pool)   # an env source
    >>> asyncio.run(main())  # doctest: +SKIP

    Each process runs an :class:`EnvPoolActor` (a replica of a
    :class:`~forge_env.monarch.Service` with sticky routing: a session's calls go to the
    process that opened it). A killed process ends its episodes with
    :class:`~forge_env.ConnectionClosedError` (counted failed by the collector) and is
    respawned; with ``respawn=False``, or when respawning fails, ``lease()`` raises
    :class:`~forge_env.monarch.ServiceUnavailableError` once no process is left.

    Args:
        env_spec: a built-in env name, ``module:Class``, an env folder, an OpenEnv server
            URL, or a picklable env factory (an AsyncEnv subclass). The env is built in the
            env processes; its classes must be importable there and here (they are when
            the spec resolves here: :meth:`start` resolves it here too, which also fails a
            bad spec before any process starts).
        env_kwargs: keyword arguments of every env (e.g. ``{"max_turns": 4}``).
        procs: env processes.
        sessions_per_proc: sessions each process holds at once; ``lease()`` waits (up to
            ``lease_timeout``) when all ``procs * sessions_per_proc`` are taken.
        respawn: respawn a dead process (default); False leaves it dead.
        lease_timeout: seconds ``lease()`` waits for a free slot, None without limit.
        call_timeout_s: deadline of one actor call (None: the rollout's step deadline rules).
        name: the Service's name (in logs, metrics and errors).
        hosts: where the env processes run (a :class:`~forge_env.monarch._hosts.HostsConfig`):
            None or local = this host; with worker hosts, process ``i`` runs on host
            ``i % n_hosts`` (the env's code must be installed there).
    """

    def __init__(
        self,
        env_spec: EnvSpec,
        *,
        env_kwargs: dict[str, Any] | None = None,
        procs: int = 2,
        sessions_per_proc: int = 64,
        respawn: bool = True,
        lease_timeout: float | None = 60.0,
        call_timeout_s: float | None = None,
        health_check_interval_s: float = 1.0,
        name: str = "envs",
        hosts: HostsConfig | None = None,
    ) -> None:
        if procs < 1:
            raise ValueError(f"procs must be >= 1, got {procs}")
        if sessions_per_proc < 1:
            raise ValueError(f"sessions_per_proc must be >= 1, got {sessions_per_proc}")
        if lease_timeout is not None and lease_timeout < 0:
            raise ValueError(f"lease_timeout must be >= 0 or None, got {lease_timeout}")
        if not isinstance(env_spec, str) and not callable(env_spec):
            raise TypeError(f"env_spec must be a string or a zero-argument env factory, got {env_spec!r}")
        self.env_spec = env_spec
        self.env_kwargs = dict(env_kwargs or {})
        self.procs = procs
        self.sessions_per_proc = sessions_per_proc
        self.respawn = respawn
        self.lease_timeout = lease_timeout
        self.call_timeout_s = call_timeout_s
        self.health_check_interval_s = health_check_interval_s
        self.name = name
        self.hosts = hosts if hosts is not None else HostsConfig()
        self._service: Service[EnvPoolActor] | None = None
        self._proxy_class: type[MonarchEnv] | None = None
        self._description: _EnvDescription | None = None
        self._slots = asyncio.Semaphore(procs * sessions_per_proc)
        self._leases: dict[str, _Lease] = {}
        self._leases_total = 0
        self._sessions_lost = 0
        self._lease_timeouts = 0
        self._start_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (f"MonarchEnvPool({self.env_spec!r}, procs={self.procs}, "
                f"sessions_per_proc={self.sessions_per_proc}, started={self.started})")

    @property
    def started(self) -> bool:
        return self._service is not None

    @property
    def description(self) -> _EnvDescription:
        if self._description is None:
            raise RuntimeError("MonarchEnvPool is not started: use `async with pool:` or `await pool.start()`")
        return self._description

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the env processes and read the env's description. Idempotent.

        Raises:
            EnvSpecError: the spec names nothing runnable (checked here before spawning).
            ServiceUnavailableError: the env processes could not be started.
        """
        async with self._start_lock:
            if self._service is not None:
                return
            if isinstance(self.env_spec, str):
                # Here too, so a bad spec fails before any process starts and the env's
                # classes (an env folder's package) are importable when replies arrive.
                _build_factory(self.env_spec, self.env_kwargs)
            from forge_env.monarch._service import Service, ServiceConfig

            config = ServiceConfig(
                replicas=self.procs,
                procs_per_replica=1,
                routing="sticky",
                respawn=self.respawn,
                # A session lives in one process: a call retried on another finds no session.
                max_retries=0,
                health_check_interval_s=self.health_check_interval_s,
                call_timeout_s=self.call_timeout_s,
                hosts=self.hosts,
            )
            service = await Service.start(
                EnvPoolActor, self.env_spec, self.env_kwargs, config=config, name=self.name
            )
            try:
                reply: _Reply = await service.call("describe")
                description = _unwrap(reply, what=f"describing env {self.env_spec!r}")
            except BaseException:
                await service.stop()
                raise
            self._description = description
            self._proxy_class = _proxy_class(description)
            self._service = service

    async def close(self) -> None:
        """Stop every env process (open sessions are dropped). Idempotent."""
        service, self._service = self._service, None
        if service is not None:
            await service.stop()

    stop = close

    async def __aenter__(self) -> MonarchEnvPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- leasing ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[MonarchEnv]:
        """Open a session in one of the env processes; close it when the block exits.

        Example::

            async with pool.lease() as env:
                obs, info = await env.reset(seed=3)

        Raises:
            EnvTimeoutError: no session slot became free within ``lease_timeout``.
            ServiceUnavailableError: every env process is gone and none could be respawned.
        """
        if self._service is None or self._proxy_class is None:
            raise RuntimeError("MonarchEnvPool is not started: use `async with pool:` or `await pool.start()`")
        try:
            await asyncio.wait_for(self._slots.acquire(), self.lease_timeout)
        except TimeoutError:
            self._lease_timeouts += 1
            raise EnvTimeoutError(
                f"no env session free after {self.lease_timeout:g}s: all {self.procs} x "
                f"{self.sessions_per_proc} sessions of {self.name} are leased. Release leases "
                "sooner, raise procs or sessions_per_proc, or raise lease_timeout",
                env_name=self.description.name,
            ) from None
        lease = _Lease(session_id=uuid.uuid4().hex)
        env: MonarchEnv | None = None
        try:
            lease.pid = await self._open(lease)
            self._leases[lease.session_id] = lease
            self._leases_total += 1
            env = self._proxy_class(self, lease)
            yield env
        finally:
            try:
                if env is not None:
                    await env.close()
            finally:
                self._leases.pop(lease.session_id, None)
                self._slots.release()

    async def _open(self, lease: _Lease) -> int:
        """Open the session in some env process; returns that process's pid."""
        from forge_env.monarch._service import ReplicaDiedError, ServiceUnavailableError

        assert self._service is not None
        for attempt in range(self.procs + 1):
            try:
                reply: _Reply = await self._service.call("open", lease.session_id, session=lease.session_id)
            except ReplicaDiedError:
                # Nothing lived in that process yet: opening elsewhere is safe.
                if attempt == self.procs:
                    raise
                lease.session_id = uuid.uuid4().hex  # a new key routes anew
                continue
            except ServiceUnavailableError as e:
                fix = ("respawn is off: use MonarchEnvPool(respawn=True) (the default), or more procs"
                       if not self.respawn else
                       "respawning them failed: see the cause above and Monarch's log /tmp/$USER/monarch_log.log")
                raise ServiceUnavailableError(
                    f"{self.name}: every env process of {self.env_spec!r} is gone, so no episode can "
                    f"start ({self.procs} configured, 0 alive); {fix}. Cause: {e}"
                ) from e
            return int(_unwrap(reply, what="opening an env session"))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, lease: _Lease, endpoint: str, *args: Any) -> Any:
        from forge_env.monarch._service import ServiceTimeoutError

        if lease.lost:
            raise self._lost_error(lease, "an earlier call found it gone")
        service = self._service
        if service is None:
            raise ConnectionClosedError(
                f"{self.name} was closed while session {lease.session_id} was leased",
                env_name=self.description.name, session_id=lease.session_id,
            )
        try:
            reply: _Reply = await service.call(endpoint, lease.session_id, *args, session=lease.session_id)
        except ServiceTimeoutError as e:  # slow, not dead: the session still exists
            raise EnvTimeoutError(
                f"{endpoint} took longer than call_timeout_s={self.call_timeout_s}s in env process "
                f"{lease.pid}; raise call_timeout_s if the env is just slow",
                env_name=self.description.name, session_id=lease.session_id,
            ) from e
        except Exception as e:  # the process died under the call (ReplicaDiedError, ...)
            raise self._lost(lease, e) from e
        if reply.gone:
            raise self._lost(lease, None)
        return _unwrap(reply, what=f"{endpoint} of session {lease.session_id}")

    def _lost(self, lease: _Lease, cause: BaseException | None) -> ConnectionClosedError:
        if not lease.lost:
            lease.lost = True
            self._sessions_lost += 1
        why = f"{type(cause).__name__}: {cause}" if cause is not None else (
            "the process now serving it has no such session (it was respawned)"
        )
        return self._lost_error(lease, why)

    def _lost_error(self, lease: _Lease, why: str) -> ConnectionClosedError:
        then = (f"{self.name} respawns the process, so take a new lease to go on" if self.respawn
                else f"{self.name} has respawn off, so the process stays dead")
        return ConnectionClosedError(
            f"the env process (pid {lease.pid}) holding this session died: the episode is lost "
            f"(count it as failed); {then}. Cause: {why}",
            env_name=self.description.name, session_id=lease.session_id,
        )

    async def _close_session(self, lease: _Lease) -> None:
        if lease.lost or self._service is None:
            return
        try:
            await asyncio.wait_for(
                self._service.call("close", lease.session_id, session=lease.session_id), _CLOSE_TIMEOUT
            )
        except Exception as e:  # a dead process's session cannot close cleanly
            logger.debug("closing session %s failed: %r", lease.session_id, e)

    # --- metrics ------------------------------------------------------------------------------

    async def health(self) -> list[dict[str, Any]]:
        """Each live env process's own counters: ``pid``, ``sessions_open``,
        ``sessions_opened``, ``calls``, ``errors``, ``call_seconds``."""
        if self._service is None:
            raise RuntimeError("MonarchEnvPool is not started: use `async with pool:` or `await pool.start()`")
        return list(await self._service.broadcast("health"))

    async def pids(self) -> list[int]:
        """Process ids of the live env processes."""
        return [int(h["pid"]) for h in await self.health()]

    def sessions_by_pid(self) -> dict[int, int]:
        """Open leases per env process id."""
        out: dict[int, int] = {}
        for lease in self._leases.values():
            out[lease.pid] = out.get(lease.pid, 0) + 1
        return out

    def stats(self) -> dict[str, Any]:
        """Pool metrics: ``procs``, ``healthy`` (env processes serving now), ``capacity``,
        ``sessions_open``, ``leases_total``, ``sessions_lost`` (sessions ended by a dead
        process: their episodes failed), ``lease_timeouts``, ``respawns``,
        ``sessions_by_pid`` and ``service`` (the Service's own metrics)."""
        service = self._service
        service_metrics: dict[str, float] = dict(service.metrics) if service is not None else {}
        prefix = f"service/{self.name}/"
        return {
            "procs": self.procs,
            "healthy": int(service_metrics.get(prefix + "healthy", 0)),
            "capacity": self.procs * self.sessions_per_proc,
            "sessions_open": len(self._leases),
            "leases_total": self._leases_total,
            "sessions_lost": self._sessions_lost,
            "lease_timeouts": self._lease_timeouts,
            "respawns": int(service_metrics.get(prefix + "respawns", 0)),
            "sessions_by_pid": self.sessions_by_pid(),
            "service": service_metrics,
        }

    @property
    def metrics(self) -> dict[str, float]:
        """:meth:`stats` as namespaced numbers (``envs/sessions_open``, ...) for a tracker,
        plus the Service's ``service/<name>/...`` counters."""
        stats = self.stats()
        out = {f"envs/{k}": float(v) for k, v in stats.items() if isinstance(v, (int, float))}
        out.update(stats["service"])
        return out


def _unwrap(reply: _Reply, *, what: str) -> Any:
    if reply.error is not None:
        raise reply.error
    if reply.gone:
        raise ConnectionClosedError(f"{what}: the env process has no such session")
    return reply.value


def _proxy_class(description: _EnvDescription) -> type[MonarchEnv]:
    """A proxy class carrying the env's class attributes (agents read them from the class)."""
    remote = description.remote_schema is not None
    base: type[MonarchEnv] = _RemoteMonarchEnv if remote else MonarchEnv
    attrs: dict[str, Any] = {
        "action_type": description.action_type if not remote else AnyAction,
        "observation_type": description.observation_type if not remote else AnyObservation,
        "state_type": description.state_type,
        "supports_concurrent_sessions": description.supports_concurrent_sessions,
        "__module__": __name__,
    }
    if remote:
        attrs["_description"] = description
    else:
        attrs["metadata"] = description.metadata
    return type(f"MonarchEnv[{description.name}]", (base,), attrs)
