"""Where Monarch processes run: this host, or Monarch workers on other hosts.

A :class:`HostsConfig` says where; :meth:`Hosts.attach` connects this process to the workers
it names; placement rules (:func:`replica_host`, :func:`spread`) say which host gets which
process. Every Monarch part of forge-env takes a ``hosts`` argument:
:class:`~forge_env.monarch.ServiceConfig` (so :class:`~forge_env.monarch.MonarchGenerator`),
:class:`~forge_env.monarch.MonarchEnvPool` and :class:`~forge_env.monarch.MonarchLearner`.

- **local** (``HostsConfig()``, the default): processes on this host (``this_host()``).
- **workers**: a list of ``tcp://HOST:PORT`` addresses of Monarch workers, each started on its
  host with ``python -m forge_env.monarch.worker --host HOST --port PORT`` (by SLURM, Kubernetes,
  ssh...). A Service's replica ``i`` runs on host ``i % n_hosts``; a learner spreads its ranks
  over the hosts (consecutive ranks on one host); env processes are Service replicas.
- **slurm**: inside a SLURM allocation, one worker per node of ``$SLURM_JOB_NODELIST`` on
  ``slurm_port`` (start them with ``srun``, see ``forge_env.monarch.worker``).

>>> HostsConfig.parse(["tcp://node1:26600", "tcp://node2:26600"]).workers
('tcp://node1:26600', 'tcp://node2:26600')
>>> HostsConfig.parse("local").local
True
>>> [replica_host(i, 2) for i in range(4)], spread(3, 2)
([0, 1, 0, 1], [2, 1])

Importing this module does not import Monarch; :meth:`Hosts.attach` does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from forge_env._addresses import is_loopback_host
from forge_env._exceptions import ForgeEnvError

if TYPE_CHECKING:  # pragma: no cover
    from monarch.actor import HostMesh

__all__ = [
    "DEFAULT_PORT",
    "Hosts",
    "HostsConfig",
    "expand_nodelist",
    "machine_id",
    "replica_host",
    "spread",
]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 26600
"""The port ``python -m forge_env.monarch.worker`` listens on unless told otherwise."""

_WORKER_HINT = "python -m forge_env.monarch.worker --host HOST --port PORT"
# tcp://HOST:PORT, HOST a name, an IPv4 address or [an IPv6 address].
_ADDRESS = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_CONFIG_KEYS = ("workers", "slurm_port", "client_host", "attach_timeout_s")


# --- the config ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HostsConfig:
    """Where Monarch processes run: this host (default), listed workers, or a SLURM allocation.

    >>> HostsConfig().local
    True
    >>> HostsConfig(workers=("tcp://10.0.0.5:26600", "tcp://10.0.0.6:26600")).addresses()
    ('tcp://10.0.0.5:26600', 'tcp://10.0.0.6:26600')
    >>> HostsConfig(workers=("tcp://node1",))
    Traceback (most recent call last):
    ...
    ValueError: HostsConfig.workers[0]: 'tcp://node1' is not a worker address; write tcp://HOST:PORT, e.g. tcp://node1:26600
    """

    workers: tuple[str, ...] = ()
    """``tcp://HOST:PORT`` of each Monarch worker (one per host), in host order. Empty with
    ``slurm_port`` None: this host only."""
    slurm_port: int | None = None
    """Workers on every node of this SLURM allocation (``$SLURM_JOB_NODELIST``), on this port."""
    client_host: str | None = None
    """The address of this process that the workers' processes connect back to (an IP or a
    name of this host on the network they share). None: the local address that routes to the
    first worker (127.0.0.1 when every worker is on this machine)."""
    attach_timeout_s: float = 60.0
    """How long :meth:`Hosts.attach` waits for every worker to answer."""

    def __post_init__(self) -> None:
        if isinstance(self.workers, str) or not isinstance(self.workers, Sequence):
            raise ValueError(
                f"HostsConfig.workers must be a list of tcp://HOST:PORT addresses, got {self.workers!r}"
            )
        object.__setattr__(self, "workers", tuple(self.workers))
        for i, address in enumerate(self.workers):
            _check_address(address, f"HostsConfig.workers[{i}]")
        seen: dict[str, int] = {}
        for i, address in enumerate(self.workers):
            if address in seen:
                raise ValueError(
                    f"HostsConfig.workers[{i}]: {address!r} is listed twice (also at [{seen[address]}]); "
                    "list each worker once (start more workers for more hosts)"
                )
            seen[address] = i
        if self.slurm_port is not None:
            if self.workers:
                raise ValueError(
                    "HostsConfig: give either workers (addresses) or slurm_port (every node of the SLURM "
                    "allocation), not both"
                )
            if isinstance(self.slurm_port, bool) or not isinstance(self.slurm_port, int) \
                    or not 1 <= self.slurm_port <= 65535:
                raise ValueError(f"HostsConfig.slurm_port must be a port number 1-65535, got {self.slurm_port!r}")
        if self.client_host is not None and not _HOST.match(self.client_host):
            raise ValueError(
                f"HostsConfig.client_host must be an IP address or a host name of this machine (no scheme, "
                f"no port), got {self.client_host!r}"
            )
        if isinstance(self.attach_timeout_s, bool) or not isinstance(self.attach_timeout_s, (int, float)) \
                or not self.attach_timeout_s > 0:
            raise ValueError(f"HostsConfig.attach_timeout_s must be > 0, got {self.attach_timeout_s!r}")

    @property
    def local(self) -> bool:
        """True: everything runs on this host (``this_host()``), as without a HostsConfig."""
        return not self.workers and self.slurm_port is None

    def on_this_machine(self) -> bool:
        """True when every process runs on this machine: local, or every worker address is a
        loopback one (then a file written here, e.g. under /dev/shm, is readable there).

        >>> HostsConfig(workers=("tcp://127.0.0.1:26600",)).on_this_machine()
        True
        """
        return self.local or (bool(self.workers) and all(is_loopback_host(host_of(a)) for a in self.workers))

    def addresses(self) -> tuple[str, ...]:
        """The workers' addresses in host order (for ``slurm_port``: read from the environment now).

        Raises:
            ValueError: a local config (no workers), or ``slurm_port`` outside a SLURM allocation.
        """
        if self.workers:
            return self.workers
        if self.slurm_port is None:
            raise ValueError("HostsConfig(): local hosts have no worker addresses")
        nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError(
                "hosts: slurm reads the nodes from $SLURM_JOB_NODELIST, which is not set: run inside a "
                "SLURM allocation (sbatch/salloc), or list the workers' tcp://HOST:PORT addresses"
            )
        return tuple(f"tcp://{node}:{self.slurm_port}" for node in expand_nodelist(nodelist))

    @classmethod
    def parse(cls, value: object, *, key: str | None = "hosts") -> HostsConfig:
        """A HostsConfig from a config-file value; errors name ``key`` and the fix.

        Accepted: ``None`` or ``"local"``; a list of ``tcp://HOST:PORT``; one string of them,
        comma-separated (handy in a ``key=value`` override); ``"slurm"`` or ``"slurm:PORT"``;
        a mapping with the fields of this class; a HostsConfig.

        >>> HostsConfig.parse("tcp://a:1,tcp://b:2").workers
        ('tcp://a:1', 'tcp://b:2')
        >>> HostsConfig.parse("slurm").slurm_port
        26600
        >>> HostsConfig.parse({"workers": ["tcp://a:1"], "attach_timeout_s": 5}).attach_timeout_s
        5
        """
        prefix = f"{key}: " if key else ""
        if isinstance(value, cls):
            return value
        try:
            if value is None:
                return cls()
            if isinstance(value, str):
                text = value.strip()
                if text in ("", "local"):
                    return cls()
                if text == "slurm" or text.startswith("slurm:"):
                    port = text.partition(":")[2] or str(DEFAULT_PORT)
                    if not port.isdigit():
                        raise ValueError(f"{text!r}: write slurm or slurm:PORT, e.g. slurm:{DEFAULT_PORT}")
                    return cls(slurm_port=int(port))
                parts = [p.strip() for p in text.split(",") if p.strip()]
                return cls(workers=tuple(parts))
            if isinstance(value, Mapping):
                unknown = sorted(set(map(str, value)) - set(_CONFIG_KEYS))
                if unknown:
                    raise ValueError(f"unknown key(s) {unknown}; the keys are {list(_CONFIG_KEYS)}")
                fields = dict(value)
                if "workers" in fields:
                    workers = fields["workers"]
                    if isinstance(workers, str):
                        workers = [p.strip() for p in workers.split(",") if p.strip()]
                    if not isinstance(workers, Sequence):
                        raise ValueError(f"workers must be a list of tcp://HOST:PORT addresses, got {workers!r}")
                    fields["workers"] = tuple(workers)
                return cls(**fields)
            if isinstance(value, Sequence):
                if not all(isinstance(v, str) for v in value):
                    raise ValueError(f"a list of hosts holds tcp://HOST:PORT strings, got {list(value)!r}")
                return cls(workers=tuple(value))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{prefix}{_without_class_prefix(str(e))}") from None
        raise ValueError(
            f"{prefix}expected 'local', a list of tcp://HOST:PORT worker addresses, 'slurm[:PORT]' or a "
            f"mapping, got {value!r}"
        )


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9_.-]+)$")


def _check_address(address: object, where: str) -> None:
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ValueError(
            f"{where}: {address!r} is not a worker address; write tcp://HOST:PORT, e.g. tcp://node1:{DEFAULT_PORT}"
        )
    port = int(address.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise ValueError(f"{where}: {address!r} has port {port}; a port is 1-65535")


def _without_class_prefix(message: str) -> str:
    # "HostsConfig.workers[0]: ..." reads better as "workers[0]: ..." under a config key.
    return message.removeprefix("HostsConfig.").removeprefix("HostsConfig: ")


def host_of(address: str) -> str:
    """The host part of ``tcp://HOST:PORT`` (brackets of an IPv6 address removed).

    >>> host_of("tcp://node1:26600"), host_of("tcp://[::1]:5")
    ('node1', '::1')
    """
    match = _ADDRESS.match(address)
    if match is None:
        raise ValueError(f"{address!r} is not a tcp://HOST:PORT address")
    return match["host"].strip("[]")


# --- SLURM node lists -----------------------------------------------------------------------------


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a SLURM node list (``$SLURM_JOB_NODELIST``), in order.

    >>> expand_nodelist("gpu[01-03,07],login5")
    ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'login5']
    >>> expand_nodelist("rack[1-2]-n[8-9]")
    ['rack1-n8', 'rack1-n9', 'rack2-n8', 'rack2-n9']

    Raises:
        ValueError: unbalanced brackets or a range that counts down.
    """
    items: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(nodelist):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"SLURM node list {nodelist!r}: ']' without '['")
        elif char == "," and depth == 0:
            items.append(nodelist[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"SLURM node list {nodelist!r}: '[' without ']'")
    items.append(nodelist[start:])
    out: list[str] = []
    for item in (i.strip() for i in items):
        if item:
            out.extend(_expand_one(item, nodelist))
    return out


def _expand_one(item: str, nodelist: str) -> list[str]:
    open_at = item.find("[")
    if open_at < 0:
        return [item]
    close_at = item.index("]", open_at)
    head, body, tail = item[:open_at], item[open_at + 1:close_at], item[close_at + 1:]
    numbers: list[str] = []
    for part in body.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"SLURM node list {nodelist!r}: bad range {part!r} in [{body}]")
        if not high:
            numbers.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"SLURM node list {nodelist!r}: range {part!r} counts down")
        numbers.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return [f"{head}{n}{rest}" for n in numbers for rest in _expand_one(tail, nodelist)]


# --- placement ------------------------------------------------------------------------------------


def replica_host(index: int, n_hosts: int) -> int:
    """The host of a Service's replica ``index``: round the hosts (``index % n_hosts``).

    >>> [replica_host(i, 3) for i in range(5)]
    [0, 1, 2, 0, 1]
    """
    if n_hosts < 1:
        raise ValueError(f"n_hosts must be >= 1, got {n_hosts}")
    return index % n_hosts


def spread(procs: int, n_hosts: int) -> list[int]:
    """Processes per host for ``procs`` ranks over ``n_hosts`` hosts: as even as possible, the
    first hosts take one more. Ranks fill the hosts in order (ranks 0..c0-1 on host 0, ...), so
    a host's ranks are consecutive, as NCCL and torchrun number them.

    >>> spread(4, 2), spread(3, 2), spread(1, 3)
    ([2, 2], [2, 1], [1, 0, 0])
    """
    if procs < 1 or n_hosts < 1:
        raise ValueError(f"spread needs procs >= 1 and n_hosts >= 1, got {procs} and {n_hosts}")
    base, extra = divmod(procs, n_hosts)
    return [base + (1 if h < extra else 0) for h in range(n_hosts)]


def machine_id() -> str:
    """This machine and process namespace: the boot id (distinct per machine and boot) and the pid
    namespace (distinct per container). Two processes with equal ids can signal each other's pids.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:  # pragma: no cover - not Linux
        boot = socket.gethostname()
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # pragma: no cover - not Linux
        namespace = 0
    return f"{boot}/{namespace}"


# --- attached hosts --------------------------------------------------------------------------------


class Hosts:
    """The workers of a :class:`HostsConfig`, attached from this process: one Monarch host mesh each.

    Made by :meth:`attach` (blocking; from async code ``await asyncio.to_thread(Hosts.attach, cfg)``).
    Spawn processes on host ``h`` with ``spawn_procs(n, name=..., hosts=hosts, host=h)``.

    Example::

        hosts = Hosts.attach(HostsConfig(workers=("tcp://node1:26600", "tcp://node2:26600")))
        group = await start_procs(2, name="gen", hosts=hosts, host=1)   # 2 processes on node2

    Workers are not owned: nothing here stops them. A worker ends the processes a client
    spawned on it when that client's process exits, and waits for the next client.
    """

    def __init__(self, config: HostsConfig, addresses: Sequence[str], meshes: Sequence[HostMesh], *,
                 attach_seconds: float) -> None:
        self.config = config
        self.addresses: tuple[str, ...] = tuple(addresses)
        """Each host's worker address, in host order."""
        self._meshes = list(meshes)
        self.attach_seconds = attach_seconds
        """Seconds :meth:`attach` took (until every worker answered)."""

    @classmethod
    def attach(cls, config: HostsConfig, *, name: str = "forge_env") -> Hosts:
        """Connect to every worker of ``config`` and wait until all answer (blocking).

        First makes this process's Monarch client listen on TCP (the workers' processes
        connect back to it), unless the client already runs: then it must be reachable
        (TCP, or every worker on this machine), else the error says what to do.

        Raises:
            ValueError: ``config`` is local (use ``this_host()``: pass ``hosts=None``).
            ForgeEnvError: a worker did not answer within ``config.attach_timeout_s``, or this
                process's client cannot be reached from the workers.
        """
        if config.local:
            raise ValueError("Hosts.attach needs workers; a local HostsConfig runs on this_host()")
        from monarch.actor import attach_to_workers

        addresses = config.addresses()
        started = time.perf_counter()
        _listen_on_tcp(addresses, config.client_host)
        meshes = [attach_to_workers(ca="trust_all_connections", workers=[address], name=f"{name}_host{h}")
                  for h, address in enumerate(addresses)]
        deadline = time.monotonic() + config.attach_timeout_s
        silent: list[str] = []
        for address, mesh in zip(addresses, meshes):
            try:
                mesh.initialized.get(timeout=max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                silent.append(address)
        if silent:
            raise ForgeEnvError(
                f"hosts: no Monarch worker answered at {silent} within {config.attach_timeout_s:g} s "
                f"({len(addresses) - len(silent)} of {len(addresses)} did). Start one on each host "
                f"(`{_WORKER_HINT}`), check the addresses, and that this machine can open TCP connections "
                f"to those ports (firewall); or raise hosts.attach_timeout_s for workers still starting"
            )
        seconds = time.perf_counter() - started
        logger.info("attached to %d Monarch worker(s) %s in %.2f s", len(addresses), list(addresses), seconds)
        return cls(config, addresses, meshes, attach_seconds=seconds)

    @property
    def n(self) -> int:
        """Number of hosts."""
        return len(self._meshes)

    def mesh(self, host: int) -> HostMesh:
        """The Monarch host mesh (one host) of host ``host % n``."""
        return self._meshes[host % self.n]

    def address(self, host: int) -> str:
        """The worker address of host ``host % n``."""
        return self.addresses[host % self.n]

    def host_name(self, host: int) -> str:
        """The host part of host ``host % n``'s worker address: how other hosts reach it too
        (e.g. the ``MASTER_ADDR`` of a process group whose rank 0 runs there)."""
        return host_of(self.address(host))

    def __repr__(self) -> str:
        return f"Hosts({list(self.addresses)})"


def _listen_on_tcp(addresses: Sequence[str], client_host: str | None) -> None:
    """Make this process's Monarch client reachable from the workers' processes.

    Monarch's client listens on a Unix socket by default, which processes on other hosts
    cannot reach; the transport is chosen when the client first starts. So: ask for TCP on
    the address that faces the workers; if the client runs already, check what it listens on.
    """
    from monarch.actor import context, enable_transport

    remote = [a for a in addresses if not is_loopback_host(host_of(a))]
    ip = client_host or (_address_towards(remote[0]) if remote else "127.0.0.1")
    shown = f"[{ip}]" if ":" in ip else ip
    try:
        enable_transport(f"tcp://{shown}:0")
    except RuntimeError as e:  # the client runs already, with another transport
        logger.debug("Monarch transport already chosen: %s", e)
    where = str(context().actor_instance.actor_id).split("@", 1)[-1]
    on_tcp = where.startswith("tcp://")
    loopback_client = on_tcp and is_loopback_host(where.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]"))
    if remote and (not on_tcp or loopback_client):
        raise ForgeEnvError(
            f"hosts: this process's Monarch client listens on {where}, which the workers {remote} cannot "
            "reach: it started (this_host(), a local mesh) before the hosts were attached. Attach the "
            "hosts first (build the Monarch parts that take hosts= before any local mesh), or set "
            "HYPERACTOR_MESH_DEFAULT_TRANSPORT=tcp://<this host's IP>:0 in the environment"
        )


def _address_towards(address: str) -> str:
    """The local IP this machine would use to reach ``address`` (no packet is sent)."""
    host, port = host_of(address), int(address.rsplit(":", 1)[1])
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(sockaddr)
            return str(s.getsockname()[0])
    except OSError as e:
        raise ForgeEnvError(
            f"hosts: cannot find a route to the worker {address} ({e}): check the host name, or set "
            "hosts.client_host to this machine's address on the workers' network"
        ) from e


def set_env(env: Mapping[str, str]) -> None:
    """Set environment variables in this process (run first in processes spawned on workers:
    they inherit the worker's environment, not the caller's)."""
    os.environ.update({str(k): str(v) for k, v in env.items()})
