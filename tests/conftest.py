"""Shared test fixtures: run any ASGI app on a real 127.0.0.1 port in a background thread.

Test modules that need the context manager itself import it: ``from conftest import
running_server`` (pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from forge_env.server import uvicorn_config


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
