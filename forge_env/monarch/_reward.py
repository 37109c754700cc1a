"""Reward workers as Monarch actors: the reward function runs in replica processes of its own.

:class:`RewardActor` loads the reward function by its spec in its own process and scores one
trajectory per call (``concurrency`` at once, each within ``timeout_s``). :class:`MonarchRewardWorkers`
runs ``replicas`` of them behind a :class:`~forge_env.monarch.Service` and has the same methods
as :class:`~forge_env.reward.RewardWorkers`: each trajectory goes to a replica (least loaded
by default), the outcome comes back, and the caller applies it. A replica that dies under a
call is replaced (respawn) and the call is retried on a healthy replica, so a killed process
loses no score; with every replica gone, ``score_group`` raises the Service's
:class:`~forge_env.monarch.ServiceUnavailableError`.

Why processes: a heavy verifier (a sandboxed test run, a judge model on CPU threads) then
neither holds the trainer's GIL nor takes the trainer down when it crashes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

from monarch.actor import Actor, concurrent_endpoint

from forge_env.monarch._hosts import HostsConfig
from forge_env.reward._config import RewardConfig
from forge_env.reward._load import RewardSpecError, import_root
from forge_env.reward._score import _Outcome, _Scorer
from forge_env.reward._workers import _RewardWorkersBase

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.monarch._service import Replica, Routing, Service
    from forge_env.rollout import Trajectory

__all__ = ["MonarchRewardWorkers", "RewardActor"]


# --- in the replica's process --------------------------------------------------------------------


class RewardActor(Actor):
    """A reward function in its own process; ``score`` runs it on one trajectory.

    The endpoint is concurrent: up to ``concurrency`` calls run the function at once (threads
    for a sync function), the rest wait in the actor. Spawned by :class:`MonarchRewardWorkers`
    through a :class:`~forge_env.monarch.Service`; usable alone::

        procs = spawn_procs(1, name="reward")
        actor = procs.spawn("reward", RewardActor, "my_rewards:judge", {}, 30.0, 8)
        outcome = await actor.score.call_one(trajectory)

    Args:
        fn: the function's spec (``"module:function"``, ``"/abs/path/file.py:function"``),
            imported in this process.
        kwargs: keyword arguments of every call.
        timeout_s: deadline of one call.
        concurrency: calls run at once in this process.

    Raises:
        RewardSpecError: the spec does not load here (spawning the replica fails with it).
    """

    def __init__(self, fn: str, kwargs: dict[str, Any], timeout_s: float, concurrency: int) -> None:
        self._calls = 0
        self._scorer: _Scorer | None = None
        self._setup_error: str | None = None
        try:
            self._scorer = _Scorer(fn, kwargs=kwargs, timeout_s=timeout_s, concurrency=concurrency,
                                   where=f" (in reward process {os.getpid()})")
        except Exception as e:
            # Reported by `ready` (a raising constructor only shows at the first call, as a
            # dead actor): the caller turns it into a clear start error.
            self._setup_error = f"{type(e).__name__}: {e}"

    @concurrent_endpoint
    async def ready(self) -> str | None:
        """None when the function loaded in this process, else why it did not."""
        return self._setup_error

    @concurrent_endpoint
    async def score(self, trajectory: "Trajectory") -> _Outcome:
        """The outcome of the function on ``trajectory`` (a score or the error; never raises)."""
        self._calls += 1
        if self._scorer is None:
            return _Outcome(kind="setup", error=f"reward process {os.getpid()}: {self._setup_error}")
        return await self._scorer.score(trajectory)

    @concurrent_endpoint
    async def health(self) -> dict[str, Any]:
        """``pid``, ``calls`` (trajectories scored or tried here) and ``stuck`` (threads still
        running calls past their deadline)."""
        return {"pid": os.getpid(), "calls": self._calls, "stuck": self._scorer.stuck if self._scorer else 0}


# --- in the caller's process ---------------------------------------------------------------------


class MonarchRewardWorkers(_RewardWorkersBase):
    """:class:`~forge_env.reward.RewardWorkers` with the reward function in Monarch replica processes.

    Each trajectory of a group is one call to a replica; the replica returns a score (or the
    error) and this object applies it, so trajectories never travel back. The spec is loaded
    here too at construction, so a bad one fails before any process starts; the replicas
    import it by the same name (a module found on this process's ``sys.path`` outside the
    installed packages, e.g. a script's folder, is put on their ``PYTHONPATH``).

    Example::

        cfg = RewardConfig(fn="my_rewards:judge", timeout_s=60, concurrency=4)
        async with MonarchRewardWorkers(cfg, replicas=2) as rewards:
            await rewards.score_group(group)
            m = rewards.metrics()
            print(m["reward_fn/scored"], m["service/reward/replica0/calls"], m["service/reward/retries"])

    Args:
        config: the function, weight, deadline, per-process concurrency, skip_failed.
        replicas: reward processes.
        threads_per_proc: ``OMP_NUM_THREADS`` of each process (torch threads of a judge
            model); None leaves the default.
        routing: ``least_loaded`` (default), ``round_robin`` or ``sticky`` (no session key
            here, so it acts as least loaded).
        respawn: respawn a dead replica (default); its calls are retried on another one either way.
        health_check_interval_s: seconds between liveness pings of the replicas.
        env: extra environment variables of the replica processes.
        name: the Service's name (metrics ``service/<name>/...``, logs, errors).
        hosts: where the replicas run (``ServiceConfig.hosts``): None, this host; or Monarch
            workers on other hosts, replica ``i`` on host ``i % n``.

    Raises:
        RewardSpecError: ``config.fn`` does not load in this process.
    """

    def __init__(
        self,
        config: RewardConfig,
        *,
        replicas: int = 1,
        threads_per_proc: int | None = None,
        routing: "Routing" = "least_loaded",
        respawn: bool = True,
        health_check_interval_s: float = 1.0,
        env: Mapping[str, str] | None = None,
        name: str = "reward",
        hosts: HostsConfig | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"MonarchRewardWorkers replicas must be >= 1, got {replicas}")
        if threads_per_proc is not None and threads_per_proc < 1:
            raise ValueError(f"MonarchRewardWorkers threads_per_proc must be >= 1 or None, got {threads_per_proc}")
        super().__init__(config)
        # Loaded here to fail a bad spec before any process starts (and to find its import root).
        _Scorer(self.spec, kwargs=config.kwargs, timeout_s=config.timeout_s, concurrency=1)
        from forge_env.monarch._service import ServiceConfig

        proc_env = dict(env or {})
        if threads_per_proc is not None:
            proc_env.setdefault("OMP_NUM_THREADS", str(threads_per_proc))
        root = import_root(self.spec)
        if root is not None:
            paths = [p for p in proc_env.get("PYTHONPATH", os.environ.get("PYTHONPATH", "")).split(os.pathsep) if p]
            if root not in paths:
                proc_env["PYTHONPATH"] = os.pathsep.join([root, *paths])
        self.replicas = replicas
        self.name = name
        self.service_config = ServiceConfig(
            replicas=replicas,
            procs_per_replica=1,
            routing=routing,
            respawn=respawn,
            # A call holds no state in its replica: retrying it on another one is always safe.
            max_retries=max(1, replicas),
            health_check_interval_s=health_check_interval_s,
            env=proc_env,
            hosts=hosts if hosts is not None else HostsConfig(),
        )
        self._service: Service[RewardActor] | None = None
        self._start_lock = asyncio.Lock()

    @property
    def service(self) -> "Service[RewardActor]":
        """The Service of replicas (started by :meth:`start` or the first ``score_group``)."""
        if self._service is None:
            raise RuntimeError("MonarchRewardWorkers is not started: `await rewards.start()` or `async with rewards:`")
        return self._service

    async def start(self) -> None:
        """Spawn the replicas (each loads the function). Idempotent; ``score_group`` calls it.

        Raises:
            ServiceUnavailableError: a replica could not start, e.g. the function does not
                import in its process (the message carries the reason); none is left running.
        """
        if self._closed:
            raise RuntimeError("MonarchRewardWorkers is closed; create a new one")
        async with self._start_lock:
            if self._service is not None:
                return
            from forge_env.monarch._service import Service

            cfg = self.config
            self._service = await Service.start(
                RewardActor, self.spec, dict(cfg.kwargs), cfg.timeout_s, cfg.concurrency,
                config=self.service_config, name=self.name, on_start=self._check_ready,
            )

    async def _check_ready(self, replica: "Replica") -> None:
        """``on_start``: a replica serves only once the function loaded in its process."""
        problem = await replica.call("ready")
        if problem is not None:
            raise RewardSpecError(
                f"reward fn {self.spec!r} loads here but not in reward process {replica.pids} (its "
                f"environment: MonarchRewardWorkers(env=...)): {problem}"
            )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def _score_all(self, trajectories: Sequence["Trajectory"]) -> list[_Outcome]:
        from forge_env.monarch._service import ReplicaDiedError, ServiceUnavailableError

        await self.start()
        service = self.service
        results = await asyncio.gather(*(service.call("score", t) for t in trajectories), return_exceptions=True)
        outcomes: list[_Outcome] = []
        for result in results:
            if isinstance(result, _Outcome):
                outcomes.append(result)
            elif isinstance(result, ReplicaDiedError):
                # Its replica died on every try: likely this trajectory crashes the fn's process.
                outcomes.append(_Outcome(
                    kind="replica_died",
                    error=f"reward fn {self.spec}: the reward process died while scoring this trajectory "
                          f"(on every retry): {result}",
                ))
            elif isinstance(result, ServiceUnavailableError):
                raise ServiceUnavailableError(
                    f"{self.name}: every reward process of {self.spec!r} is gone, so trajectories cannot "
                    f"be scored ({self.replicas} configured, 0 alive); "
                    + ("respawn is off: use MonarchRewardWorkers(respawn=True) (the default) or more replicas"
                       if not self.service_config.respawn else
                       "respawning them failed: see the cause and Monarch's log /tmp/$USER/monarch_log.log")
                    + f". Cause: {result}"
                ) from result
            elif isinstance(result, BaseException):
                raise result
            else:  # pragma: no cover - the endpoint returns outcomes only
                raise TypeError(f"{self.name}: RewardActor.score returned {type(result).__name__}")
        return outcomes

    async def replica_health(self) -> list[dict[str, Any]]:
        """Each live replica's ``pid``, ``calls`` and ``stuck``."""
        return list(await self.service.broadcast("health"))

    def metrics(self) -> dict[str, float]:
        """As :meth:`RewardWorkers.metrics` (``reward_fn/...``; no ``stuck``: see
        :meth:`replica_health`), plus ``reward_fn/replicas_healthy`` and the Service's
        ``service/<name>/...`` counters (``replica<i>/calls``: trajectories per replica;
        ``retries``: calls run again after their replica died)."""
        out = super().metrics()
        if self._service is not None:
            out["reward_fn/replicas_healthy"] = float(len(self._service.healthy_replicas()))
            out.update(self._service.metrics)
        return out

    async def _close(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            await service.stop()

    def __repr__(self) -> str:
        return f"MonarchRewardWorkers({self.spec!r}, replicas={self.replicas}, started={self._service is not None})"
