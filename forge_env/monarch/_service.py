"""Service: N replicas of one Monarch actor class behind one handle (Monarch has no such layer).

Each replica is the actor spawned on its own proc mesh (``procs_per_replica`` processes), on
this host or, with ``ServiceConfig.hosts``, on worker host ``index % n_hosts``. The Service
routes calls (round robin, least loaded, or sticky by session key), watches the replicas (a
probe actor per process answers pings; a call that finds its replica's process dead counts
too), retries a call whose replica died on a healthy one, and respawns dead replicas in the
background; an ``on_respawn`` hook (e.g. "load the latest weights") runs before a respawned
replica serves again.

What counts as a failure: an endpoint that *raises* is the caller's problem — the exception
(``ActorError.exception``, e.g. a ``GeneratorError``) is re-raised as is, never retried, and
the replica stays healthy. A replica whose process or actor is gone (Monarch's
``SupervisionError``) is a replica failure: marked unhealthy, respawned, and the call retried.

Importing this module does not import Monarch; :meth:`Service.start` does.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args

from forge_env._exceptions import ForgeEnvError
from forge_env.monarch._hosts import HostsConfig, replica_host

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.monarch._hosts import Hosts
    from forge_env.monarch._mesh import ProcGroup

__all__ = [
    "Replica",
    "ReplicaDiedError",
    "Routing",
    "Service",
    "ServiceConfig",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
]

logger = logging.getLogger(__name__)

Routing = Literal["round_robin", "least_loaded", "sticky"]
"""``round_robin``: replicas in turn; ``least_loaded``: the replica with the fewest calls in
flight; ``sticky``: calls with the same ``session`` key go to the same replica (a multi-turn
episode keeps its KV-cache prefix), a new key or one whose replica died goes least-loaded."""

ActorT = TypeVar("ActorT")
Hook = Callable[["Replica"], Awaitable[None]]


class ServiceUnavailableError(ForgeEnvError):
    """No replica of a Service can take the call: all died and respawn is off or failed, or
    the Service is stopped. The message names the role, what died and what to do."""


class ReplicaDiedError(ForgeEnvError):
    """A call's replica died under it and the call was not retried (``max_retries`` spent)."""


class ServiceTimeoutError(ForgeEnvError, TimeoutError):
    """A call took longer than ``call_timeout_s`` on a replica that still answers pings."""


@dataclasses.dataclass(kw_only=True, slots=True)
class ServiceConfig:
    """How a :class:`Service` runs its replicas.

    >>> ServiceConfig(replicas=2, routing="round_robin").respawn
    True
    """

    replicas: int = 1
    """How many copies of the actor run, each on its own processes."""
    procs_per_replica: int = 1
    """Processes per replica. With more than one, the actor runs on each of them and a call
    goes to all of them (SPMD, e.g. a tensor-parallel engine); the caller gets rank 0's answer."""
    routing: Routing = "sticky"
    """How :meth:`Service.call` picks a replica; see :data:`Routing`."""
    health_check_interval_s: float = 5.0
    """Seconds between pings of every healthy replica's processes; 0 = no background checks
    (dead replicas are then found by the calls that hit them)."""
    health_timeout_s: float = 10.0
    """A replica whose processes do not answer a ping within this is declared dead."""
    respawn: bool = True
    """Respawn a dead replica in the background (on new processes)."""
    respawn_attempts: int = 3
    """Tries per respawn (a second apart, doubling) before the replica is given up."""
    max_retries: int = 1
    """How many times a call whose replica died is tried again on another healthy replica
    (0 = never: for calls tied to state in one replica, like an env session)."""
    call_timeout_s: float | None = None
    """Deadline of one call on one replica; None = none. When it passes, the replica is
    pinged: dead -> the call is retried like any replica failure; alive -> the call raises
    :class:`ServiceTimeoutError` (slow, not broken: running it again elsewhere would double
    the work)."""
    start_timeout_s: float = 600.0
    """Deadline for one replica to come up: processes, actor, ``on_start``/``on_respawn``."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """Extra environment variables of the replicas' processes."""
    max_sessions: int = 100_000
    """Sticky routing remembers this many session keys (least recently used are dropped)."""
    hosts: HostsConfig = dataclasses.field(default_factory=HostsConfig)
    """Where the replicas run: this host (default), or Monarch workers on other hosts (replica
    ``i`` on host ``i % n_hosts``; a respawn whose first try fails moves on to the next host)."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"ServiceConfig.replicas must be >= 1, got {self.replicas}")
        if self.procs_per_replica < 1:
            raise ValueError(f"ServiceConfig.procs_per_replica must be >= 1, got {self.procs_per_replica}")
        if self.routing not in get_args(Routing):
            raise ValueError(
                f"ServiceConfig.routing must be one of {get_args(Routing)}, got {self.routing!r}"
            )
        if self.health_check_interval_s < 0:
            raise ValueError(
                f"ServiceConfig.health_check_interval_s must be >= 0 (0 = off), got {self.health_check_interval_s}"
            )
        for field in ("health_timeout_s", "start_timeout_s"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ServiceConfig.{field} must be > 0, got {getattr(self, field)}")
        if self.call_timeout_s is not None and self.call_timeout_s <= 0:
            raise ValueError(f"ServiceConfig.call_timeout_s must be > 0 or None, got {self.call_timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"ServiceConfig.max_retries must be >= 0, got {self.max_retries}")
        if self.respawn_attempts < 1:
            raise ValueError(f"ServiceConfig.respawn_attempts must be >= 1, got {self.respawn_attempts}")
        if self.max_sessions < 1:
            raise ValueError(f"ServiceConfig.max_sessions must be >= 1, got {self.max_sessions}")
        if not isinstance(self.hosts, HostsConfig):
            raise TypeError(
                f"ServiceConfig.hosts must be a HostsConfig, got {self.hosts!r}; build one with "
                "HostsConfig(workers=(...)) or HostsConfig.parse(value)"
            )


# --- routing: plain bookkeeping, tested without processes ----------------------------------------


@dataclasses.dataclass(kw_only=True)
class _Slot:
    """What routing knows of one replica."""

    index: int
    healthy: bool = False
    in_flight: int = 0


class _Router:
    """Picks a replica for a call from the slots' health and load; remembers sticky sessions."""

    def __init__(self, routing: Routing, *, max_sessions: int = 100_000) -> None:
        self.routing = routing
        self.max_sessions = max_sessions
        self._turn = 0
        self._sessions: collections.OrderedDict[Hashable, int] = collections.OrderedDict()

    def pick(self, slots: Sequence[_Slot], *, session: Hashable | None = None,
             exclude: frozenset[int] = frozenset()) -> int | None:
        """The index of the replica for this call, or None if no healthy one is left
        (``exclude``: replicas this call already failed on)."""
        candidates = [s for s in slots if s.healthy and s.index not in exclude]
        if not candidates:
            return None
        if self.routing == "round_robin":
            chosen = candidates[self._turn % len(candidates)]
            self._turn += 1
            return chosen.index
        if self.routing == "sticky" and session is not None:
            known = self._sessions.get(session)
            if known is not None and any(s.index == known for s in candidates):
                self._sessions.move_to_end(session)
                return known
            index = self._least_loaded(candidates)
            self._sessions[session] = index
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
            return index
        return self._least_loaded(candidates)

    def _least_loaded(self, candidates: Sequence[_Slot]) -> int:
        # Ties go round the replicas (not always to the first), so idle replicas share a burst.
        n = len(candidates)
        start = self._turn % n
        self._turn += 1
        rotated = [candidates[(start + k) % n] for k in range(n)]
        return min(rotated, key=lambda s: s.in_flight).index

    def session_replica(self, session: Hashable) -> int | None:
        """The replica a sticky session is pinned to, if any."""
        return self._sessions.get(session)

    def forget(self, session: Hashable) -> None:
        self._sessions.pop(session, None)

    @property
    def sessions(self) -> int:
        return len(self._sessions)


# --- replicas ------------------------------------------------------------------------------------


class Replica:
    """One running copy of the actor: its processes, its actor handle and its state.

    Handed to ``on_start`` / ``on_respawn`` hooks, which typically call an endpoint on it::

        async def load_latest(replica: Replica) -> None:
            await replica.call("load_weights_from", path, version)
    """

    def __init__(self, index: int, generation: int, group: "ProcGroup", actor: Any, *, procs: int) -> None:
        self.index = index
        self.generation = generation
        """0 for the first spawn of this slot, +1 per respawn."""
        self.group = group
        self.host: int | None = getattr(group, "host", None)
        """The worker host (index into ``ServiceConfig.hosts``) it runs on; None: this host."""
        self.died = asyncio.Event()
        """Set when the Service declares this replica dead: calls still waiting on it stop
        waiting (a dead host's processes can take a minute to be reported by Monarch)."""
        self.actor = actor
        """The Monarch actor mesh (``procs_per_replica`` actors)."""
        self._procs = procs
        self.calls = 0

    @property
    def pids(self) -> list[int]:
        """Process ids of this replica (rank order)."""
        return list(self.group.pids)

    async def call(self, endpoint: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``endpoint`` on this replica only: no routing, no retry, errors as Monarch raises
        them (rank 0's answer when the replica has several processes)."""
        port = getattr(self.actor, endpoint)
        if self._procs == 1:
            return await _await(port.call_one(*args, **kwargs))
        values = await _await(port.call(*args, **kwargs))
        return next(iter(values.values()))

    def __repr__(self) -> str:
        where = "" if self.host is None else f" on host {self.host} ({getattr(self.group, 'address', '')})"
        return f"<Replica {self.index} gen {self.generation} pids {self.pids}{where}>"


async def _await(future: Any) -> Any:
    return await future


async def _unless_dead(replica: Replica, call: Awaitable[Any], timeout: float | None) -> Any:
    """Await ``call``; stop waiting once ``replica`` is declared dead (:class:`_ReplicaFailure`)
    or ``timeout`` passes (TimeoutError). A call on a replica whose host died is answered by
    Monarch only after about a minute; the health check finds the death sooner."""
    if replica.died.is_set():
        if inspect.iscoroutine(call):
            call.close()  # never started: no "never awaited" warning
        raise _ReplicaFailure(f"replica {replica.index} was declared dead before the call")
    task = asyncio.ensure_future(call)
    died = asyncio.ensure_future(replica.died.wait())
    try:
        done, _ = await asyncio.wait({task, died}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        died.cancel()
    if task in done:
        return task.result()
    task.cancel()
    if died in done:
        raise _ReplicaFailure(f"replica {replica.index} was declared dead during the call")
    raise TimeoutError


def _is_app_error(error: BaseException) -> bool:
    """An exception the endpoint itself raised (Monarch wraps it in ActorError)."""
    return type(error).__name__ == "ActorError" and hasattr(error, "exception")


def _is_supervision_error(error: BaseException) -> bool:
    """Monarch's signal that an actor or its process died."""
    return type(error).__name__ == "SupervisionError"


def _app_exception(error: BaseException) -> BaseException:
    inner = getattr(error, "exception", None)
    return inner if isinstance(inner, Exception) else error


# --- the service ---------------------------------------------------------------------------------


class Service(Generic[ActorT]):
    """N replicas of one actor class behind one handle.

    Example::

        cfg = ServiceConfig(replicas=2, routing="sticky")
        svc = await Service.start(GeneratorActor, spec, config=cfg, name="generator",
                                  on_respawn=load_latest_weights)
        out = await svc.call("generate", prompt_ids, params, session=episode_id)
        await svc.broadcast("load_weights_from", "/dev/shm/w", 3)
        print(svc.metrics["service/generator/retries"])
        await svc.stop()

    Use :meth:`start` to create one (it spawns and waits for every replica). Calls may run
    concurrently from one event loop; make the actor's endpoints ``@concurrent_endpoint`` if
    they should overlap inside one replica.
    """

    def __init__(
        self,
        actor_cls: type[ActorT],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        config: ServiceConfig,
        name: str,
        on_start: Hook | None,
        on_respawn: Hook | None,
    ) -> None:
        self.actor_cls = actor_cls
        self.config = config
        self.name = name
        self._args = args
        self._kwargs = dict(kwargs)
        self._on_start = on_start
        self._on_respawn = on_respawn
        self._router = _Router(config.routing, max_sessions=config.max_sessions)
        self._slots = [_Slot(index=i) for i in range(config.replicas)]
        self._replicas: list[Replica | None] = [None] * config.replicas
        self._state: list[str] = ["starting"] * config.replicas
        """Per slot: starting / healthy / respawning / failed."""
        self._last_error: list[str] = [""] * config.replicas
        self._respawn_tasks: dict[int, asyncio.Task[None]] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()  # stops of given-up replicas
        self._starting: dict[int, ProcGroup] = {}  # processes of replicas not up yet
        self._hosts: Hosts | None = None  # attached worker hosts; None: this host
        self._attempt: dict[int, int] = {}  # slot -> try of its running respawn (1 = its own host)
        self._changed = asyncio.Event()  # set whenever a slot changes state
        self._stopped = False
        self._down_since: list[float] = [0.0] * config.replicas
        self._m: dict[str, float] = dict.fromkeys(
            ("respawns", "calls", "retries", "failures", "app_errors", "timeouts", "replica_deaths",
             "respawn_failures", "broadcasts"), 0.0,
        )
        self._call_s_total = 0.0
        self._call_s_count = 0
        self._last_respawn_s = 0.0
        self._last_down_s = 0.0

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        actor_cls: type[ActorT],
        *args: Any,
        config: ServiceConfig | None = None,
        name: str | None = None,
        on_start: Hook | None = None,
        on_respawn: Hook | None = None,
        **kwargs: Any,
    ) -> "Service[ActorT]":
        """Spawn ``config.replicas`` replicas of ``actor_cls(*args, **kwargs)`` and wait for all.

        Args:
            actor_cls: a ``monarch.actor.Actor`` subclass importable by module path (the
                replicas' processes import it).
            args, kwargs: the actor's constructor arguments (picklable).
            config: replicas, routing, health checks, respawn, retries.
            name: the Service's name in logs, metrics and errors; default the class name.
            on_start: awaited with each :class:`Replica` when it first comes up and after
                every respawn, before it takes calls (e.g. start an engine).
            on_respawn: awaited after ``on_start`` for respawned replicas only (e.g. load the
                latest weights so the replica serves the current policy version).

        Raises:
            ServiceUnavailableError: a replica could not be started (all are stopped again).
        """
        from forge_env.monarch._mesh import install_fault_hook

        install_fault_hook()
        service = cls(
            actor_cls, args, kwargs, config=config or ServiceConfig(), name=name or actor_cls.__name__,
            on_start=on_start, on_respawn=on_respawn,
        )
        if not service.config.hosts.local:
            from forge_env.monarch._hosts import Hosts

            service._hosts = await asyncio.to_thread(Hosts.attach, service.config.hosts, name=service.name)
        results = await asyncio.gather(
            *(service._spawn(i, generation=0) for i in range(service.config.replicas)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await service.stop()
            first = errors[0]
            raise ServiceUnavailableError(
                f"{service.name}: {len(errors)} of {service.config.replicas} replicas of "
                f"{actor_cls.__name__} failed to start ({type(first).__name__}: {first}). Check the "
                f"actor's constructor and on_start hook, and Monarch's log /tmp/$USER/monarch_log.log"
            ) from first
        if service.config.health_check_interval_s > 0:
            service._health_task = asyncio.create_task(service._watch(), name=f"{service.name}-health")
        return service

    async def stop(self) -> None:
        """Stop every replica and its processes (calls in flight fail). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._changed.set()
        tasks = [t for t in (self._health_task, *self._respawn_tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        groups = [r.group for r in self._replicas if r is not None] + list(self._starting.values())
        await asyncio.gather(*(g.stop() for g in groups), *self._background, return_exceptions=True)
        for i in range(len(self._slots)):
            self._slots[i].healthy = False
            self._state[i] = "stopped"

    async def __aenter__(self) -> "Service[ActorT]":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _spawn(self, index: int, *, generation: int) -> Replica:
        """Start replica ``index`` (new processes, actor, hooks) and put it into routing."""
        replica = await self._launch(index, generation=generation)
        if self._stopped:
            await replica.group.stop(grace_s=1.0)
            raise ServiceUnavailableError(f"{self.name} was stopped while replica {index} started")
        # No await from here to the end: a broadcast that starts after this sees the replica.
        self._replicas[index] = replica
        self._state[index] = "healthy"
        self._slots[index].healthy = True
        self._slots[index].in_flight = 0
        self._changed.set()
        logger.info("%s: replica %d (generation %d) up on pids %s", self.name, index, generation, replica.pids)
        return replica

    async def _launch(self, index: int, *, generation: int) -> Replica:
        """New processes, the actor on them, then the ``on_start``/``on_respawn`` hooks."""
        from forge_env.monarch._mesh import start_procs

        cfg = self.config
        hosts = self._hosts
        # Replica i on host i % n; a retried respawn tries the next hosts (its own may be gone).
        host = 0 if hosts is None else replica_host(index + self._attempt.get(index, 1) - 1, hosts.n)
        group = await start_procs(
            cfg.procs_per_replica, name=f"{self.name}-{index}", env=cfg.env, timeout_s=cfg.start_timeout_s,
            hosts=hosts, host=host,
        )
        self._starting[index] = group  # so that stop() ends these processes from here on
        try:
            actor = group.procs.spawn(f"{self.name}_{index}", self.actor_cls, *self._args, **self._kwargs)
            replica = Replica(index, generation, group, actor, procs=cfg.procs_per_replica)

            async def hooks() -> None:
                if self._on_start is not None:
                    await self._on_start(replica)
                if generation > 0 and self._on_respawn is not None:
                    await self._on_respawn(replica)

            await asyncio.wait_for(hooks(), timeout=cfg.start_timeout_s)
        except BaseException:
            await group.stop(grace_s=1.0)
            raise
        finally:
            self._starting.pop(index, None)
        return replica

    # --- failure handling ----------------------------------------------------------------------

    def _mark_dead(self, replica: Replica, why: str) -> None:
        """Take a replica out of routing (once per generation) and respawn it if configured."""
        i = replica.index
        if self._stopped or self._replicas[i] is not replica or self._state[i] != "healthy":
            return  # already handled, or a newer generation serves this slot
        self._slots[i].healthy = False
        replica.died.set()
        self._last_error[i] = why
        self._down_since[i] = time.monotonic()
        self._m["replica_deaths"] += 1
        logger.warning("%s: replica %d (pids %s) is dead: %s", self.name, i, replica.pids, why)
        if self.config.respawn:
            self._state[i] = "respawning"
            self._respawn_tasks[i] = asyncio.create_task(self._respawn(replica), name=f"{self.name}-respawn-{i}")
        else:
            self._state[i] = "failed"
            task = asyncio.create_task(replica.group.stop(grace_s=1.0))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        self._changed.set()

    async def _respawn(self, dead: Replica) -> None:
        i = dead.index
        started = time.monotonic()
        await dead.group.stop(grace_s=1.0)
        delay = 1.0
        for attempt in range(1, self.config.respawn_attempts + 1):
            self._attempt[i] = attempt
            try:
                await self._spawn(i, generation=dead.generation + 1)
            except asyncio.CancelledError:
                self._attempt.pop(i, None)
                raise
            except BaseException as e:
                self._last_error[i] = f"respawn attempt {attempt} failed: {type(e).__name__}: {e}"
                logger.warning("%s: replica %d %s", self.name, i, self._last_error[i])
                self._m["respawn_failures"] += 1
                if attempt < self.config.respawn_attempts:
                    await asyncio.sleep(delay)
                    delay *= 2
                continue
            self._attempt.pop(i, None)
            self._m["respawns"] += 1
            self._last_respawn_s = time.monotonic() - started
            self._last_down_s = time.monotonic() - self._down_since[i]
            self._respawn_tasks.pop(i, None)
            return
        self._attempt.pop(i, None)
        self._state[i] = "failed"
        self._respawn_tasks.pop(i, None)
        self._changed.set()

    async def _watch(self) -> None:
        """Ping every healthy replica's processes each ``health_check_interval_s``."""
        while not self._stopped:
            await asyncio.sleep(self.config.health_check_interval_s)
            await asyncio.gather(*(self._check(r) for r in self.healthy_replicas()))

    async def _check(self, replica: Replica) -> bool:
        try:
            await replica.group.ping(timeout_s=self.config.health_timeout_s)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            why = (f"no answer to a ping within health_timeout_s={self.config.health_timeout_s:g} s"
                   if isinstance(e, TimeoutError) else f"{type(e).__name__}: {_first_line(e)}")
            address = getattr(replica.group, "address", None)
            where = "" if address is None else f" on {address}"
            self._mark_dead(replica, f"health check failed{where}: {why}")
            return False
        return True

    # --- calls ---------------------------------------------------------------------------------

    async def _pick(self, session: Hashable | None, exclude: frozenset[int]) -> Replica:
        """A healthy replica for a call, waiting while dead ones respawn."""
        while True:
            if self._stopped:
                raise ServiceUnavailableError(f"{self.name} is stopped; start a new Service")
            index = self._router.pick(self._slots, session=session, exclude=exclude)
            if index is not None:
                replica = self._replicas[index]
                assert replica is not None
                return replica
            coming = [i for i, s in enumerate(self._state) if s in ("starting", "respawning")]
            if not coming:
                if exclude and any(s == "healthy" for s in self._state):
                    # Only replicas this call already failed on are left: use them again.
                    exclude = frozenset()
                    continue
                raise self._unavailable()
            self._changed.clear()
            await self._changed.wait()

    def _unavailable(self) -> ServiceUnavailableError:
        deaths = "; ".join(
            f"replica {i}: {err or self._state[i]}" for i, err in enumerate(self._last_error)
        )
        fix = (
            "respawn is off (ServiceConfig.respawn=False): turn it on, or start more replicas"
            if not self.config.respawn
            else "respawning failed: see the replicas' errors above and Monarch's log /tmp/$USER/monarch_log.log"
        )
        return ServiceUnavailableError(
            f"{self.name}: no replica of {self.actor_cls.__name__} is left "
            f"({self.config.replicas} configured, 0 healthy) — {deaths}. {fix}"
        )

    async def call(self, endpoint: str, *args: Any, session: Hashable | None = None, **kwargs: Any) -> Any:
        """Call ``endpoint`` on one replica chosen by the routing; return its answer.

        Args:
            endpoint: the actor's endpoint name.
            args, kwargs: its arguments (picklable).
            session: sticky routing key (e.g. an episode id); ignored by other routings.

        Raises:
            ServiceUnavailableError: no replica left (all died; respawn off or failed).
            ReplicaDiedError: the replica died under the call and ``max_retries`` is spent.
            ServiceTimeoutError: ``call_timeout_s`` passed on a replica that is still alive.
            Exception: whatever the endpoint raised (re-raised as is; not retried).
        """
        self._m["calls"] += 1
        started = time.perf_counter()
        tried: frozenset[int] = frozenset()
        attempt = 0
        while True:
            replica = await self._pick(session, tried)
            slot = self._slots[replica.index]
            slot.in_flight += 1
            replica.calls += 1
            try:
                result = await self._one_call(replica, endpoint, args, kwargs)
            except _ReplicaFailure as failure:
                if attempt >= self.config.max_retries:
                    self._m["failures"] += 1
                    raise ReplicaDiedError(
                        f"{self.name}: replica {replica.index} (pids {replica.pids}) died during "
                        f"{endpoint}() and the call was not retried (max_retries="
                        f"{self.config.max_retries}): {failure.why}"
                    ) from failure.__cause__
                attempt += 1
                self._m["retries"] += 1
                tried = tried | {replica.index}
                logger.info("%s: retrying %s() from dead replica %d", self.name, endpoint, replica.index)
                continue
            except ServiceTimeoutError:
                self._m["failures"] += 1
                self._m["timeouts"] += 1
                raise
            except BaseException as e:
                if _is_app_error(e):
                    self._m["app_errors"] += 1
                    raise _app_exception(e) from None
                raise
            finally:
                if self._replicas[replica.index] is replica:
                    slot.in_flight = max(0, slot.in_flight - 1)
            self._call_s_total += time.perf_counter() - started
            self._call_s_count += 1
            return result

    async def _one_call(self, replica: Replica, endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One try on one replica; a dead replica raises :class:`_ReplicaFailure`."""
        timeout = self.config.call_timeout_s
        try:
            return await _unless_dead(replica, replica.call(endpoint, *args, **kwargs), timeout)
        except _ReplicaFailure:
            raise
        except TimeoutError as e:
            if await self._check(replica):
                raise ServiceTimeoutError(
                    f"{self.name}: {endpoint}() took more than call_timeout_s={timeout:g}s on replica "
                    f"{replica.index}, which is alive (slow, not dead): raise call_timeout_s or make "
                    f"the call cheaper"
                ) from e
            raise _ReplicaFailure(f"timed out after {timeout:g}s and the replica is dead") from e
        except AttributeError as e:
            raise AttributeError(f"{self.actor_cls.__name__} has no endpoint {endpoint!r}") from e
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if _is_app_error(e):
                raise
            why = f"{type(e).__name__}: {_first_line(e)}"
            # Monarch's SupervisionError means the actor or its process is gone. Anything else
            # (an argument that does not pickle, say) is the caller's, unless a ping finds the
            # replica dead too.
            if not _is_supervision_error(e) and await self._check(replica):
                raise
            self._mark_dead(replica, why)
            raise _ReplicaFailure(why) from e

    async def broadcast(self, endpoint: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``endpoint`` on every healthy replica at once; their answers, in replica order.

        A replica that dies meanwhile is marked dead and respawned (its ``on_respawn`` hook
        is how it catches up) and left out of the answers.

        Raises:
            ServiceUnavailableError: no healthy replica, or every one died during the call.
            Exception: the first exception an endpoint raised (re-raised as is).
        """
        return [answer for _, answer in await self.broadcast_each(endpoint, *args, **kwargs)]

    async def broadcast_each(self, endpoint: str, *args: Any, **kwargs: Any) -> list[tuple[Replica, Any]]:
        """:meth:`broadcast`, each answer with the replica that gave it (pids cannot say which:
        replicas on different hosts may share a pid)."""
        self._m["broadcasts"] += 1
        replicas = self.healthy_replicas()
        if not replicas:
            raise self._unavailable()
        results = await asyncio.gather(
            *(self._one_call(r, endpoint, args, dict(kwargs)) for r in replicas), return_exceptions=True
        )
        answers: list[tuple[Replica, Any]] = []
        for replica, result in zip(replicas, results):
            if isinstance(result, _ReplicaFailure):
                continue
            if isinstance(result, BaseException):
                if _is_app_error(result):
                    self._m["app_errors"] += 1
                    raise _app_exception(result) from None
                raise result
            answers.append((replica, result))
        if not answers:
            raise ServiceUnavailableError(
                f"{self.name}: every replica died during broadcast {endpoint}(); "
                + ("they are being respawned, try again" if self.config.respawn else "respawn is off")
            )
        return answers

    # --- views ---------------------------------------------------------------------------------

    @property
    def replicas(self) -> list[Replica | None]:
        """Every slot's current replica (None before its first start)."""
        return list(self._replicas)

    def healthy_replicas(self) -> list[Replica]:
        """The replicas that take calls now, in index order."""
        return [r for r, s in zip(self._replicas, self._slots) if r is not None and s.healthy]

    def replica_states(self) -> list[str]:
        """Per slot: ``starting``, ``healthy``, ``respawning``, ``failed`` or ``stopped``."""
        return list(self._state)

    async def wait_healthy(self, *, timeout_s: float = 60.0) -> None:
        """Wait until no replica is starting or respawning (dead ones are back, or given up).

        Raises:
            TimeoutError: still respawning after ``timeout_s``.
        """
        async def settled() -> None:
            while any(s in ("starting", "respawning") for s in self._state) and not self._stopped:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(settled(), timeout_s)

    @property
    def metrics(self) -> dict[str, float]:
        """Counters under ``service/<name>/``: ``respawns``, ``calls``, ``retries`` (calls run
        again after their replica died), ``failures`` (calls that raised a service error to
        the caller), ``app_errors`` (endpoint exceptions passed through), ``timeouts``,
        ``replica_deaths``, ``respawn_failures``, ``broadcasts``, ``healthy``, ``in_flight``,
        ``call_s_mean`` (mean latency of successful calls, retries included),
        ``last_respawn_s`` (stop + restart + hooks of the last respawn), ``last_down_s``
        (detection to serving again), ``sessions`` and per replica ``replica<i>/healthy``,
        ``replica<i>/in_flight``, ``replica<i>/calls``, ``replica<i>/generation``."""
        p = f"service/{self.name}/"
        out = {p + k: v for k, v in self._m.items()}
        out[p + "replicas"] = float(self.config.replicas)
        out[p + "healthy"] = float(sum(s.healthy for s in self._slots))
        out[p + "in_flight"] = float(sum(s.in_flight for s in self._slots))
        out[p + "call_s_mean"] = self._call_s_total / self._call_s_count if self._call_s_count else 0.0
        out[p + "last_respawn_s"] = self._last_respawn_s
        out[p + "last_down_s"] = self._last_down_s
        out[p + "sessions"] = float(self._router.sessions)
        for slot, replica in zip(self._slots, self._replicas):
            q = f"{p}replica{slot.index}/"
            out[q + "healthy"] = float(slot.healthy)
            out[q + "in_flight"] = float(slot.in_flight)
            out[q + "calls"] = float(replica.calls if replica is not None else 0)
            out[q + "generation"] = float(replica.generation if replica is not None else -1)
        return out

    def __repr__(self) -> str:
        return f"<Service {self.name} {self.actor_cls.__name__} x{self.config.replicas} {self._state}>"


class _ReplicaFailure(Exception):
    """Internal: one try failed because its replica is dead (the call may be retried)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _first_line(error: BaseException, limit: int = 400) -> str:
    """The error's message on one line (Monarch's put the cause, e.g. ``Killed(sig=9)``, on the
    second), cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    text = text or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
