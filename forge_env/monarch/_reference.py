"""The KL reference policy as Monarch actors: :class:`ReferenceActor` and :class:`MonarchReference`.

:class:`ReferenceActor` holds a :class:`~forge_env.learner.ReferencePolicy` (the frozen initial
weights of ``config.model``) in its own process. :class:`MonarchReference` runs ``replicas`` of
them behind a :class:`~forge_env.monarch.Service` and has the local ReferencePolicy's
interface: ``await reference.logprobs(trajectories)`` splits the batch over the healthy
replicas by token count, calls them at once and puts the answers back in order.

A replica that dies mid-call is the Service's business: the call is retried on a healthy
replica (``max_retries=1``) and the dead one respawned in the background (``respawn=True``);
a respawned replica loads the same frozen weights, so it needs no catching up. With every
replica gone and none coming back, the call raises the Service's
:class:`~forge_env.monarch.ServiceUnavailableError` (or :class:`~forge_env.monarch.ReplicaDiedError`
when the last one died under the call), naming the role (``reference``).

Logprobs travel back as one float32 byte string per call (4 bytes a token) rather than
pickled lists of Python floats; the values are the replica's float32 results exactly.

Importing this module imports Monarch (``pip install 'forge-env[monarch]'``) and torch.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from monarch.actor import Actor, endpoint

from forge_env.learner._learner import LearnerConfig
from forge_env.learner._reference import ReferencePolicy, _check_sequences
from forge_env.monarch._hosts import HostsConfig
from forge_env.monarch._learner import cpu_threads_per_proc
from forge_env.monarch._service import Replica, Routing, Service, ServiceConfig
from forge_env.rollout._trajectory import Trajectory

__all__ = ["MonarchReference", "ReferenceActor"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class _Scored:
    """One replica's answer: float32 logprobs of every sequence, concatenated, and who made them."""

    lengths: tuple[int, ...]
    blob: bytes
    pid: int
    seconds: float


def _encode(rows: Sequence[Sequence[float]]) -> bytes:
    flat = array.array("f")
    for row in rows:
        flat.extend(row)  # float32 values from the learner: stored exactly
    return flat.tobytes()


def _decode(scored: _Scored) -> list[list[float]]:
    flat = array.array("f")
    flat.frombytes(scored.blob)
    out = []
    start = 0
    for n in scored.lengths:
        out.append(flat[start:start + n].tolist())
        start += n
    if start != len(flat):
        raise RuntimeError(
            f"reference replica (pid {scored.pid}) sent {len(flat)} logprobs for {start} tokens"
        )
    return out


def _split(lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Sequence indices in ``parts`` shares of about equal token count (no empty share).

    Longest first, each to the share with the fewest tokens so far (ties: the lower share);
    every share keeps its indices in their original order.

    >>> _split([10, 3, 8, 2, 5], 2)
    [[0, 1, 3], [2, 4]]
    >>> _split([4], 3)
    [[0]]
    """
    parts = max(1, min(parts, len(lengths)))
    loads = [0] * parts
    shares: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        target = min(range(parts), key=lambda r: (loads[r], r))
        shares[target].append(i)
        loads[target] += lengths[i]
    return [sorted(share) for share in shares if share]


# --- in the replica's process --------------------------------------------------------------------


class ReferenceActor(Actor):
    """A :class:`~forge_env.learner.ReferencePolicy` in its own process; thin endpoints over it.

    Spawned by :class:`MonarchReference` (through a :class:`~forge_env.monarch.Service`);
    usable alone::

        group = await start_procs(1, name="ref")
        actor = group.procs.spawn("ref", ReferenceActor, LearnerConfig(model="tiny"))
        info = await actor.setup.call_one()          # builds the model: pid, weight_bytes, ...
        scored = await actor.logprobs.call_one([[1, 5, 9]])

    The model is built in :meth:`setup`, not in the constructor, so that loading a large
    model does not run into Monarch's actor-spawn deadline.

    Args:
        config: the learner's config (see :class:`~forge_env.learner.ReferencePolicy`).
        threads: torch threads of this process; None: torch's default.
    """

    def __init__(self, config: LearnerConfig, threads: int | None = None) -> None:
        self.config = config
        self.threads = threads
        self._policy: ReferencePolicy | None = None

    def _ready(self) -> ReferencePolicy:
        if self._policy is None:
            raise RuntimeError("ReferenceActor: call setup() first (MonarchReference does)")
        return self._policy

    @endpoint
    async def setup(self) -> dict[str, Any]:
        """Build the reference (idempotent); returns ``pid``, ``device``, ``max_seq_len``,
        ``vocab_size``, ``weight_bytes``, ``threads`` and ``start_s``."""
        if self._policy is None:
            import torch

            if self.threads is not None:
                # Several replicas on one CPU: torch's default (every core each) oversubscribes it.
                torch.set_num_threads(self.threads)
            self._policy = await asyncio.to_thread(ReferencePolicy, self.config)
        return self._info()

    @endpoint
    async def logprobs(self, seqs: list[list[int]]) -> _Scored:
        """Teacher-forced logprobs of ``seqs`` (entry 0 of each is 0.0), packed as float32."""
        started = time.perf_counter()
        rows = await self._ready().logprobs_of_ids(seqs)
        return _Scored(lengths=tuple(len(r) for r in rows), blob=_encode(rows), pid=os.getpid(),
                       seconds=time.perf_counter() - started)

    @endpoint
    async def info(self) -> dict[str, Any]:
        """What :meth:`setup` returns, plus the reference's own ``metrics``."""
        return self._info()

    def _info(self) -> dict[str, Any]:
        import torch

        policy = self._ready()
        return {
            "pid": os.getpid(), "device": str(policy.device), "max_seq_len": policy.max_seq_len,
            "vocab_size": policy.vocab_size, "weight_bytes": policy.weight_bytes,
            "threads": torch.get_num_threads(), "start_s": policy.start_seconds, "metrics": policy.metrics(),
        }

    @endpoint
    async def close(self) -> None:
        if self._policy is not None:
            await self._policy.aclose()
            self._policy = None


# --- in the caller's process ---------------------------------------------------------------------


class MonarchReference:
    """The KL reference policy on ``replicas`` processes: a local
    :class:`~forge_env.learner.ReferencePolicy`'s interface over a Service of :class:`ReferenceActor`.

    ``logprobs`` splits the batch over the healthy replicas (by token count), calls them
    concurrently and returns one list per trajectory, in the caller's order, equal to the
    local ReferencePolicy's. The processes start on :meth:`start`, ``async with`` or the first
    call.

    Example::

        config = LearnerConfig(model="tiny", loss=LossConfig(kl_coef=0.05))
        async with MonarchReference(config, replicas=2) as reference:
            ref = await reference.logprobs(group.trajectories)
            learner.train_step(group.trajectories, group_advantages(group), ref_logprobs=ref)
            reference.metrics()["reference/replica0/sequences"]

    Args:
        config: the learner's config (its model's initial weights are the reference).
        replicas: processes, each with its own copy of the weights.
        threads_per_proc: torch threads per replica; None: on CPU, this machine's cores
            divided by ``replicas`` (at least 1); on GPU, torch's default.
        routing: the Service's routing (see :data:`~forge_env.monarch.Routing`); with the
            default ``least_loaded`` the shares of one call land on different replicas.
        respawn: respawn a dead replica in the background (it loads the same weights).
        health_check_interval_s: seconds between the Service's pings of the replicas
            (0: dead replicas are found by the calls that hit them).
        name: the Service's name: metrics ``service/<name>/...``, logs and errors.
        hosts: where the replicas run (``ServiceConfig.hosts``): None, this host; or Monarch
            workers on other hosts, replica ``i`` on host ``i % n``.

    Raises:
        ValueError: a bad argument (at construction).
        ServiceUnavailableError: a replica could not start (at :meth:`start`): a bad model
            path, say; the replica's own error is in the message.
    """

    def __init__(
        self,
        config: LearnerConfig,
        *,
        replicas: int = 1,
        threads_per_proc: int | None = None,
        routing: Routing = "least_loaded",
        respawn: bool = True,
        health_check_interval_s: float = 5.0,
        name: str = "reference",
        hosts: HostsConfig | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError(f"MonarchReference needs replicas >= 1, got {replicas}")
        if threads_per_proc is not None and threads_per_proc < 1:
            raise ValueError(
                f"MonarchReference threads_per_proc must be >= 1 or None, got {threads_per_proc}"
            )
        self.config = config
        self.name = name
        if threads_per_proc is None:
            threads_per_proc = cpu_threads_per_proc(config, replicas)
        self.threads_per_proc = threads_per_proc
        env = {"OMP_NUM_THREADS": str(threads_per_proc)} if threads_per_proc is not None else {}
        # ServiceConfig checks routing and the interval, naming the field.
        self.service_config = ServiceConfig(
            replicas=replicas, routing=routing, respawn=respawn,
            health_check_interval_s=health_check_interval_s, env=env,
            hosts=hosts if hosts is not None else HostsConfig(),
        )
        self._service: Service[ReferenceActor] | None = None
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self._limits: tuple[int, int] | None = None  # (max_seq_len, vocab_size) from the replicas
        self._weight_bytes = 0
        self._start_s = 0.0
        self._counters = dict.fromkeys(("calls", "sequences", "tokens", "seconds_total", "seconds_last"), 0.0)
        self._per_replica = [
            dict.fromkeys(("sequences", "tokens", "compute_seconds"), 0.0) for _ in range(replicas)
        ]

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def replicas(self) -> int:
        return self.service_config.replicas

    @property
    def service(self) -> Service[ReferenceActor]:
        """The Service of replicas (after :meth:`start`)."""
        if self._service is None:
            raise RuntimeError(
                "MonarchReference is not started: `await reference.start()` or `async with reference:`"
            )
        return self._service

    async def start(self) -> None:
        """Spawn the replicas and build their models (in parallel). Idempotent.

        Raises:
            ServiceUnavailableError: a replica could not be started.
        """
        if self._closed:
            raise RuntimeError("this MonarchReference is closed; create a new one")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._service is not None:
                return
            started = time.perf_counter()
            self._service = await Service.start(
                ReferenceActor, self.config, self.threads_per_proc, config=self.service_config,
                name=self.name, on_start=self._setup_replica,
            )
            self._start_s = time.perf_counter() - started
            logger.info("%s: %d reference replica(s) up in %.1f s", self.name, self.replicas, self._start_s)

    async def _setup_replica(self, replica: Replica) -> None:
        """``on_start`` (first start and every respawn): build the replica's model."""
        info = await replica.call("setup")
        self._limits = (int(info["max_seq_len"]), int(info["vocab_size"]))
        self._weight_bytes = int(info["weight_bytes"])

    async def aclose(self) -> None:
        """Stop the replicas and their processes (calls in flight fail). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._service is not None:
            await self._service.stop()

    async def __aenter__(self) -> MonarchReference:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._service is not None else "not started")
        return f"MonarchReference(model={self.config.model!r}, replicas={self.replicas}, {state})"

    # --- calls ------------------------------------------------------------------------------

    async def logprobs(self, trajectories: Sequence[Trajectory]) -> list[list[float]]:
        """Teacher-forced reference logprobs, one list per trajectory aligned with its
        ``token_ids`` (entry 0 is 0.0); see :meth:`forge_env.learner.ReferencePolicy.logprobs`.

        Raises:
            ValueError: a trajectory the reference cannot score (named in the message).
            ServiceUnavailableError: no replica is left (all died; respawn off or failed).
            ReplicaDiedError: the last replica died under the call.
        """
        names = [f"trajectory {i} ({t.env_name!r})" for i, t in enumerate(trajectories)]
        return await self.logprobs_of_ids([t.token_ids for t in trajectories], names=names)

    async def logprobs_of_ids(
        self, token_ids_batch: Sequence[Sequence[int]], *, names: Sequence[str] | None = None
    ) -> list[list[float]]:
        """:meth:`logprobs` for bare token-id lists (``names``: how errors call each one)."""
        if self._closed:
            raise RuntimeError("this MonarchReference is closed; create a new one")
        started = time.perf_counter()
        seqs = [[int(t) for t in ids] for ids in token_ids_batch]
        await self.start()
        self._check(seqs, names)
        if not seqs:
            return []
        service = self.service
        shares = _split([len(s) for s in seqs], max(1, len(service.healthy_replicas())))
        calls = [
            asyncio.ensure_future(service.call("logprobs", [seqs[i] for i in share])) for share in shares
        ]
        try:
            answers: list[_Scored] = list(await asyncio.gather(*calls))
        except BaseException:
            for call in calls:  # one share failed for good: do not leave the others running
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            raise
        out: list[list[float]] = [[] for _ in seqs]
        by_pid = {pid: r.index for r in service.replicas if r is not None for pid in r.pids}
        for share, scored in zip(shares, answers):
            rows = _decode(scored)
            if len(rows) != len(share):
                raise RuntimeError(
                    f"reference replica (pid {scored.pid}) answered {len(rows)} of {len(share)} sequences"
                )
            for i, row in zip(share, rows):
                out[i] = row
            index = by_pid.get(scored.pid)
            if index is not None:  # a replica replaced since it answered is not counted
                per = self._per_replica[index]
                per["sequences"] += len(share)
                per["tokens"] += sum(scored.lengths)
                per["compute_seconds"] += scored.seconds
        seconds = time.perf_counter() - started
        c = self._counters
        c["calls"] += 1
        c["sequences"] += len(seqs)
        c["tokens"] += sum(len(s) for s in seqs)
        c["seconds_total"] += seconds
        c["seconds_last"] = seconds
        return out

    def _check(self, seqs: Sequence[Sequence[int]], names: Sequence[str] | None) -> None:
        """The replicas' checks, here: the error names the caller's index, not a share's."""
        if self._limits is None:  # pragma: no cover - set by every replica's start
            return
        max_seq_len, vocab_size = self._limits
        _check_sequences(seqs, names, max_seq_len=max_seq_len, vocab_size=vocab_size)

    def metrics(self) -> dict[str, float]:
        """``reference/calls``, ``reference/sequences``, ``reference/tokens``,
        ``reference/seconds_total`` and ``reference/seconds_last`` (calls as the caller saw
        them), ``reference/replicas``, ``reference/replicas_healthy``, ``reference/weight_bytes``
        (per replica), ``reference/start_s``, per replica ``reference/replica<i>/sequences``,
        ``.../tokens`` and ``.../compute_seconds`` (forward passes in the replica), and the
        Service's ``service/<name>/...`` metrics."""
        out = {f"reference/{k}": v for k, v in self._counters.items()}
        out["reference/replicas"] = float(self.replicas)
        out["reference/replicas_healthy"] = float(
            len(self._service.healthy_replicas()) if self._service is not None else 0
        )
        out["reference/weight_bytes"] = float(self._weight_bytes)
        out["reference/start_s"] = self._start_s
        for i, per in enumerate(self._per_replica):
            for key, value in per.items():
                out[f"reference/replica{i}/{key}"] = value
        if self._service is not None:
            out.update(self._service.metrics)
        return out

