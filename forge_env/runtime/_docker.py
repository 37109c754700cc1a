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
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from forge_env._exceptions import RuntimeStartError
from forge_env.env import Action, Observation
from forge_env.runtime._proctree import pid_alive
from forge_env.runtime._server_runtime import ServerRuntime

if TYPE_CHECKING:
    import docker

__all__ = [
    "DockerRuntime",
    "reap_orphans",
    "build_env_image",
    "env_image_tag",
    "resolve_env_dockerfile",
    "source_root",
    "ImageBuildError",
    "DEFAULT_BASE_IMAGE",
    "MANAGED_LABEL",
    "OWNER_PID_LABEL",
    "OWNER_HOST_LABEL",
    "ENV_LABEL",
]

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


def _build_hint(image: str) -> str:
    m = re.fullmatch(r"(?:[\w.-]+/)?forge-env[/-]([\w-]+)(?::[\w.-]+)?", image)
    name = m.group(1).replace("-", "_") if m else "NAME"
    return (
        f"build it first: `forge-env build {name}` or `scripts/docker_engine.sh env-image {name}` "
        f"(tags forge-env/{name}:latest), "
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
        if labels.get(OWNER_HOST_LABEL, host) != host or pid_alive(pid):
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


# --- building env images ------------------------------------------------------------------

DEFAULT_BASE_IMAGE = "local/python-base:bookworm"
"""The offline base image ``scripts/docker_engine.sh base-image`` builds; used when present."""
ENV_LABEL = "forge-env.env"
"""Label on images :func:`build_env_image` builds: the env's name."""

_BUILD_LOG_TAIL = 30
# What our env Dockerfiles COPY: the build context holds exactly these (never .venv, .git or
# the engine's own data-root under .docker/, which live beside them in a checkout).
_CONTEXT_ITEMS = ("pyproject.toml", "README.md", "forge_env", "envs")
_SKIP_NAMES = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ImageBuildError(RuntimeStartError):
    """Building an env image failed; ``log_tail`` holds the last lines of the build log."""

    def __init__(self, message: str, log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.log_tail = list(log_tail or [])


def source_root() -> Path:
    """The forge-env source checkout (holding pyproject.toml, forge_env/, envs/).

    Image builds need it: our env Dockerfiles ``pip install .`` from it.

    >>> (source_root() / "pyproject.toml").is_file()
    True
    """
    import forge_env

    root = Path(forge_env.__file__).resolve().parents[1]
    missing = [item for item in _CONTEXT_ITEMS if not (root / item).exists()]
    if missing:
        raise ImageBuildError(
            f"building env images needs a forge-env source checkout, but {root} lacks "
            f"{', '.join(missing)}: run forge-env from a clone (pip install -e .)"
        )
    return root


def env_image_tag(name: str) -> str:
    """The default tag of an env's image.

    >>> env_image_tag("guess_number")
    'forge-env/guess_number:latest'
    """
    return f"forge-env/{name.lower()}:latest"


def resolve_env_dockerfile(spec: str) -> tuple[str, Path]:
    """Turn ENV (a built-in env name or a path to a folder holding a Dockerfile) into
    ``(name, folder)``.

    >>> name, folder = resolve_env_dockerfile("echo")
    >>> name, folder.name, (folder / "Dockerfile").is_file()
    ('echo', 'echo', True)

    Raises:
        ImageBuildError: no such built-in env, or the folder has no Dockerfile.
    """
    root = source_root()
    looks_like_path = os.sep in spec or "/" in spec or spec.startswith(".") or Path(spec).is_dir()
    if not looks_like_path:
        folder = root / "envs" / spec
        if _ENV_NAME.fullmatch(spec) and (folder / "Dockerfile").is_file():
            return spec, folder
        known = sorted(p.parent.name for p in (root / "envs").glob("*/Dockerfile"))
        raise ImageBuildError(
            f"no built-in env {spec!r} with a Dockerfile (built-in: {', '.join(known) or 'none'}); "
            "or pass a path to an env folder holding a Dockerfile, e.g. ./my_env"
        )
    folder = Path(spec).expanduser().resolve()
    if not folder.is_dir():
        raise ImageBuildError(f"env folder {spec!r} does not exist: pass a folder holding a Dockerfile")
    if not (folder / "Dockerfile").is_file():
        raise ImageBuildError(
            f"{spec!r} has no Dockerfile: add one (envs/echo/Dockerfile is a template)"
        )
    if not _ENV_NAME.fullmatch(folder.name):
        raise ImageBuildError(
            f"env folder name {folder.name!r} is not a Python identifier (it becomes the "
            "package envs.<name> in the image): rename it, e.g. my_env"
        )
    return folder.name, folder


def _pip_args() -> str:
    """The host pip's index settings, for pip inside the build (``FORGE_PIP_ARGS`` overrides).

    file:// indexes are host paths the build cannot see: left out.
    """
    if "FORGE_PIP_ARGS" in os.environ:
        return os.environ["FORGE_PIP_ARGS"]
    import subprocess
    import sys

    def config(key: str) -> list[str]:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "config", "get", key],
                capture_output=True, text=True, timeout=20,
            )
        except (OSError, subprocess.SubprocessError):
            return []
        return done.stdout.split() if done.returncode == 0 else []

    args: list[str] = []
    args += [f"--index-url {v}" for v in config("global.index-url") if v.startswith("http")]
    args += [f"--extra-index-url {v}" for v in config("global.extra-index-url") if v.startswith("http")]
    args += [f"--trusted-host {v}" for v in config("global.trusted-host")]
    if os.environ.get("PIP_INDEX_URL", "").startswith("http"):
        args.append(f"--index-url {os.environ['PIP_INDEX_URL']}")
    return " ".join(args)


def _build_context(root: Path, name: str, folder: Path) -> Any:
    """A tar of the forge-env sources, with ``folder`` at ``envs/<name>/`` (a spooled file)."""
    import tarfile
    import tempfile

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        base = info.name.rsplit("/", 1)[-1]
        if base in _SKIP_NAMES or base.endswith(_SKIP_SUFFIXES) or base.endswith(".egg-info"):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    inside = folder == root / "envs" / name
    fileobj = tempfile.SpooledTemporaryFile(max_size=32 * 2**20)
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        for item in _CONTEXT_ITEMS:
            if item != "envs" or inside:
                tar.add(root / item, arcname=item, filter=skip)
                continue
            # A user's env outside the checkout: our envs/ package, the user's folder as
            # envs/<name>/ (replacing a built-in of that name), so Dockerfiles like ours work.
            def skip_shadowed(info: tarfile.TarInfo, _name: str = name) -> tarfile.TarInfo | None:
                if info.name == f"envs/{_name}" or info.name.startswith(f"envs/{_name}/"):
                    return None
                return skip(info)

            tar.add(root / "envs", arcname="envs", filter=skip_shadowed)
            tar.add(folder, arcname=f"envs/{name}", filter=skip)
    fileobj.seek(0)
    return fileobj


def build_env_image(
    spec: str,
    *,
    base_image: str | None = None,
    tag: str | None = None,
    docker_host: str | None = None,
    no_cache: bool = False,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Build an env's Docker image and return its tag.

    ENV is a built-in env name (``guess_number``) or a path to an env folder holding a
    Dockerfile. The build context holds ``pyproject.toml``, ``README.md``, ``forge_env/``
    and ``envs/`` of this checkout; a folder outside ``envs/`` is copied in as
    ``envs/<folder name>/``, so a Dockerfile written like ``envs/echo/Dockerfile``
    (``COPY envs ./envs``, ``CMD python3 -m envs.<name>.server.app``) works for it too.
    The build runs with host networking (pip inside reaches the index the way the host does)
    and gets the host pip's index settings as ``PIP_ARGS``.

    Needs a running engine, so not a doctest::

        tag = build_env_image("echo", progress=print)   # Step 1/12 : ARG BASE_IMAGE=...
        tag                                             # 'forge-env/echo:latest'

    Args:
        spec: built-in env name or env folder path.
        base_image: the ``BASE_IMAGE`` build arg; default :data:`DEFAULT_BASE_IMAGE` when the
            engine has it, else the Dockerfile's own default (``python:3.11-slim``).
        tag: the image tag; default ``forge-env/<name>:latest``.
        docker_host: the engine (``unix:///path/docker.sock``); default: ``DOCKER_HOST``.
        no_cache: rebuild every layer.
        progress: called with each build step line (``Step 3/12 : COPY ...``).

    Raises:
        ImageBuildError: unknown env, no Dockerfile, or the build failed (``log_tail``).
        RuntimeStartError: no Docker engine answers.
    """
    sdk = _docker_sdk()
    name, folder = resolve_env_dockerfile(spec)
    root = source_root()
    tag = tag or env_image_tag(name)
    client = _connect(docker_host)
    try:
        buildargs = {"PIP_ARGS": _pip_args()}
        if base_image is None:
            try:
                client.images.get(DEFAULT_BASE_IMAGE)
                base_image = DEFAULT_BASE_IMAGE
            except sdk.errors.ImageNotFound:
                pass  # the Dockerfile's default base (pulled from a registry)
        if base_image:
            buildargs["BASE_IMAGE"] = base_image
        log: list[str] = []
        error: str | None = None
        with _build_context(root, name, folder) as context:
            stream = client.api.build(
                fileobj=context,
                custom_context=True,
                dockerfile=f"envs/{name}/Dockerfile",
                tag=tag,
                buildargs=buildargs,
                labels={ENV_LABEL: name},
                network_mode="host",
                nocache=no_cache,
                rm=True,
                forcerm=True,
                decode=True,
            )
            try:
                for chunk in stream:
                    if "error" in chunk:
                        error = str(chunk.get("error") or chunk.get("errorDetail", {}).get("message"))
                        log.extend(error.splitlines())
                        continue
                    text = chunk.get("stream") or chunk.get("status") or ""
                    for line in text.splitlines():
                        if line.strip():
                            log.append(line)
                            if progress is not None and line.startswith("Step "):
                                progress(line)
            except sdk.errors.APIError as e:
                error = str(getattr(e, "explanation", None) or e)
        if error is None:
            try:
                client.images.get(tag)
            except sdk.errors.ImageNotFound:
                error = "the engine reported no error but the image is missing"
        if error is not None:
            first = error.strip().splitlines()[0] if error.strip() else "unknown error"
            raise ImageBuildError(
                f"building {tag} from {folder / 'Dockerfile'} failed: {first}",
                log_tail=log[-_BUILD_LOG_TAIL:],
            )
        return tag
    finally:
        client.close()
