"""The learner across several Monarch processes, on this host or on worker hosts (FSDP2, gloo or NCCL).

:class:`MonarchLearner` stands in for :class:`~forge_env.learner.Learner` wherever the
orchestrator or the app uses one (``train_step``, ``version``, ``state_dict``, ``save_hf``, ...).
It spawns ``procs`` processes; each runs a :class:`LearnerActor` that joins one
``torch.distributed`` process group (gloo on CPU, NCCL on GPU) and builds a plain
:class:`~forge_env.learner.Learner`, which then shards itself with FSDP2 through torchtitan's
``parallelize_*`` functions. The caller's batch is split over the ranks by token count; the
Learner sums the loss normaliser over every rank before dividing, and FSDP sums (not averages)
the gradients, so a step over ``procs`` processes equals one process training on the whole batch.

How a step flows::

    driver (MonarchLearner)            rank 0 .. rank N-1 (LearnerActor -> _RankLearner -> Learner)
    train_step(batch)  -- shares ----> check the share, agree (all-reduce) that every rank can go
                                       forward/backward per micro-batch, global normaliser,
                                       FSDP reduce-scatter, AdamW
                       <-- metrics --- rank 0's metrics (loss terms already all-reduced)

With ``hosts`` (worker hosts, :class:`~forge_env.monarch._hosts.HostsConfig`) the ranks are
spread over the hosts (:func:`~forge_env.monarch._hosts.spread`: consecutive ranks on one
host); rank 0's process picks a free port on its host and the rendezvous address is rank 0's
worker host name (``MASTER_ADDR``), unless ``master_addr`` says otherwise.

Checkpoints are full, not sharded: :meth:`MonarchLearner.state_dict` returns exactly what a
one-process ``Learner.state_dict()`` returns, so a run can resume with another ``procs`` count
or with the local Learner, and the other way round.

Importing this module imports Monarch (``pip install 'forge-env[monarch]'``) and torch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from monarch.actor import Actor, endpoint

from forge_env._exceptions import ForgeEnvError
from forge_env._scratch import ScratchFolder
from forge_env.learner._learner import Learner, LearnerConfig
from forge_env.learner._model import _lcp
from forge_env.monarch._hosts import Hosts, HostsConfig, machine_id, spread
from forge_env.monarch._mesh import install_fault_hook, reap, spawn_procs
from forge_env.rollout._trajectory import Task, Trajectory

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.generator import Generator

__all__ = ["LearnerActor", "LearnerProcessError", "MonarchLearner"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# How long the driver waits on one rank before it looks at the others again: a rank that
# failed is noticed within this, even while another rank still waits in a collective.
_POLL_S = 0.2
# A rank whose peer died stays blocked in a collective; after the first failure the driver
# gives the other ranks this long to report their own errors, then gives up on them.
_GRACE_S = 2.0


class LearnerProcessError(ForgeEnvError):
    """A learner process died or failed inside a step: the learner's ranks may disagree now.

    The :class:`MonarchLearner` that raised it refuses further calls; ``close()`` it and
    build a new one from the last checkpoint (``state_dict()`` / ``load_state_dict()``).
    """


# --- what travels between the driver and the ranks --------------------------------------------


@dataclasses.dataclass(slots=True)
class _Reply:
    """One rank's answer: the result, the rank's counters, and whether the call was refused
    (bad input found before any collective ran, so every rank is still in step)."""

    result: Any
    step: int
    version: int
    lr: float
    rejected: BaseException | None = None
    """This rank's own error that refused the call."""
    peer_rejected: bool = False
    """Another rank refused the call (this rank's share was fine)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _RankSetup:
    """Where rank ``rank`` of ``world`` finds the process group's rendezvous."""

    rank: int
    world: int
    master_addr: str
    master_port: int
    threads: int | None
    """torch threads; None: on CPU, the host's cores divided by ``local_world``, on GPU torch's default."""
    local_rank: int | None = None
    """Index among the ranks on its host; None: ``rank`` (one host)."""
    local_world: int = 1
    """Ranks on its host."""


def _slim(traj: Trajectory) -> Trajectory:
    """The fields the learner reads: turns, texts and info stay in the driver."""
    return Trajectory(env_name=traj.env_name, task=Task(seed=traj.task.seed), token_ids=list(traj.token_ids),
                      logprobs=list(traj.logprobs), loss_mask=list(traj.loss_mask))


def _balance(lengths: Sequence[int], ranks: int) -> list[list[int]]:
    """Split sequence indices over ``ranks`` so each rank gets about the same token count.

    Longest first, each to the rank with the fewest tokens so far (ties: the lower rank);
    every rank's indices come back in their original order. Ranks may get nothing when there
    are fewer sequences than ranks (the Learner then runs empty micro-batches to keep FSDP's
    collectives in step).

    >>> _balance([10, 3, 8, 2, 5], 2)
    [[0, 1, 3], [2, 4]]
    """
    loads = [0] * ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        target = min(range(ranks), key=lambda r: (loads[r], r))
        shares[target].append(i)
        loads[target] += lengths[i]
    return [sorted(share) for share in shares]


def _split_by_prefix(seqs: Sequence[Sequence[int]], ranks: int) -> list[list[int]]:
    """Split sequence indices over ``ranks`` for the packed layout: sequences sharing a prefix
    (a group's prompt, its shared first turns) stay on one rank, where it is computed once.

    The sequences in token order are cut into ``ranks`` runs of about equal packed cost (each
    sequence costs its tokens past the prefix it shares with the one before it), so a prefix
    is split over two ranks only at a cut. Every rank's indices come back in their original
    order; ranks may get nothing when there are fewer sequences than ranks.

    >>> prompt_a, prompt_b = [1] * 10, [2] * 10
    >>> _split_by_prefix([prompt_b + [5], prompt_a + [3], prompt_b + [6], prompt_a + [4]], 2)
    [[1, 3], [0, 2]]
    """
    order = sorted(range(len(seqs)), key=lambda i: (list(seqs[i]), i))
    costs = [len(seqs[i]) - (_lcp(seqs[order[k - 1]], seqs[i]) if k else 0) for k, i in enumerate(order)]
    total = max(sum(costs), 1)
    shares: list[list[int]] = [[] for _ in range(ranks)]
    done = 0
    for i, cost in zip(order, costs):
        # The rank whose slice of the total cost holds this sequence's midpoint.
        shares[min(ranks - 1, int((done + cost / 2) * ranks / total))].append(i)
        done += cost
    return [sorted(share) for share in shares]


# Tensors cross Monarch as bytes: Monarch pickles tensor objects slowly (10 MB of fp32 weights
# as 46 tensors took ~700 ms here, the same weights as one safetensors blob ~20 ms).


def _pack_named(named: Sequence[tuple[str, torch.Tensor]]) -> tuple[list[str], bytes]:
    from safetensors.torch import save

    return [name for name, _ in named], save(dict(named))


def _unpack_named(packed: tuple[list[str], bytes]) -> list[tuple[str, torch.Tensor]]:
    from safetensors.torch import load

    names, blob = packed
    tensors = load(blob)
    return [(name, tensors[name]) for name in names]  # the sender's order


def _pack(obj: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _unpack(blob: bytes) -> Any:
    import io

    return torch.load(io.BytesIO(blob), weights_only=True)  # tensors, numbers, strings, containers


# --- one rank: a plain object the actor wraps -------------------------------------------------


class _RankLearner:
    """One rank of the data-parallel learner: joins the process group, owns a :class:`Learner`.

    Plain Python (no Monarch): :class:`LearnerActor`'s endpoints only forward to it. Every
    method that touches the model is collective: all ranks call it together.
    """

    def __init__(self, config: LearnerConfig, setup: _RankSetup) -> None:
        import torch.distributed as dist

        self.rank = setup.rank
        self.world = setup.world
        cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        on_host = setup.rank if setup.local_rank is None else setup.local_rank
        local_rank = on_host % max(1, torch.cuda.device_count()) if cuda else on_host
        os.environ.update({
            "MASTER_ADDR": setup.master_addr, "MASTER_PORT": str(setup.master_port), "RANK": str(setup.rank),
            "WORLD_SIZE": str(setup.world), "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(setup.local_world),
        })
        threads = setup.threads
        if threads is None and not cuda:
            threads = max(1, _cores() // setup.local_world)  # this host's cores, shared by its ranks
        if threads is not None:
            # N learner processes on one CPU: torch's default (all cores each) oversubscribes it.
            torch.set_num_threads(threads)
        self.backend = "nccl" if cuda else "gloo"
        if setup.world > 1:
            dist.init_process_group(self.backend, init_method="env://", rank=setup.rank, world_size=setup.world,
                                    timeout=datetime.timedelta(minutes=30))
        self.learner = Learner(config)

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "host": socket.gethostname(), "machine": machine_id(),
            "device": str(self.learner.device),
            "backend": self.backend if self.world > 1 else "none", "max_seq_len": self.learner.max_seq_len,
            "threads": torch.get_num_threads(), "step": self.learner.step, "version": self.learner.version,
            "lr": self.learner.lr,
        }

    def reply(self, result: Any) -> _Reply:
        lrn = self.learner
        return _Reply(result=result if self.rank == 0 or result is None else None, step=lrn.step,
                      version=lrn.version, lr=lrn.lr)

    def agree(self, check: Callable[[], object]) -> _Reply | None:
        """Run ``check`` (input validation) here and learn whether it passed on every rank.

        A rank that raised before a collective while the others went on would leave them
        blocked in it; so every rank checks its share, one all-reduce tells all of them
        whether any refused, and then all go on or all return. None: every rank passed.
        """
        import torch.distributed as dist

        error: BaseException | None = None
        try:
            check()
        except Exception as e:
            error = e
        refused = error is not None
        if self.world > 1:
            flag = torch.tensor([float(refused)], device=self.learner.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            refused = bool(flag.item() > 0)
        if not refused:
            return None
        reply = self.reply(None)
        reply.rejected, reply.peer_rejected = error, error is None
        return reply

    def train_step(self, trajectories: list[Trajectory], advantages: list[Any], ref: list[Any] | None) -> _Reply:
        lrn = self.learner
        refused = self.agree(lambda: lrn._rows(trajectories, advantages, ref))
        if refused is not None:
            return refused
        return self.reply(lrn.train_step(trajectories, advantages, ref_logprobs=ref))

    def sft_step(self, trajectories: list[Trajectory]) -> _Reply:
        lrn = self.learner

        def check() -> None:
            for i, traj in enumerate(trajectories):
                lrn._check_ids(traj.token_ids, f"trajectory {i} ({traj.env_name!r})")
                if len(traj.loss_mask) != len(traj.token_ids):
                    raise ValueError(f"trajectory {i}: {len(traj.token_ids)} token_ids but "
                                     f"{len(traj.loss_mask)} loss_mask entries: they must align one to one")

        refused = self.agree(check)
        if refused is not None:
            return refused
        return self.reply(lrn.sft_step(trajectories))

    def logprobs(self, seqs: list[list[int]], temperature: float | None) -> _Reply:
        lrn = self.learner

        def check() -> None:
            for i, s in enumerate(seqs):
                lrn._check_ids(s, f"sequence {i}")

        refused = self.agree(check)
        if refused is not None:
            return refused
        reply = self.reply(None)
        reply.result = _pack(lrn.logprobs(seqs, temperature=temperature))  # every rank: its own share
        return reply

    def hf_named_tensors(self, dtype: torch.dtype | None) -> _Reply:
        # Gathered on every rank (FSDP all-gather); only rank 0 sends them back, as bytes.
        named = self.learner.hf_named_tensors(dtype=dtype, device="cpu")
        return self.reply(_pack_named(named) if self.rank == 0 else None)

    def save_hf(self, path: str, dtype: torch.dtype | None) -> _Reply:
        return self.reply(str(self.learner.save_hf(path, dtype=dtype)))

    def state_dict(self) -> _Reply:
        state = self.learner.state_dict()  # collective; full on rank 0 only
        return self.reply(_pack(state) if self.rank == 0 else None)

    def load_state_dict(self, packed: bytes) -> _Reply:
        self.learner.load_state_dict(_unpack(packed))
        return self.reply(None)

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


class LearnerActor(Actor):
    """One rank of :class:`MonarchLearner` in its own process: thin endpoints over a
    :class:`_RankLearner`. Spawned by :class:`MonarchLearner`; not meant to be used alone.

    Every endpoint but ``setup`` and ``shutdown`` is collective: the driver calls all ranks
    at once, each with its own share of the data.
    """

    def __init__(self) -> None:
        self._rank: _RankLearner | None = None

    def _ready(self) -> _RankLearner:
        if self._rank is None:
            raise RuntimeError("LearnerActor: call setup() first (MonarchLearner does)")
        return self._rank

    @endpoint
    def free_port(self) -> int:
        """A TCP port free on this rank's host (rank 0's: the process group's rendezvous)."""
        return _free_port()

    @endpoint
    def setup(self, config: LearnerConfig, setup: _RankSetup) -> dict[str, Any]:
        self._rank = _RankLearner(config, setup)
        return self._rank.info()

    @endpoint
    def train_step(self, trajectories: list[Trajectory], advantages: list[Any], ref: list[Any] | None) -> _Reply:
        return self._ready().train_step(trajectories, advantages, ref)

    @endpoint
    def sft_step(self, trajectories: list[Trajectory]) -> _Reply:
        return self._ready().sft_step(trajectories)

    @endpoint
    def logprobs(self, seqs: list[list[int]], temperature: float | None) -> _Reply:
        return self._ready().logprobs(seqs, temperature)

    @endpoint
    def hf_named_tensors(self, dtype: torch.dtype | None) -> _Reply:
        return self._ready().hf_named_tensors(dtype)

    @endpoint
    def save_hf(self, path: str, dtype: torch.dtype | None) -> _Reply:
        return self._ready().save_hf(path, dtype)

    @endpoint
    def state_dict(self) -> _Reply:
        return self._ready().state_dict()

    @endpoint
    def load_state_dict(self, packed: bytes) -> _Reply:
        return self._ready().load_state_dict(packed)

    @endpoint
    def shutdown(self) -> None:
        if self._rank is not None:
            self._rank.close()
            self._rank = None


# --- the driver -------------------------------------------------------------------------------


def _free_port() -> int:
    # Any interface: the rendezvous (TCPStore) listens on all of them.
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_threads_per_proc(config: LearnerConfig, procs: int) -> int | None:
    """Torch threads for each of ``procs`` processes sharing this host's cores with a model of
    ``config``: the cores divided among them (at least 1) on a CPU, None (torch's default) on GPU."""
    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    return max(1, _cores() // procs) if cpu else None


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class MonarchLearner:
    """A :class:`~forge_env.learner.Learner` over ``procs`` Monarch processes (this host or worker hosts).

    Same interface as the local Learner for everything the orchestrator and the app use:
    :attr:`version`, :attr:`step`, :attr:`lr`, :attr:`max_seq_len`, :attr:`config`,
    :meth:`train_step` (sync: the orchestrator runs it in a worker thread), :meth:`sft_step`,
    :meth:`logprobs`, :meth:`hf_named_tensors`, :meth:`save_hf`, :meth:`state_dict`,
    :meth:`load_state_dict`, :meth:`close`; plus ``async`` :meth:`push_weights`, which the
    orchestrator calls instead of ``hf_named_tensors`` + ``update_weights``.

    Example::

        with MonarchLearner(LearnerConfig(model="tiny", lr=1e-4), procs=2) as learner:
            metrics = learner.train_step(group.trajectories, group_advantages(group))
            await learner.push_weights(generator)       # every replica, stamped learner.version
            torch.save(learner.state_dict(), "learner.pt")  # full: loads with any procs count

    Args:
        config: the learner's config, as for :class:`~forge_env.learner.Learner`. With
            ``device="auto"`` the ranks use CUDA when they see a GPU (rank ``r`` takes GPU
            ``r % gpus``; NCCL), else the CPU (gloo).
        procs: processes (data-parallel ranks); 1 runs the plain Learner in one other process.
        name: the mesh's name in Monarch's log.
        threads_per_proc: torch threads of each rank; None: on CPU, this machine's cores
            divided by ``procs`` (at least 1), so the ranks do not fight over cores; on GPU,
            torch's default.
        master_addr: address of rank 0 for the process group's rendezvous (``MASTER_ADDR``);
            None: 127.0.0.1 on this host, rank 0's worker host name with ``hosts``. The port is
            picked free on rank 0's host.
        weights_dir: where :meth:`push_weights` writes weight folders for generators that
            load from a path; None: a fresh folder under ``/dev/shm`` (shared memory) when it
            exists, else the temp dir. The generator's processes must see it (same host, or a
            shared filesystem).
        call_timeout_s: most seconds one call (a step, a checkpoint) may take; None: no limit.
            A call past it counts as a failure (:class:`LearnerProcessError`).
        hosts: where the ranks run: None or local = this host; worker hosts: ranks spread over
            them (:func:`~forge_env.monarch._hosts.spread`), consecutive ranks per host. Their
            processes must reach each other (gloo/NCCL; set ``GLOO_SOCKET_IFNAME`` /
            ``NCCL_SOCKET_IFNAME`` in the workers' environment when hosts have several networks).

    Raises:
        FileNotFoundError, ValueError, RuntimeError: a rank could not build its Learner (no
            such model, an unsupported architecture, ``device="cuda"`` without a GPU): the
            Learner's own error, as the local Learner raises it; the processes are stopped.
        LearnerProcessError: a process died while starting.
    """

    def __init__(
        self,
        config: LearnerConfig,
        *,
        procs: int = 2,
        name: str = "learner",
        threads_per_proc: int | None = None,
        master_addr: str | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        call_timeout_s: float | None = None,
        hosts: HostsConfig | None = None,
    ) -> None:
        if procs < 1:
            raise ValueError(f"MonarchLearner needs procs >= 1, got {procs}")
        if threads_per_proc is not None and threads_per_proc < 1:
            raise ValueError(f"MonarchLearner threads_per_proc must be >= 1 or None, got {threads_per_proc}")
        if call_timeout_s is not None and not call_timeout_s > 0:
            raise ValueError(f"MonarchLearner call_timeout_s must be > 0 or None, got {call_timeout_s}")
        self.config = config
        self.procs = procs
        self.name = name
        self.call_timeout_s = call_timeout_s
        self.weight_transport = "none"
        """How the last :meth:`push_weights` moved the weights: ``shared_folder`` (rank 0 wrote
        safetensors, the generator loaded the path) or ``tensors`` (``update_weights``)."""
        self.push_seconds = 0.0
        """Wall time of the last :meth:`push_weights`."""
        self.pids: list[int] = []
        """The ranks' process ids (rank order)."""
        # One call at a time, so every rank sees the calls in the same order (collectives);
        # re-entrant: a push holds it around its save_hf / hf_named_tensors call.
        self._lock = threading.RLock()
        self._closed = False
        self._broken: str | None = None
        self._step = 0
        self._version = 0
        self._lr = 0.0
        self._max_seq_len = 0
        self._weights_root = Path(weights_dir) if weights_dir is not None else None
        self._scratch: ScratchFolder | None = None   # the weights root when this learner made it

        self.hosts = hosts if hosts is not None else HostsConfig()
        self._meshes: list[Any] = []  # one proc mesh per host used
        self._actors: list[Any] = []  # the LearnerActor mesh on each
        self._ranks: list[Any] = []  # one actor per rank, rank order
        self._local_pids: list[int] = []  # ranks on this machine: safe to signal
        install_fault_hook()
        started = time.perf_counter()
        try:
            setups = self._spawn(procs, name, threads_per_proc, master_addr, config)
            infos = self._call("setup", [(config, setup) for setup in setups], what="starting the learner")
        except BaseException:
            self._stop()
            raise
        self.pids = [int(info["pid"]) for info in infos]
        here = machine_id()
        self._local_pids = [int(info["pid"]) for info in infos if info.get("machine") == here]
        self.rank_info: list[dict[str, Any]] = infos
        """Per rank: ``pid``, ``host``, ``machine``, ``device``, ``backend``, ``threads``."""
        self._max_seq_len = int(infos[0]["max_seq_len"])
        self._step, self._version, self._lr = int(infos[0]["step"]), int(infos[0]["version"]), float(infos[0]["lr"])
        self.start_seconds = time.perf_counter() - started
        """Seconds from spawning the processes to every rank holding its Learner."""
        logger.info("learner on %d process(es) (%s, %s) started in %.1f s", procs, infos[0]["device"],
                    infos[0]["backend"], self.start_seconds)

    def _spawn(self, procs: int, name: str, threads: int | None, master_addr: str | None,
               config: LearnerConfig) -> list[_RankSetup]:
        """Spawn the ranks' processes and actors (this host, or spread over worker hosts);
        return each rank's setup."""
        if self.hosts.local:
            if threads is None:
                threads = cpu_threads_per_proc(config, procs)
            mesh = spawn_procs(procs, name=name)
            self._meshes.append(mesh)
            self._actors.append(mesh.spawn("learner", LearnerActor))
            self._ranks = [self._actors[0].slice(procs=r) for r in range(procs)]
            port = _free_port()
            return [_RankSetup(rank=r, world=procs, master_addr=master_addr or "127.0.0.1", master_port=port,
                               threads=threads) for r in range(procs)]
        hosts = self._blocking(lambda: Hosts.attach(self.hosts, name=name))
        placed: list[tuple[int, int]] = []  # (local rank, ranks on that host) per rank
        for host, count in enumerate(spread(procs, hosts.n)):
            if count == 0:
                continue
            mesh = spawn_procs(count, name=f"{name}-host{host}", hosts=hosts, host=host)
            self._meshes.append(mesh)
            actor = mesh.spawn("learner", LearnerActor)
            self._actors.append(actor)
            self._ranks += [actor.slice(procs=k) for k in range(count)]
            placed += [(k, count) for k in range(count)]
        # Rank 0 runs on host 0: its host name and a port free there are the rendezvous.
        port = int(self._blocking(lambda: self._ranks[0].free_port.call_one().get()))
        addr = master_addr or hosts.host_name(0)
        logger.info("learner ranks on hosts %s (ranks per host %s); rendezvous %s:%d", list(hosts.addresses),
                    spread(procs, hosts.n), addr, port)
        return [_RankSetup(rank=r, world=procs, master_addr=addr, master_port=port, threads=threads,
                           local_rank=k, local_world=n) for r, (k, n) in enumerate(placed)]

    # --- counters (cached from rank 0's last answer: reading them costs no call) -------------

    @property
    def step(self) -> int:
        """``train_step`` and ``sft_step`` calls so far."""
        return self._step

    @property
    def version(self) -> int:
        """Policy version of the current weights (optimizer updates applied)."""
        return self._version

    @property
    def lr(self) -> float:
        """Learning rate of the next optimizer step."""
        return self._lr

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    # --- training ---------------------------------------------------------------------------

    def train_step(
        self,
        trajectories: Sequence[Trajectory],
        advantages: Sequence[Sequence[float] | float],
        ref_logprobs: Sequence[Sequence[float] | torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """One optimizer step over all ranks; see :meth:`forge_env.learner.Learner.train_step`.

        The batch is split over the ranks by token count. Returns rank 0's metrics: the
        ``loss/*`` terms, ``learner/sequences`` and ``learner/padded_tokens`` are summed over
        every rank (equal to one process on the whole batch, up to float rounding);
        ``learner/micro_batches`` and ``learner/step_seconds`` are rank 0's. Added:
        ``learner/procs`` and ``learner/call_seconds`` (the step as the caller saw it, so
        ``call_seconds - step_seconds`` is the actor-call overhead).

        Raises:
            ValueError: bad input (same checks as the Learner); the learner stays usable.
            LearnerProcessError: a rank died or failed mid-step.
        """
        started = time.perf_counter()
        if not trajectories:
            raise ValueError("train_step needs at least one trajectory")
        if len(advantages) != len(trajectories):
            raise ValueError(f"{len(advantages)} advantage rows for {len(trajectories)} trajectories")
        if ref_logprobs is not None and len(ref_logprobs) != len(trajectories):
            raise ValueError(f"{len(ref_logprobs)} ref_logprobs rows for {len(trajectories)} trajectories")
        shares = self._shares([t.token_ids for t in trajectories])

        def adv(i: int) -> Any:
            a = advantages[i]
            return float(a) if isinstance(a, (int, float)) else [float(x) for x in a]

        def ref(i: int) -> list[float]:
            assert ref_logprobs is not None
            r = ref_logprobs[i]
            return [float(x) for x in (r.tolist() if isinstance(r, torch.Tensor) else r)]

        args = [([_slim(trajectories[i]) for i in share], [adv(i) for i in share],
                 None if ref_logprobs is None else [ref(i) for i in share]) for share in shares]
        metrics: dict[str, float] = dict(self._call("train_step", args, what="train_step")[0])
        metrics["learner/procs"] = float(self.procs)
        metrics["learner/call_seconds"] = time.perf_counter() - started
        return metrics

    def _shares(self, seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        """Which sequences each rank takes: prefix-sharing runs for the packed layout (each
        prefix computed on one rank), token-balanced for the padded one."""
        if self.config.layout == "packed":
            return _split_by_prefix(seqs, self.procs)
        return _balance([len(s) for s in seqs], self.procs)

    def sft_step(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """One supervised step over all ranks; see :meth:`forge_env.learner.Learner.sft_step`
        (the token mean is over every rank's tokens). Metrics as :meth:`train_step`'s."""
        started = time.perf_counter()
        if not trajectories:
            raise ValueError("sft_step needs at least one trajectory")
        shares = self._shares([t.token_ids for t in trajectories])
        args = [([_slim(trajectories[i]) for i in share],) for share in shares]
        metrics: dict[str, float] = dict(self._call("sft_step", args, what="sft_step")[0])
        metrics["learner/procs"] = float(self.procs)
        metrics["learner/call_seconds"] = time.perf_counter() - started
        return metrics

    def logprobs(
        self, token_ids_batch: Sequence[Sequence[int] | torch.Tensor], *, temperature: float | None = None
    ) -> list[torch.Tensor]:
        """Teacher-forced logprobs, split over the ranks; see
        :meth:`forge_env.learner.Learner.logprobs`. One float32 CPU tensor per sequence, in order."""
        temp = self.config.temperature if temperature is None else temperature
        if not temp > 0:
            raise ValueError(f"temperature must be > 0, got {temp}")
        seqs = [[int(t) for t in (s.tolist() if isinstance(s, torch.Tensor) else s)] for s in token_ids_batch]
        if not seqs:
            return []
        shares = self._shares(seqs)
        parts = self._call("logprobs", [([seqs[i] for i in share], temp) for share in shares], what="logprobs",
                           every_rank=True)
        out: list[torch.Tensor] = [torch.zeros(0)] * len(seqs)
        for share, part in zip(shares, parts):
            for i, lp in zip(share, _unpack(part)):
                out[i] = lp
        return out

    # --- export and checkpoints -------------------------------------------------------------

    def hf_named_tensors(
        self, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
    ) -> list[tuple[str, torch.Tensor]]:
        """The full (gathered) weights under their HF names, as CPU tensors in this process
        (then moved to ``device`` if given): a snapshot for ``Generator.update_weights``."""
        named = _unpack_named(self._call("hf_named_tensors", [(dtype,)] * self.procs, what="hf_named_tensors")[0])
        if device is not None:
            named = [(k, v.to(device)) for k, v in named]
        return named

    def save_hf(self, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> Path:
        """Write an HF folder (safetensors, config, tokenizer) that transformers and vLLM load.

        Rank 0 writes it, on its host: this machine without ``hosts``; with worker hosts, host 0
        (give a path on a filesystem this machine shares with it to read it here)."""
        target = os.fspath(Path(path).expanduser().absolute())
        return Path(self._call("save_hf", [(target, dtype)] * self.procs, what="save_hf")[0])

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and scheduler state, step and version: ``torch.save`` it.

        Full (unsharded) CPU tensors, in the format of ``Learner.state_dict()`` of one
        process: it loads into a local :class:`~forge_env.learner.Learner` or into a
        MonarchLearner with any ``procs`` (same model architecture)."""
        state: dict[str, Any] = _unpack(self._call("state_dict", [()] * self.procs, what="state_dict")[0])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (this class's or a local Learner's, any ``procs``).

        Every rank receives the state; rank 0's copy is broadcast into the FSDP shards."""
        from forge_env.learner._learner import _STATE_FORMAT

        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"not a forge-env learner state (format {found!r}, expected {_STATE_FORMAT}); "
                "pass what Learner.state_dict() or MonarchLearner.state_dict() returned"
            )
        # Every rank gets the whole state: with torch 2.13, set_state_dict(broadcast_from_rank0)
        # hung on rank 0 when the other ranks passed an empty model or optimizer dict.
        packed = _pack(state)
        self._call("load_state_dict", [(packed,)] * self.procs, what="load_state_dict")

    # --- weight push ------------------------------------------------------------------------

    async def push_weights(self, generator: Generator) -> None:
        """Send the current weights to ``generator``, stamped with :attr:`version`.

        A generator with ``load_weights_from(path, version)`` whose transport is ``shm`` (a
        :class:`~forge_env.monarch.MonarchGenerator` on one host): rank 0 writes the weights as an HF
        folder under ``weights_dir`` (``/dev/shm`` by default) and the generator's replicas
        load that path, so no tensor passes through this process
        (:attr:`weight_transport` ``shared_folder``). The folder is deleted once
        ``load_weights_from`` returns (MonarchGenerator keeps a hard-linked copy for the
        replicas it respawns). With worker hosts (``hosts``), only when ``weights_dir`` was given
        (a folder every host mounts). Any other generator gets
        ``update_weights(hf_named_tensors(), version)`` (``tensors``), which a MonarchGenerator
        set to ``rdma`` or ``message`` sends over that transport.
        """
        started = time.perf_counter()
        load_from = getattr(generator, "load_weights_from", None)
        # Rank 0 writes the folder on its host: the generator finds it there only on this machine,
        # or under a weights_dir given for a filesystem the hosts share.
        shared = self.hosts.on_this_machine() or self._weights_root is not None
        if load_from is not None and shared and getattr(generator, "weight_transport", "shm") == "shm":
            folder, version = await asyncio.to_thread(self._write_weights)
            try:
                await load_from(str(folder), version)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            self.weight_transport = "shared_folder"
        else:
            named, version = await asyncio.to_thread(self._snapshot)
            await generator.update_weights(named, version=version)
            self.weight_transport = "tensors"
        self.push_seconds = time.perf_counter() - started
        logger.debug("pushed learner weights (version %d, %s) in %.3f s", version, self.weight_transport,
                     self.push_seconds)

    def _snapshot(self) -> tuple[list[tuple[str, torch.Tensor]], int]:
        with self._lock:  # the version read and the weights gathered belong together
            return self.hf_named_tensors(), self._version

    def _write_weights(self) -> tuple[Path, int]:
        if self._weights_root is None:
            self._scratch = ScratchFolder.create(f"forge-env-{self.name}-")
            self._weights_root = Path(self._scratch.path)
        with self._lock:
            version = self._version
            folder = self._weights_root / f"v{version:06d}-{time.monotonic_ns()}"
            self.save_hf(folder)
        return folder, version

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Leave the process group, stop the processes (SIGKILL what outlives the mesh's stop)
        and delete the weight folders this learner made. Idempotent."""
        # Wait for a call in flight to end (a stuck one: at most 30 s, the stop ends it).
        held = self._lock.acquire(timeout=30.0)
        try:
            if self._closed:
                return
            self._closed = True
        finally:
            if held:
                self._lock.release()
        self._blocking(self._stop)

    def _stop(self) -> None:
        meshes, self._meshes = list(getattr(self, "_meshes", [])), []
        if not meshes:
            return
        if self._broken is None and self._actors and self.pids:
            calls = [actor.shutdown.call() for actor in self._actors]
            for call in calls:
                try:
                    call.get(timeout=10.0)
                except Exception as e:  # a dead or stuck rank: the stop below ends it anyway
                    logger.debug("learner shutdown: %s", e)
        # All at once; a broken learner's mesh may sit on a dead host, whose stop only times out.
        timeout = 10.0 if self._broken is not None else 30.0
        stops = []
        for mesh in meshes:
            try:
                stops.append(mesh.stop())
            except Exception as e:  # already stopped
                logger.debug("stopping a learner mesh: %s", e)
        deadline = time.monotonic() + timeout
        for stop in stops:
            try:
                stop.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as e:  # already dead / already stopped / a dead host: nothing left to wait for
                logger.debug("stopping a learner mesh: %s", e)
        # Only this machine's pids: another host's pid numbers would name our own processes.
        reap(self._local_pids, grace_s=5.0)
        if self._scratch is not None:
            self._scratch.remove()

    def __enter__(self) -> MonarchLearner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("broken" if self._broken else "running")
        return f"MonarchLearner(model={self.config.model!r}, procs={self.procs}, version={self._version}, {state})"

    # --- calls to the ranks -----------------------------------------------------------------

    def _call(self, endpoint_name: str, per_rank: Sequence[tuple[Any, ...]], *, what: str,
              every_rank: bool = False) -> list[Any]:
        """Call ``endpoint_name`` on every rank at once (rank r with ``per_rank[r]``) and wait.

        Returns rank 0's result first (all ranks' results with ``every_rank``); re-raises a
        rank's input error (the call was refused everywhere, the learner stays usable);
        anything else marks the learner broken and raises :class:`LearnerProcessError`.
        """
        return self._blocking(lambda: self._call_now(endpoint_name, per_rank, what=what, every_rank=every_rank))

    def _call_now(self, endpoint_name: str, per_rank: Sequence[tuple[Any, ...]], *, what: str,
                  every_rank: bool) -> list[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"MonarchLearner.{what}: the learner is closed")
            if self._broken is not None:
                raise LearnerProcessError(
                    f"MonarchLearner.{what}: the learner failed earlier ({self._broken}); close() it and "
                    "start a new one from the last checkpoint"
                )
            futures = [getattr(self._ranks[r], endpoint_name).call_one(*args) for r, args in enumerate(per_rank)]
            replies = self._gather(futures, what)
        if endpoint_name == "setup":
            return replies
        rejected = [r for r in replies if r.rejected is not None]
        if rejected:
            raise rejected[0].rejected  # the rank's own error, e.g. a ValueError naming the bad input
        if any(r.peer_rejected for r in replies):  # pragma: no cover - a rank always carries the error
            raise ValueError(f"MonarchLearner.{what}: a rank refused the input")
        head = replies[0]
        self._step, self._version, self._lr = head.step, head.version, head.lr
        return [r.result for r in replies] if every_rank else [head.result]

    def _gather(self, futures: list[Any], what: str) -> list[Any]:
        """Wait for every rank; the first failure is raised without waiting for ranks that
        may be blocked forever in a collective with the failed one."""
        deadline = None if self.call_timeout_s is None else time.monotonic() + self.call_timeout_s
        results: dict[int, Any] = {}
        while len(results) < len(futures):
            pending = [r for r in range(len(futures)) if r not in results]
            for k, r in enumerate(pending):
                try:
                    results[r] = futures[r].get(timeout=_POLL_S if k == 0 else 0.0)
                except TimeoutError:
                    continue
                except Exception as e:
                    raise self._failed(what, r, e, futures, results) from e
            if deadline is not None and time.monotonic() > deadline:
                waiting = [r for r in range(len(futures)) if r not in results]
                self._broken = f"{what} took more than call_timeout_s={self.call_timeout_s} s on ranks {waiting}"
                raise LearnerProcessError(
                    f"MonarchLearner.{what}: ranks {waiting} did not answer within {self.call_timeout_s} s; "
                    "the learner is unusable now: close() it and restart from the last checkpoint (or raise "
                    "call_timeout_s)"
                )
        return [results[r] for r in range(len(futures))]

    def _failed(self, what: str, rank: int, error: BaseException, futures: list[Any],
                results: dict[int, Any]) -> BaseException:
        """The error to raise once rank ``rank``'s call failed; marks the learner broken (its
        ranks may be out of step now).

        The first rank to fail is often not the cause: when a process dies, its peers' collectives
        fail too. So the other ranks get a short grace to report, and a dead process (Monarch's
        supervision error) is named before the errors it caused.
        """
        errors = {rank: error}
        deadline = time.monotonic() + _GRACE_S
        for r in range(len(futures)):
            if r == rank or r in results:
                continue
            try:
                futures[r].get(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass  # blocked behind the failed rank
            except Exception as other:
                errors[r] = other
        dead = [r for r, err in errors.items() if "Supervision" in type(err).__name__]
        cause = dead[0] if dead else rank
        error = errors[cause]
        original = getattr(error, "exception", None)  # ActorError: the exception raised on the rank
        for r, err in sorted(errors.items()):
            logger.warning("learner rank %d failed in %s: %s", r, what, err)
        self._broken = f"rank {cause} failed in {what}"
        if what == "starting the learner" and isinstance(original, Exception):
            # A rank could not build its Learner (a bad model path, no GPU...): the Learner's own
            # error says what to fix, as it would with the local Learner.
            return original
        if dead:
            detail = f"its process died ({str(error).strip().splitlines()[-1].strip()})"
        elif original is not None:
            detail = f"{type(original).__name__}: {original}"
        else:
            detail = f"{type(error).__name__}: {error}"
        user = os.environ.get("USER", "$USER")
        silent = [r for r in range(len(futures)) if r not in errors and r not in results]
        # A rank on a dead host is reported by Monarch only after about a minute; its peers'
        # collectives fail at once (connection reset): name the silent ranks as the likely cause.
        hint = (f" Ranks {silent} did not answer within {_GRACE_S:g} s: their process or host may be gone."
                if silent and not dead else "")
        return LearnerProcessError(
            f"MonarchLearner: rank {cause} of {self.procs} failed in {what}: {detail[:1000]}.{hint} "
            f"The learner is unusable now: close() it and start a new one from the last checkpoint "
            f"(the ranks' tracebacks are in this process's log and in /tmp/{user}/monarch_log.log)."
        )

    def _blocking(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` (which waits on Monarch futures) here, or, when this thread runs an event
        loop (the app's async main), on a helper thread: Monarch refuses or warns about
        blocking waits on a loop's thread. It still blocks the caller, like a local Learner."""
        if not _in_event_loop():
            return fn()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(fn).result()
