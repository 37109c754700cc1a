"""RemoteEnv's transport edges on real loopback sockets: refused, silent, wrong, odd servers.

The odd servers are tiny FastAPI apps that send exactly the frames other OpenEnv versions
(or broken proxies) send, so each tolerance rule is exercised on a real WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from forge_env import (
    ConnectError,
    ConnectionClosedError,
    EnvTimeoutError,
    FactoryError,
    Observation,
    SessionError,
    TransportError,
    UnknownMessageTypeError,
)
from forge_env.client import RemoteEnv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose kernel backlog completes TCP handshakes, but nobody ever answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def scripted_app(reply: Any) -> FastAPI:
    """An app whose /ws answers each frame with ``reply(frame) -> list of frames | None``.

    None closes the socket (with code 1011); a str is sent raw.
    """
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                frame = json.loads(await websocket.receive_text())
                answers = reply(frame)
                if answers is None:
                    await websocket.close(code=1011, reason="scripted failure")
                    return
                for answer in answers:
                    await websocket.send_text(answer if isinstance(answer, str) else json.dumps(answer))
        except WebSocketDisconnect:
            pass

    return app


# --- cannot connect -----------------------------------------------------------------------------


async def test_closed_port_is_a_fast_connect_error_with_a_hint() -> None:
    port = _free_port()
    env = RemoteEnv(f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        await env.reset()
    assert time.monotonic() - started < 1.0
    message = str(caught.value)
    assert f"ws://127.0.0.1:{port}/ws" in message
    assert "Is the server running" in message
    assert f"forge-env serve ENV --port {port}" in message
    assert caught.value.url == f"http://127.0.0.1:{port}"
    with pytest.raises(ConnectError, match=f"GET http://127.0.0.1:{port}/health"):
        await env.health()
    await env.close()


async def test_silent_server_times_out_on_the_connect_deadline(silent_port: int) -> None:
    env = RemoteEnv(f"http://127.0.0.1:{silent_port}", connect_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(EnvTimeoutError, match=r"connect_timeout \(0.3s\)") as caught:
        await env.reset()
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 1.5
    assert isinstance(caught.value, TimeoutError)  # plain `except TimeoutError` works too
    await env.close()


async def test_silent_server_times_out_http_on_the_message_deadline(silent_port: int) -> None:
    async with RemoteEnv(f"http://127.0.0.1:{silent_port}", connect_timeout=2.0, message_timeout=0.3) as env:
        started = time.monotonic()
        with pytest.raises(EnvTimeoutError, match=r"message_timeout \(0.3s\).*GET .*/health"):
            await env.health()
        assert time.monotonic() - started < 1.5


async def test_http_server_without_ws_route_is_refused_with_status(serve_app) -> None:
    app = FastAPI()
    app.get("/health")(lambda: {"status": "healthy"})
    url = serve_app(app)
    async with RemoteEnv(url) as env:
        with pytest.raises(ConnectError, match=r"refused the WebSocket upgrade with HTTP 40[34]"):
            await env.reset()
        with pytest.raises(TransportError, match=r"GET .*/metadata answered HTTP 404"):
            await env.metadata()


async def test_wrong_scheme_says_so(serve_app) -> None:
    url = serve_app(scripted_app(lambda frame: []))
    tls_url = url.replace("http://", "https://")
    env = RemoteEnv(tls_url, connect_timeout=3.0)
    with pytest.raises(ConnectError, match=r"use an http:// or ws:// URL \(check the scheme"):
        await env.reset()
    await env.close()


# --- odd but legal servers ------------------------------------------------------------------------


def _old_style(frame: dict[str, Any]) -> list[Any]:
    """OpenEnv 0.3-style replies: metadata only nested in the observation, reward null."""
    if frame["type"] == "reset":
        return [{"type": "observation", "data": {"observation": {"text": "hi", "metadata": {"seed": frame["data"].get("seed")}}, "reward": None, "done": False}}]
    if frame["type"] == "step":
        return [{"type": "observation", "data": {"observation": {"text": frame["data"]["say"], "reward": 1.0, "done": True, "metadata": {"nested": 1}}, "reward": 1.0, "done": True, "metadata": {"top": 2}}}]
    return [{"type": "state", "data": {"episode_id": "x", "step_count": 1, "extra": "kept"}}]


class Text(Observation):
    text: str


async def test_metadata_nested_or_top_level_and_null_reward(serve_app) -> None:
    url = serve_app(scripted_app(_old_style))
    async with RemoteEnv(url, observation_type=Text) as env:
        obs, info = await env.reset(seed=9)
        assert obs == Text(text="hi") and info == {"seed": 9}
        obs, reward, terminated, truncated, info = await env.step({"say": "yo"})
        assert (obs, reward, terminated, truncated) == (Text(text="yo"), 1.0, True, False)
        assert info == {"nested": 1, "top": 2}
        state = await env.state()
        assert state.step_count == 1 and state.model_extra == {"extra": "kept"}


async def test_unknown_reply_type_drops_the_session(serve_app) -> None:
    url = serve_app(scripted_app(lambda frame: [{"type": "surprise", "data": {}}]))
    async with RemoteEnv(url) as env:
        with pytest.raises(TransportError, match="expected a 'observation' frame in reply to reset"):
            await env.reset()
        assert not env.is_connected


async def test_non_json_reply_drops_the_session(serve_app) -> None:
    url = serve_app(scripted_app(lambda frame: ["<html>proxy error</html>"]))
    async with RemoteEnv(url) as env:
        with pytest.raises(TransportError, match="not an OpenEnv message"):
            await env.reset()
        assert not env.is_connected


async def test_unknown_type_error_keeps_the_session(serve_app) -> None:
    def reply(frame: dict[str, Any]) -> list[Any]:
        if frame["type"] == "mcp":
            return [{"type": "error", "data": {"message": "Unknown message type: mcp", "code": "UNKNOWN_TYPE"}}]
        return _old_style(frame)

    url = serve_app(scripted_app(reply))
    async with RemoteEnv(url) as env:
        await env.reset()
        with pytest.raises(UnknownMessageTypeError, match="UNKNOWN_TYPE: Unknown message type: mcp"):
            await env.list_tools()  # an older server without the mcp frame
        assert env.is_connected
        assert (await env.step({"say": "still here"})).observation.text == "still here"


@pytest.mark.parametrize(("code", "exc"), [("FACTORY_ERROR", FactoryError), ("SESSION_ERROR", SessionError)])
async def test_session_level_errors_end_the_session(serve_app, code: str, exc: type) -> None:
    attempts = []

    def reply(frame: dict[str, Any]) -> list[Any]:
        attempts.append(frame["type"])
        if len(attempts) == 1:
            return [{"type": "error", "data": {"message": "could not build the env", "code": code}}]
        return _old_style(frame)

    url = serve_app(scripted_app(reply))
    async with RemoteEnv(url) as env:
        with pytest.raises(exc, match="could not build the env"):
            await env.reset()
        assert not env.is_connected
        obs, _ = await env.reset()  # a new session
        assert obs.text == "hi"


async def test_server_closing_with_a_code_reports_code_and_reason(serve_app) -> None:
    url = serve_app(scripted_app(lambda frame: None if frame["type"] == "step" else _old_style(frame)))
    async with RemoteEnv(url) as env:
        await env.reset()
        with pytest.raises(ConnectionClosedError, match=r"close code 1011, reason 'scripted failure'.*internal error"):
            await env.step({"say": "x"})
        obs, _ = await env.reset()
        assert obs.text == "hi"


async def test_extra_fields_that_do_not_fit_explain_the_mismatch(serve_app) -> None:
    class Strict(Observation):
        text: int  # the server sends a string

    url = serve_app(scripted_app(_old_style))
    async with RemoteEnv(url, observation_type=Strict) as env:
        with pytest.raises(TransportError, match="does not fit Strict.*observation_type=AnyObservation"):
            await env.reset()
        assert env.is_connected  # a client-side model mismatch does not end the session


async def test_many_envs_against_a_silent_server_all_time_out_together(silent_port: int) -> None:
    envs = [RemoteEnv(f"http://127.0.0.1:{silent_port}", connect_timeout=0.5) for _ in range(50)]
    started = time.monotonic()
    results = await asyncio.gather(*(e.reset() for e in envs), return_exceptions=True)
    assert all(isinstance(r, EnvTimeoutError) for r in results), results[:3]
    assert time.monotonic() - started < 3.0  # concurrent deadlines, not 50 serial ones
    await asyncio.gather(*(e.close() for e in envs))


def test_a_session_cannot_move_between_event_loops(serve_app) -> None:
    url = serve_app(scripted_app(_old_style))
    env = RemoteEnv(url)
    asyncio.run(env.reset())  # the socket belongs to that (now closed) loop
    with pytest.raises(RuntimeError, match="another event loop.*one RemoteEnv per loop"):
        asyncio.run(env.step({"say": "x"}))
    # HTTP calls get a client per loop, so they work from any loop.
    assert asyncio.run(env.health()) == {"status": "healthy"}
    assert asyncio.run(env.health()) == {"status": "healthy"}
