"""Local Monarch process meshes: spawn them, keep their failures from killing us, stop them cleanly.

Three things every Monarch user of forge-env needs, in one place:

- :func:`install_fault_hook` replaces Monarch's default ``unhandled_fault_hook`` (it calls
  ``sys.exit(1)`` in the caller when any process of any mesh dies). Ours logs the failure and
  drops it: the calls on the dead process raise (``SupervisionError``), and the caller — a
  :class:`~forge_env.monarch.Service`, a test — decides what to do.
- :func:`spawn_procs` starts ``n`` processes on this host (or on one host of an attached
  :class:`~forge_env.monarch._hosts.Hosts`) with extra environment variables, after the
  supervision settings below are in place.
- :class:`ProcGroup` (from :func:`start_procs`) owns a mesh and knows its pids, so that
  :meth:`ProcGroup.stop` leaves no process behind, even one that the mesh's own stop missed
  (a vLLM engine core a dead actor started, say).

Importing this module imports Monarch (``pip install 'forge-env[monarch]'``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from forge_env._exceptions import ForgeEnvError

from forge_env.monarch import _POLL_TOO_LATE, SUPERVISION_POLL_ENV

try:
    import monarch.actor as _monarch
    from monarch.actor import Actor, endpoint
except ImportError as _e:  # pragma: no cover - the message names the fix
    raise ImportError(
        f"runtime: monarch needs Monarch ({_e}); install it with pip install 'forge-env[monarch]' "
        "(torchmonarch==0.7.0, Linux, Python 3.11)"
    ) from _e

if TYPE_CHECKING:  # pragma: no cover
    from monarch.actor import ProcMesh

    from forge_env.monarch._hosts import Hosts

__all__ = [
    "SUPERVISION_POLL_ENV",
    "ProcGroup",
    "astop_procs",
    "install_fault_hook",
    "quiet_faults",
    "spawn_procs",
    "start_procs",
    "stop_procs",
]

logger = logging.getLogger(__name__)


# The hook state is process-wide by nature (Monarch reads ``monarch.actor.unhandled_fault_hook``
# when a fault reaches the root client), so it lives here, guarded by a lock.
_hook_lock = threading.Lock()
_warned_poll = False


def _log_fault(failure: Any) -> None:
    """Our ``unhandled_fault_hook``: log the failure and return (the fault is dropped).

    The calls that were waiting on the dead actor or process still raise, so nothing is lost
    silently; only the default's ``sys.exit(1)`` of the whole caller is gone.
    """
    text = " ".join(str(failure).split())
    logger.warning("Monarch reported a failed mesh (its calls raise; their callers handle it): %s", text[:400])


def install_fault_hook() -> None:
    """Replace Monarch's default fault hook (``sys.exit(1)``) with one that logs. Idempotent.

    Importing ``forge_env.monarch`` has already set ``HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY=1s``
    (unless set) so dead processes are noticed in about a second; this warns if Monarch was
    imported first (then the setting came too late). Call it before spawning meshes;
    :func:`spawn_procs` and :class:`~forge_env.monarch.Service` call it for you.

    >>> from forge_env.monarch import install_fault_hook
    >>> install_fault_hook(); install_fault_hook()  # the second call changes nothing
    """
    global _warned_poll
    with _hook_lock:
        if _POLL_TOO_LATE and not _warned_poll:
            _warned_poll = True
            logger.warning(
                "Monarch was imported before forge_env.monarch, so %s=%s came too late: dead "
                "processes take ~10 s to notice. Set it in the environment, or import "
                "forge_env.monarch before monarch.", SUPERVISION_POLL_ENV, "1s",
            )
        if _monarch.unhandled_fault_hook is not _log_fault:
            _monarch.unhandled_fault_hook = _log_fault


@contextlib.contextmanager
def quiet_faults() -> Iterator[None]:
    """:func:`install_fault_hook` for a block, then put back the hook that was there before.

    >>> from forge_env.monarch import quiet_faults
    >>> with quiet_faults():
    ...     pass  # spawn meshes, kill processes: their failures are logged, not fatal
    """
    with _hook_lock:
        previous = _monarch.unhandled_fault_hook
    install_fault_hook()
    try:
        yield
    finally:
        with _hook_lock:
            _monarch.unhandled_fault_hook = previous


def spawn_procs(
    n: int, *, name: str, env: Mapping[str, str] | None = None, hosts: Hosts | None = None, host: int = 0
) -> "ProcMesh":
    """Spawn ``n`` Python processes on one host as one Monarch ``ProcMesh`` (dimension ``procs``).

    A thin wrapper over ``this_host().spawn_procs(per_host={"procs": n})`` that first installs
    our fault hook and the supervision poll setting, and puts ``env`` into the processes'
    environment (on top of ours, which they inherit). The processes start in the background;
    the first call on an actor spawned on them waits for them (~0.2-0.4 s for two here).

    With ``hosts`` (attached workers), the processes start on host ``host % hosts.n`` instead;
    they inherit that worker's environment, and ``env`` is set in them before any actor starts.

    Example::

        procs = spawn_procs(2, name="generators", env={"OMP_NUM_THREADS": "1"})
        actor = procs.spawn("gen", GeneratorActor, spec)
        await actor.health.call()
        await astop_procs(procs)

    Args:
        n: number of processes (>= 1).
        name: the mesh's name in Monarch's logs (``/tmp/$USER/monarch_log.log``).
        env: extra environment variables for the processes.
        hosts: attached worker hosts (:meth:`Hosts.attach`); None: this host.
        host: which of ``hosts`` (taken modulo their number).

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"spawn_procs needs n >= 1 processes, got {n}")
    install_fault_hook()
    if hosts is not None:
        from forge_env.monarch._hosts import set_env

        # The worker's bootstrap command (its own Python) is kept: a command of ours would name
        # this machine's interpreter path, which the host may not have.
        setup = functools.partial(set_env, dict(env)) if env else None
        return hosts.mesh(host).spawn_procs(per_host={"procs": n}, name=name, bootstrap=setup)
    command = None
    if env:
        command = _monarch.default_bootstrap_cmd().with_env({str(k): str(v) for k, v in env.items()})
    return _monarch.this_host().spawn_procs(per_host={"procs": n}, name=name, bootstrap_command=command)


def stop_procs(procs: "ProcMesh", *, timeout_s: float = 30.0) -> None:
    """Stop a proc mesh and wait for it (blocking; from async code use :func:`astop_procs`).

    Stopping a mesh whose processes already died is fine (it returns at once).

    Raises:
        RuntimeError: called on a thread that runs an event loop (it would block the loop).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "stop_procs blocks and was called from a running event loop; use "
            "`await astop_procs(procs)` (or `await asyncio.to_thread(stop_procs, procs)`) there"
        )
    try:
        procs.stop().get(timeout=timeout_s)
    except Exception as e:  # already dead / already stopped: nothing left to stop
        logger.debug("stopping proc mesh: %s", e)


async def astop_procs(procs: "ProcMesh", *, timeout_s: float = 30.0) -> None:
    """Stop a proc mesh from async code (see :func:`stop_procs`)."""
    try:
        await asyncio.wait_for(_await(procs.stop()), timeout=timeout_s)
    except Exception as e:
        logger.debug("stopping proc mesh: %s", e)


async def _await(future: Any) -> Any:
    return await future


class ProcProbe(Actor):
    """Answers ``ping`` with its process id: liveness and pids, independent of the user's
    actor on the same process (which may be busy, or use sync endpoints)."""

    @endpoint
    async def ping(self) -> int:
        return os.getpid()

    @endpoint
    async def where(self) -> tuple[int, str, str]:
        """``(pid, host name, machine id)``: where this process runs."""
        from forge_env.monarch._hosts import machine_id

        return os.getpid(), socket.gethostname(), machine_id()


class ProcGroup:
    """A proc mesh, its pids, and a :meth:`stop` that leaves no process behind.

    Use :func:`start_procs` to make one. Each process runs a tiny probe actor that answers
    :meth:`ping` with its pid: the group knows its pids without help from the user's actors,
    and :meth:`stop` ends any process (and child process) still alive after the mesh's own
    stop. On another machine (a worker host), pids are that machine's: :meth:`stop` then relies
    on the mesh's stop and on the worker, which ends its processes when this client goes.

    Example::

        async with await start_procs(2, name="workers") as group:
            actor = group.procs.spawn("worker", MyActor)
            print(group.pids)            # [12345, 12346]
            await group.ping(timeout_s=5)  # raises if a process died
    """

    def __init__(self, procs: "ProcMesh", *, name: str, n: int, host: int | None = None,
                 address: str | None = None) -> None:
        self.procs = procs
        self.name = name
        self.n = n
        self.pids: list[int] = []
        self.host = host
        """Index of the worker host the processes run on; None: this host (``this_host()``)."""
        self.address = address
        """That worker's address; None: this host."""
        self.local = host is None
        """The pids are this machine's (signalling them is safe); learnt by :meth:`locate`."""
        self.hostname = socket.gethostname() if host is None else ""
        self._probe: Any = procs.spawn("forge_env_probe", ProcProbe)
        self._stopped = False

    async def ping(self, *, timeout_s: float = 10.0) -> list[int]:
        """The pid of every process (rank order); raises if one is dead or silent for ``timeout_s``."""
        values = await asyncio.wait_for(_await(self._probe.ping.call()), timeout=timeout_s)
        pids = [int(pid) for _, pid in values.items()]
        self.pids = pids
        return pids

    async def locate(self, *, timeout_s: float = 10.0) -> None:
        """Learn where the processes run (:attr:`hostname`, :attr:`local`, :attr:`pids`)."""
        from forge_env.monarch._hosts import machine_id

        values = await asyncio.wait_for(_await(self._probe.where.call()), timeout=timeout_s)
        places = [place for _, place in values.items()]
        self.pids = [int(pid) for pid, _, _ in places]
        self.hostname = places[0][1]
        here = machine_id()
        self.local = all(machine == here for _, _, machine in places)

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def stop(self, *, timeout_s: float = 30.0, grace_s: float = 5.0) -> None:
        """Stop the mesh; then SIGKILL whatever of its processes (and their children) is still
        alive ``grace_s`` later. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        started = time.perf_counter()
        # Another machine's pids must not be signalled here: they would name our own processes.
        doomed = _with_descendants(self.pids) if self.local else []
        if self.local and self.pids and not any(_alive(pid) for pid in self.pids):
            # Every process is dead already. Monarch's stop of such a mesh usually returns at
            # once but was seen to hang until its timeout (30 s): do not wait long for it.
            timeout_s = min(timeout_s, 2.0)
        await astop_procs(self.procs, timeout_s=timeout_s)
        stopped = time.perf_counter()
        await asyncio.to_thread(functools.partial(reap, doomed, grace_s=grace_s))
        logger.debug("mesh %s stopped in %.2f s, reaped in %.2f s", self.name, stopped - started,
                     time.perf_counter() - stopped)

    async def __aenter__(self) -> "ProcGroup":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def start_procs(
    n: int, *, name: str, env: Mapping[str, str] | None = None, timeout_s: float = 60.0,
    hosts: Hosts | None = None, host: int = 0,
) -> ProcGroup:
    """:func:`spawn_procs`, then wait until every process answers; returns a :class:`ProcGroup`.

    With ``hosts``, on host ``host % hosts.n`` of them (see :func:`spawn_procs`).

    Raises:
        ForgeEnvError: the processes did not come up within ``timeout_s`` (the message
            points at Monarch's log, and names the worker host if there is one).
    """
    procs = spawn_procs(n, name=name, env=env, hosts=hosts, host=host)
    where = None if hosts is None else hosts.address(host)
    group = ProcGroup(procs, name=name, n=n, host=None if hosts is None else host % hosts.n, address=where)
    try:
        if hosts is None:
            await group.ping(timeout_s=timeout_s)
        else:
            await group.locate(timeout_s=timeout_s)
    except BaseException as e:
        await group.stop(grace_s=0.5)
        user = os.environ.get("USER", "$USER")
        on = "" if where is None else f" on the worker {where} (is it still running?)"
        late = f" within {timeout_s:.0f} s" if isinstance(e, TimeoutError) else ""
        raise ForgeEnvError(
            f"the {n} processes of mesh {name!r} did not start{on}{late} "
            f"({type(e).__name__}: {_one_line(e)}); see /tmp/{user}/monarch_log.log"
        ) from e
    return group


def _one_line(error: BaseException, limit: int = 400) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants alive now (children first learnt here, since a
    killed parent's children are re-parented and can no longer be found from it)."""
    out = list(pids)
    try:
        import psutil
    except ImportError:
        return out
    for pid in pids:
        try:
            out.extend(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return out


def reap(pids: Sequence[int], *, grace_s: float) -> None:
    """Wait up to ``grace_s`` for ``pids`` to exit, then SIGKILL the survivors (package-internal:
    proc groups and the learner's mesh share it)."""
    deadline = time.monotonic() + grace_s
    alive = [pid for pid in pids if _alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _alive(pid)]
    for pid in alive:
        logger.warning("process %d outlived its mesh's stop; killing it", pid)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
