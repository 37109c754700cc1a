"""Run an env server in a Docker container, published on a loopback port.

Any image that serves the OpenEnv wire on ``container_port`` (8000) with ``GET /health``
works: forge-env's own env images and OpenEnv's alike. The ``docker`` Python SDK is an
optional dependency (``pip install 'forge-env[docker]'``); it is imported on first use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from forge_env._exceptions import RuntimeStartError
from forge_env.env import Action, Observation
from forge_env.runtime._server_runtime import ServerRuntime

if TYPE_CHECKING:
    import docker

__all__ = ["DockerRuntime", "reap_orphans", "MANAGED_LABEL", "OWNER_PID_LABEL", "OWNER_HOST_LABEL"]

logger = logging.getLogger(__name__)

MANAGED_LABEL = "forge-env.managed"
"""Label (value ``"1"``) on every container a :class:`DockerRuntime` starts."""
OWNER_PID_LABEL = "forge-env.owner-pid"
"""Label: the pid of the process that started the container (for :func:`reap_orphans`)."""
OWNER_HOST_LABEL = "forge-env.owner-host"
"""Label: the host name of that process (pids of other hosts are never judged)."""

_LOG_TAIL_LINES = 200
_PORT_ATTEMPTS = 3  # a free port can be taken between probing it and docker-proxy binding it
_STATE_CACHE_S = 0.2  # the health wait polls often; ask the engine at most this often
_PullPolicy = Literal["never", "if-missing", "always"]


def _docker_sdk() -> Any:
    try:
        import docker
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "DockerRuntime needs the docker SDK: pip install 'forge-env[docker]' (or pip install docker)"
        ) from e
    return docker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _build_hint(image: str) -> str:
    m = re.fullmatch(r"(?:[\w.-]+/)?forge-env[/-]([\w-]+)(?::[\w.-]+)?", image)
    name = m.group(1).replace("-", "_") if m else "NAME"
    return (
        f"build it first: `scripts/docker_engine.sh env-image {name}` (tags forge-env/{name}:latest), "
        f"or `docker build -f envs/{name}/Dockerfile -t {image} .` from the repository root"
    )


def _connect(docker_host: str | None) -> "docker.DockerClient":
    sdk = _docker_sdk()
    where = docker_host or os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        client = sdk.DockerClient(base_url=docker_host) if docker_host else sdk.from_env()
        client.ping()
    except Exception as e:
        raise RuntimeStartError(
            f"cannot reach a Docker engine at {where} ({e}). Start one "
            "(`eval $(scripts/docker_engine.sh start)` in a forge-env checkout) and set DOCKER_HOST, "
            "or pass docker_host='unix:///path/docker.sock'"
        ) from e
    return client


def reap_orphans(client: "docker.DockerClient") -> list[str]:
    """Remove forge-env containers whose owner process on this host is gone.

    A process that dies without stopping its runtimes (SIGKILL, a crash) leaves its
    containers running; the next :class:`DockerRuntime` start calls this to clean them up.
    Containers of live processes and of other hosts are left alone.

    Needs a running engine, so not a doctest::

        import docker
        reap_orphans(docker.from_env())
    ['3f2a...']

    Returns:
        The ids of the containers removed.
    """
    sdk = _docker_sdk()
    host = socket.gethostname()
    removed: list[str] = []
    for container in client.containers.list(all=True, filters={"label": f"{MANAGED_LABEL}=1"}):
        labels = container.labels or {}
        try:
            pid = int(labels.get(OWNER_PID_LABEL, ""))
        except ValueError:
            continue
        if labels.get(OWNER_HOST_LABEL, host) != host or _pid_alive(pid):
            continue
        try:
            container.remove(force=True)
            removed.append(container.id)
            logger.info("removed orphaned container %s (owner pid %d is gone)", container.short_id, pid)
        except sdk.errors.NotFound:
            pass
        except sdk.errors.APIError as e:
            if "already in progress" not in str(e):  # another process reaps it right now
                logger.warning("could not remove orphaned container %s: %s", container.short_id, e)
    return removed


def _remove_container(client: "docker.DockerClient", container_id: str) -> None:
    """Force-remove a container; safe at interpreter exit and for a gone one."""
    try:
        client.api.remove_container(container_id, force=True)
    except Exception as e:
        if "No such container" not in str(e) and "already in progress" not in str(e):
            logger.warning("could not remove container %s: %s", container_id[:12], e)


class DockerRuntime(ServerRuntime):
    """An env server in a Docker container on a 127.0.0.1 port, locked down.

    The container publishes ``container_port`` on 127.0.0.1 only, drops every capability,
    cannot gain privileges, runs as an unprivileged user on a read-only root (a tmpfs at
    ``/tmp``) with memory, pid and CPU limits. :meth:`start` waits for ``GET /health`` and
    fails fast — with the container's logs — when it exits or the deadline passes;
    :meth:`stop` force-removes the container, so none is left behind (nor at interpreter
    exit; containers of a process killed outright are removed by :func:`reap_orphans` at
    the next start).

    >>> import asyncio
    >>> async def main():
    ...     async with DockerRuntime("forge-env/guess_number:latest") as runtime:
    ...         async with await runtime.session() as env:
    ...             obs, info = await env.reset(seed=1)
    >>> asyncio.run(main())  # doctest: +SKIP

    Args:
        image: the image to run (e.g. ``forge-env/echo:latest``; build it with
            ``scripts/docker_engine.sh env-image echo``) — any OpenEnv image works.
        port: the host port (on 127.0.0.1); None picks a free one, kept across restarts.
        container_port: the port the server listens on inside the container.
        env: environment variables for the container.
        command: overrides the image's CMD.
        memory: memory limit (docker syntax: ``"512m"``, ``"2g"``); None: no limit.
        pids_limit: most processes/threads in the container; None: no limit.
        cpus: CPU limit (fractions allowed); None: no limit.
        read_only: a read-only root file system (with a writable tmpfs at ``/tmp``).
        tmpfs_size: size of that tmpfs.
        user: the user the server runs as (uid or name); None: the image's.
        pull: ``"if-missing"`` pulls only when the engine lacks the image, ``"never"``
            never pulls, ``"always"`` pulls every start.
        startup_timeout: seconds to wait for ``/health``.
        stop_timeout: seconds the container gets to stop before it is killed.
        labels: extra labels (the ``forge-env.*`` ones are always set).
        docker_host: the engine (``unix:///path/docker.sock``); default: ``DOCKER_HOST``.
        max_sessions / action_type / observation_type / connect_timeout / message_timeout:
            as in :class:`~forge_env.runtime.ServerRuntime`.
    """

    def __init__(
        self,
        image: str,
        *,
        port: int | None = None,
        container_port: int = 8000,
        env: Mapping[str, str] | None = None,
        command: list[str] | str | None = None,
        memory: str | None = "512m",
        pids_limit: int | None = 256,
        cpus: float | None = 1.0,
        read_only: bool = True,
        tmpfs_size: str = "64m",
        user: str | None = "10001",
        pull: _PullPolicy = "if-missing",
        startup_timeout: float = 60.0,
        stop_timeout: float = 2.0,
        labels: Mapping[str, str] | None = None,
        docker_host: str | None = None,
        max_sessions: int = 256,
        action_type: type[Action] | None = None,
        observation_type: type[Observation] | None = None,
        connect_timeout: float = 10.0,
        message_timeout: float | None = 60.0,
    ) -> None:
        super().__init__(
            max_sessions=max_sessions,
            action_type=action_type,
            observation_type=observation_type,
            connect_timeout=connect_timeout,
            message_timeout=message_timeout,
        )
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"image must be an image name like 'forge-env/echo:latest', got {image!r}")
        if pull not in ("never", "if-missing", "always"):
            raise ValueError(f"pull must be 'never', 'if-missing' or 'always', got {pull!r}")
        if startup_timeout <= 0 or stop_timeout < 0:
            raise ValueError(
                f"startup_timeout must be > 0 and stop_timeout >= 0, got {startup_timeout} and {stop_timeout}"
            )
        if cpus is not None and cpus <= 0:
            raise ValueError(f"cpus must be > 0 or None, got {cpus}")
        self.image = image
        self.container_port = container_port
        self.extra_env = dict(env or {})
        self.command = command
        self.memory = memory
        self.pids_limit = pids_limit
        self.cpus = cpus
        self.read_only = read_only
        self.tmpfs_size = tmpfs_size
        self.user = user
        self.pull = pull
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.docker_host = docker_host
        self.labels = {
            **dict(labels or {}),
            MANAGED_LABEL: "1",
            OWNER_PID_LABEL: str(os.getpid()),
            OWNER_HOST_LABEL: socket.gethostname(),
        }
        self._fixed_port = port
        self._port: int | None = port
        self._client: docker.DockerClient | None = None
        self._container: Any = None
        self._finalizer: weakref.finalize | None = None
        self._state_cache: tuple[float, str, int | None] = (0.0, "", None)
        self.last_logs = ""
        """The logs of the last container, captured when it was removed."""

    def __repr__(self) -> str:
        return f"DockerRuntime({self.image!r}, url={self.url}, state={self.state.value})"

    # --- properties ---------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        if not self.running or self._port is None:
            return None
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def container_id(self) -> str | None:
        """The running container's id (None when stopped)."""
        return self._container.id if self._container is not None else None

    def logs(self, tail: int = _LOG_TAIL_LINES) -> str:
        """The container's last ``tail`` log lines (stdout and stderr)."""
        container = self._container
        if container is None:
            return self.last_logs
        try:
            return bytes(container.logs(tail=tail)).decode("utf-8", "replace")
        except Exception as e:
            return f"<logs unavailable: {e}>"

    # --- lifecycle ----------------------------------------------------------------------

    def _ensure_image(self, client: "docker.DockerClient") -> None:
        sdk = _docker_sdk()
        if self.pull != "always":
            try:
                client.images.get(self.image)
                return
            except sdk.errors.ImageNotFound:
                if self.pull == "never":
                    raise RuntimeStartError(
                        f"Docker image {self.image!r} is not on the engine and pull='never': "
                        f"{_build_hint(self.image)}"
                    ) from None
        try:
            started = time.monotonic()
            client.images.pull(self.image)
            logger.info("pulled %s in %.1fs", self.image, time.monotonic() - started)
        except sdk.errors.APIError as e:
            raise RuntimeStartError(
                f"Docker image {self.image!r} is not on the engine and pulling it failed "
                f"({getattr(e, 'explanation', None) or e}): {_build_hint(self.image)}"
            ) from e

    def _run_kwargs(self, port: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            detach=True,
            ports={f"{self.container_port}/tcp": ("127.0.0.1", port)},  # loopback only
            environment=self.extra_env,
            labels=self.labels,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=self.read_only,
            init=False,
        )
        if self.read_only:
            kwargs["tmpfs"] = {"/tmp": f"rw,nosuid,nodev,size={self.tmpfs_size}"}
        if self.command is not None:
            kwargs["command"] = self.command
        if self.memory is not None:
            kwargs["mem_limit"] = self.memory
        if self.pids_limit is not None:
            kwargs["pids_limit"] = self.pids_limit
        if self.cpus is not None:
            kwargs["nano_cpus"] = int(self.cpus * 1e9)
        if self.user is not None:
            kwargs["user"] = self.user
        return kwargs

    def _launch(self, port: int) -> Any:
        """Create and start the container (blocking; run in a thread)."""
        assert self._client is not None
        return self._client.containers.run(self.image, **self._run_kwargs(port))

    async def _start(self) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(_connect, self.docker_host)
        client = self._client
        try:
            reaped = await asyncio.to_thread(reap_orphans, client)
            if reaped:
                logger.info("removed %d orphaned forge-env container(s)", len(reaped))
        except Exception as e:  # cleanup of others' leftovers must not block our start
            logger.warning("reaping orphaned containers failed: %s", e)
        await asyncio.to_thread(self._ensure_image, client)
        sdk = _docker_sdk()
        attempts = 1 if self._fixed_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._fixed_port if self._fixed_port is not None else (
                self._port if attempt == 1 and self._port is not None else _free_port()
            )
            try:
                container = await asyncio.to_thread(self._launch, port)
            except sdk.errors.APIError as e:
                # docker-proxy could not bind the port: the container was created, not started.
                await asyncio.to_thread(self._remove_leftover_on_port, port)
                if attempt < attempts and "address already in use" in str(e).lower():
                    logger.info("port %d was taken before the container bound it; retrying", port)
                    continue
                raise RuntimeStartError(
                    f"starting a container from {self.image!r} failed: {getattr(e, 'explanation', None) or e}"
                ) from e
            break
        self._container, self._port = container, port
        self._state_cache = (0.0, "", None)
        self._finalizer = weakref.finalize(self, _remove_container, client, container.id)
        try:
            took = await self._wait_until_healthy(
                f"http://127.0.0.1:{port}",
                what=f"container {container.short_id} of {self.image!r}",
                timeout=self.startup_timeout,
                exit_code=self._exit_code,
                log_tail=self.logs,
                log_hint=" (the container was removed; its log tail follows)",
            )
        except BaseException:
            await self._discard_container()
            raise
        logger.info("container %s of %r healthy at 127.0.0.1:%d after %.2fs",
                    container.short_id, self.image, port, took)

    def _remove_leftover_on_port(self, port: int) -> None:
        assert self._client is not None
        for c in self._client.containers.list(all=True, filters={"label": f"{OWNER_PID_LABEL}={os.getpid()}"}):
            if c.status == "created":
                bindings = (c.attrs.get("HostConfig", {}).get("PortBindings") or {}).values()
                if any(str(b.get("HostPort")) == str(port) for bs in bindings for b in (bs or [])):
                    _remove_container(self._client, c.id)

    def _container_state(self) -> tuple[str, int | None]:
        """(status, exit code once it ended), asked from the engine at most every 0.2 s."""
        checked, status, code = self._state_cache
        if time.monotonic() - checked < _STATE_CACHE_S:
            return status, code
        container = self._container
        if container is None:
            return "removed", None
        try:
            container.reload()
            state = container.attrs.get("State", {})
            status = str(state.get("Status", ""))
            code = int(state.get("ExitCode", 0)) if status in ("exited", "dead") else None
        except Exception as e:
            if "No such container" in str(e) or "404" in str(e):
                status, code = "removed", -1
            else:
                status, code = "unknown", None
        self._state_cache = (time.monotonic(), status, code)
        return status, code

    def _exit_code(self) -> int | None:
        return self._container_state()[1]

    def _server_running(self) -> bool:
        return self._container_state()[0] == "running"

    async def _discard_container(self) -> None:
        container, self._container = self._container, None
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()
        if container is None or self._client is None:
            return

        def remove() -> None:
            try:
                self.last_logs = bytes(container.logs(tail=_LOG_TAIL_LINES)).decode("utf-8", "replace")
            except Exception:
                pass
            try:
                # Ask it to stop first (graceful shutdown closes sessions), then force.
                if self.stop_timeout > 0:
                    container.stop(timeout=max(1, int(self.stop_timeout)))
            except Exception:
                pass
            _remove_container(self._client, container.id)  # type: ignore[arg-type]

        await asyncio.to_thread(remove)
        logger.info("container %s of %r removed", container.short_id, self.image)

    async def _stop(self) -> None:
        await self._discard_container()
