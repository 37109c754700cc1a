"""Run an env server as a local subprocess (uvicorn) on a free loopback port."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Any

from forge_env._exceptions import RuntimeStartError
from forge_env.env import Action, AsyncEnv, Observation
from forge_env.runtime._proctree import pid_alive, terminate_tree
from forge_env.runtime._server_runtime import ServerRuntime

__all__ = ["LocalProcessRuntime"]

logger = logging.getLogger(__name__)

_LOG_TAIL_BYTES = 8_000
_PORT_ATTEMPTS = 3  # a free port can be taken between probing it and the child binding it


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _forge_env_root() -> str:
    """The directory holding the ``forge_env`` package (and, in a checkout, ``envs``)."""
    import forge_env

    return str(Path(forge_env.__file__).resolve().parent.parent)


class LocalProcessRuntime(ServerRuntime):
    """An env server in a subprocess: ``python -m forge_env.runtime._serve_main SPEC``.

    The server gets its own process group on a free 127.0.0.1 port; :meth:`start` waits
    for ``GET /health`` and fails fast — with the log tail — when the process exits or the
    deadline passes. :meth:`stop` sends SIGTERM to the group, SIGKILL after
    ``stop_timeout``, and reaps it: no process is left, children included. A runtime that
    is garbage-collected or alive at interpreter exit is stopped the same way, and the
    server ends itself if this process dies without cleaning up.

    >>> import asyncio
    >>> async def main():
    ...     async with LocalProcessRuntime("guess_number") as runtime:
    ...         print(runtime.url)                    # http://127.0.0.1:PORT
    ...         async with await runtime.session() as env:
    ...             obs, info = await env.reset(seed=1)
    >>> asyncio.run(main())  # doctest: +SKIP

    Args:
        spec: ENV spec resolved in the child (built-in name, env folder, ``module:attr``),
            or an AsyncEnv subclass importable by name.
        host: interface to bind; keep the loopback default unless you mean to expose it.
        port: port to bind; None picks a free one (retried if taken meanwhile).
        max_sessions: concurrent WebSocket sessions the server accepts.
        session_idle_timeout: seconds after which the server reaps an idle session.
        env: extra environment variables for the server process.
        log_file: where the server's stdout/stderr go (appended across restarts);
            default: a new file in the temp dir. See :attr:`log_path`.
        startup_timeout: seconds to wait for ``/health`` before giving up.
        stop_timeout: seconds between SIGTERM and SIGKILL.
        python: the interpreter running the server.
        action_type / observation_type: types :meth:`session` clients parse into;
            default: the env class's when ``spec`` is a class, else AnyAction/AnyObservation.
        connect_timeout / message_timeout: passed to each session's RemoteEnv.
        log_level: the server's log level.
    """

    def __init__(
        self,
        spec: str | type[AsyncEnv[Any, Any]],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_sessions: int = 256,
        session_idle_timeout: float | None = 300.0,
        env: dict[str, str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        python: str = sys.executable,
        action_type: type[Action] | None = None,
        observation_type: type[Observation] | None = None,
        connect_timeout: float = 10.0,
        message_timeout: float | None = 60.0,
        log_level: str = "info",
    ) -> None:
        if inspect.isclass(spec):
            if spec.__module__ == "__main__" or "<locals>" in spec.__qualname__:
                raise ValueError(
                    f"{spec.__qualname__} is defined in __main__ or a function, which the "
                    "server process cannot import: move it to a module and pass "
                    "'module:Class' (or the class from that module)"
                )
            action_type = action_type or spec.action_type
            observation_type = observation_type or spec.observation_type
            spec = f"{spec.__module__}:{spec.__qualname__}"
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"spec must be an ENV spec string or an AsyncEnv class, got {spec!r}")
        super().__init__(
            max_sessions=max_sessions,
            action_type=action_type,
            observation_type=observation_type,
            connect_timeout=connect_timeout,
            message_timeout=message_timeout,
        )
        if startup_timeout <= 0 or stop_timeout < 0:
            raise ValueError(
                f"startup_timeout must be > 0 and stop_timeout >= 0, got "
                f"{startup_timeout} and {stop_timeout}"
            )
        # A spec that names a folder is made absolute so the child's cwd does not matter.
        if (spec.startswith((".", "~")) or "/" in spec) and ":" not in spec:
            spec = str(Path(spec).expanduser().resolve())
        self.spec = spec
        self.host = host
        self.session_idle_timeout = session_idle_timeout
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.python = python
        self.log_level = log_level
        self._fixed_port = port
        self._port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._last_returncode: int | None = None
        if log_file is None:
            # Named now, created at start: constructing a runtime touches nothing.
            log_file = Path(tempfile.gettempdir()) / f"forge-env-server-{uuid.uuid4().hex[:12]}.log"
        self.log_path = Path(log_file)
        """The server's log file (stdout and stderr, appended across restarts)."""

    def __repr__(self) -> str:
        return f"LocalProcessRuntime({self.spec!r}, url={self.url}, state={self.state.value})"

    # --- properties ---------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        if not self.running or self._port is None:
            return None
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        """The server process id while it is running (also the process group id)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The server's exit code once it ended (the last one, after :meth:`stop`)."""
        return self._proc.poll() if self._proc is not None else self._last_returncode

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last ``max_bytes`` of the server log, decoded."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # --- lifecycle ----------------------------------------------------------------------

    def _command(self, port: int) -> list[str]:
        return [
            self.python, "-m", "forge_env.runtime._serve_main", self.spec,
            "--host", self.host,
            "--port", str(port),
            "--max-sessions", str(self.max_sessions),
            "--session-idle-timeout", str(self.session_idle_timeout),
            "--log-level", self.log_level,
            "--graceful-timeout", str(max(0.1, min(self.stop_timeout, 3.0))),
            "--parent-pid", str(os.getpid()),
        ]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        # The child imports the same forge_env (and built-in envs) as this process, even
        # when the package is used from a checkout rather than installed.
        root = _forge_env_root()
        parts = [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
        env["PYTHONPATH"] = os.pathsep.join(parts)
        env["PYTHONUNBUFFERED"] = "1"  # tracebacks reach the log before the process dies
        return env

    async def _start(self) -> None:
        attempts = 1 if self._fixed_port is not None else _PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._fixed_port if self._fixed_port is not None else (
                # Keep the port across restarts so clients can reconnect to the same URL.
                self._port if attempt == 1 and self._port is not None else _free_port(self.host)
            )
            try:
                await self._spawn_and_wait(port)
                return
            except RuntimeStartError as e:
                if attempt < attempts and "address already in use" in e.logs.lower():
                    logger.info("port %d was taken before the server bound it; retrying", port)
                    continue
                raise

    async def _spawn_and_wait(self, port: int) -> None:
        cmd = self._command(port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- forge-env: starting {shlex.join(cmd)} ---\n".encode())
            log.flush()
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                start_new_session=True,  # own process group: one killpg ends it all
                close_fds=True,
            )
        self._proc, self._port = proc, port
        # Runs on garbage collection and at interpreter exit (atexit); holds no `self`.
        self._finalizer = weakref.finalize(self, terminate_tree, proc, grace=1.0)
        url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '', '::') else self.host}:{port}"
        try:
            took = await self._wait_until_healthy(
                url,
                what=f"env server for {self.spec!r}",
                timeout=self.startup_timeout,
                exit_code=proc.poll,
                log_tail=self.log_tail,
                log_hint=f". Full log: {self.log_path}",
            )
        except BaseException:
            await self._discard_process()  # nothing may outlive a failed start
            raise
        logger.info("env server %r healthy at %s after %.2fs (pid %d)", self.spec, url, took, proc.pid)

    async def _discard_process(self) -> None:
        proc, self._proc = self._proc, None
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()
        if proc is not None:
            code = await asyncio.to_thread(terminate_tree, proc, grace=self.stop_timeout)
            self._last_returncode = code
            logger.info("env server %r (pid %d) stopped, exit code %s", self.spec, proc.pid, code)

    async def _stop(self) -> None:
        await self._discard_process()

    def _server_running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None and pid_alive(proc.pid)
