"""RemoteEnv against OpenEnv's OWN server (openenv==0.10.0 ``create_app``), on real sockets.

Three kinds of OpenEnv envs: a small counter written here on OpenEnv's ``Environment``
base, an MCP echo env on OpenEnv's ``MCPEnvironment`` (OpenEnv's echo_env is not in the
wheel; this one has the same tool), and the template env that ``openenv init`` generates.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

pytest.importorskip("openenv", reason="the OpenEnv compatibility tests need openenv==0.10.0")

from openenv.core.env_server.http_server import create_app  # noqa: E402
from openenv.core.env_server.interfaces import Environment  # noqa: E402
from openenv.core.env_server.mcp_environment import MCPEnvironment  # noqa: E402
from openenv.core.env_server.mcp_types import CallToolAction, CallToolObservation  # noqa: E402
from openenv.core.env_server.types import Action as OEAction  # noqa: E402
from openenv.core.env_server.types import Observation as OEObservation  # noqa: E402
from openenv.core.env_server.types import State as OEState  # noqa: E402
from openenv.core.generic_client import GenericEnvClient  # noqa: E402

from forge_env import (  # noqa: E402
    Action,
    AnyObservation,
    CapacityReachedError,
    ConnectError,
    ConnectionClosedError,
    EnvTimeoutError,
    InvalidActionError,
    Observation,
    RemoteExecutionError,
    State,
    ValidationFailedError,
)
from forge_env.client import RemoteEnv  # noqa: E402

pytestmark = pytest.mark.openenv


# --- a counter env on OpenEnv's base classes ---------------------------------------------------


class CountAction(OEAction):
    by: int = 1
    fail: bool = False
    sleep_s: float = 0.0
    truncate: bool = False


class CountObservation(OEObservation):
    n: int = 0
    debug: str = "a field strict client models do not declare"


class CountEnv(Environment):
    """n starts at the seed; each step adds ``by``; the episode ends at n >= 5."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = OEState()
        self._n = 0

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> CountObservation:
        self._state = OEState(episode_id=episode_id, step_count=0)
        self._n = seed or 0
        return CountObservation(n=self._n, reward=None, done=False)

    def step(self, action: CountAction, **kwargs: Any) -> CountObservation:  # type: ignore[override]
        if action.fail:
            raise RuntimeError("boom: the env failed on purpose")
        if action.sleep_s:
            time.sleep(action.sleep_s)
        self._n += action.by
        self._state.step_count += 1
        done = self._n >= 5 or action.truncate
        metadata: dict[str, Any] = {"n": self._n}
        if action.truncate:
            metadata["truncated"] = True
        return CountObservation(
            n=self._n, reward=None if action.by == 0 else float(action.by), done=done, metadata=metadata
        )

    @property
    def state(self) -> OEState:
        return self._state


def count_app(max_sessions: int = 8) -> Any:
    return create_app(CountEnv, CountAction, CountObservation, env_name="count", max_concurrent_envs=max_sessions)


# --- client-side models: ours, not OpenEnv's ----------------------------------------------------


class Count(Action):
    by: int = 1


class CountView(Observation):
    """Strict (extra="forbid") and narrower than what the server sends."""

    n: int


# --- an MCP echo env (same tool as OpenEnv's echo_env) --------------------------------------------


class EchoEnv(MCPEnvironment):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        from fastmcp import FastMCP

        mcp = FastMCP("echo_env")

        @mcp.tool
        def echo_message(message: str) -> str:
            """Echo the message back."""
            return message

        super().__init__(mcp)
        self._state = OEState()

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> OEObservation:
        self._state = OEState(episode_id=episode_id, step_count=0)
        return OEObservation(done=False, reward=0.0, metadata={"status": "ready"})

    def _step_impl(self, action: OEAction, timeout_s: float | None = None, **kwargs: Any) -> OEObservation:
        return OEObservation(done=False, reward=0.0, metadata={"error": f"unknown action {type(action).__name__}"})

    @property
    def state(self) -> OEState:
        return self._state


# --- a uvicorn server on a port we choose (to stop and restart it) -------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, alive: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server on {url} did not become healthy in {timeout}s")


@contextlib.contextmanager
def _thread_server(app: Any, port: int) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, thread.is_alive)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- full episodes and decoding --------------------------------------------------------------------


async def test_full_episode_decodes_reward_done_metadata_and_state(serve_app) -> None:
    url = serve_app(count_app())
    async with RemoteEnv(url) as env:
        obs, info = await env.reset(seed=2, options={"episode_id": "ep-1"})
        assert isinstance(obs, AnyObservation) and obs.n == 2
        assert obs.debug.startswith("a field")  # untyped: every field the server sends
        assert info == {}  # reward null and done false add nothing

        first = await env.step({"by": 0})  # reward: null on the wire
        assert (first.observation.n, first.reward, first.terminated, first.truncated) == (2, 0.0, False, False)
        assert first.info == {"n": 2}

        second = await env.step({"by": 2})
        assert (second.observation.n, second.reward, second.done) == (4, 2.0, False)

        last = await env.step({"by": 1})
        obs, reward, terminated, truncated, info = last
        assert (obs.n, reward, terminated, truncated, info) == (5, 1.0, True, False, {"n": 5})

        state = await env.state()
        assert type(state) is State
        assert (state.episode_id, state.step_count) == ("ep-1", 3)

        # A second reset reuses the open socket (same session, same client address).
        session = env.session_address
        obs, _ = await env.reset(seed=0)
        assert obs.n == 0 and env.session_address == session
        truncated_step = await env.step({"by": 1, "truncate": True})
        assert (truncated_step.terminated, truncated_step.truncated) == (False, True)
    assert not env.is_connected


async def test_typed_binding_validates_into_the_users_models(serve_app) -> None:
    url = serve_app(count_app())
    env = RemoteEnv(url, action_type=Count, observation_type=CountView)
    try:
        obs, _ = await env.reset(seed=1)
        result = await env.step(Count(by=3))
        # The server sends n, debug and metadata; the strict model keeps what it declares.
        assert type(obs) is CountView and type(result.observation) is CountView
        assert result.observation.model_dump() == {"n": 4}
        assert result.reward == 3.0
        # A dict still works on a typed env: it is sent as is.
        assert (await env.step({"by": 1})).observation.n == 5
    finally:
        await env.close()


async def test_decodes_like_openenvs_own_client(serve_app) -> None:
    url = serve_app(count_app())
    actions = [{"by": 0}, {"by": 2}, {"by": 1, "truncate": True}]
    theirs = GenericEnvClient(base_url=url)
    ours = RemoteEnv(url)
    try:
        their_reset = await theirs.reset(seed=1)
        our_obs, _ = await ours.reset(seed=1)
        assert our_obs.model_dump() == {
            k: v for k, v in their_reset.observation.items() if k != "metadata"
        }
        for action in actions:
            t = await theirs.step(action)
            o = await ours.step(action)
            assert o.observation.model_dump() == {k: v for k, v in t.observation.items() if k != "metadata"}
            assert o.reward == (t.reward or 0.0)
            assert o.done == t.done
            assert o.info == (t.metadata or {})
    finally:
        await ours.close()
        await theirs.close()


async def test_http_routes_health_metadata_schema(serve_app) -> None:
    url = serve_app(count_app())
    async with RemoteEnv(url) as env:
        assert await env.health() == {"status": "healthy"}
        assert env.name == url
        meta = await env.metadata()
        assert meta.name == "CountEnv" and meta.version == "1.0.0"
        assert env.name == "CountEnv"  # errors now name the env
        schema = await env.schema()
        assert set(schema) >= {"action", "observation", "state"}
        assert set(schema["action"]["properties"]) >= {"by", "fail", "sleep_s"}
        assert "n" in schema["observation"]["properties"]
        assert not env.is_connected  # HTTP routes open no session


# --- errors --------------------------------------------------------------------------------------


async def test_bad_action_is_validation_failed_and_session_survives(serve_app) -> None:
    url = serve_app(count_app())
    async with RemoteEnv(url) as env:
        await env.reset(seed=1)
        with pytest.raises(ValidationFailedError) as caught:
            await env.step({"by": "three"})
        err = caught.value
        assert isinstance(err, InvalidActionError)  # catchable as the env-level error too
        assert err.code == "VALIDATION_ERROR"
        assert any("by" in [str(p) for p in e.get("loc", ())] for e in err.errors), err.errors
        assert err.url == url and err.session_id == env.session_address
        assert url in str(err)
        # Same session: the counter continues from 1.
        assert (await env.step({"by": 1})).observation.n == 2


async def test_env_exception_is_remote_execution_error_and_session_survives(serve_app) -> None:
    url = serve_app(count_app())
    async with RemoteEnv(url) as env:
        await env.reset(seed=3)
        with pytest.raises(RemoteExecutionError, match="boom: the env failed on purpose") as caught:
            await env.step({"by": 1, "fail": True})
        assert caught.value.code == "EXECUTION_ERROR"
        assert (await env.step({"by": 1})).observation.n == 4
        assert (await env.state()).step_count == 1


async def test_capacity_reached_then_retry_after_a_slot_frees(serve_app) -> None:
    url = serve_app(count_app(max_sessions=1))
    holder, refused = RemoteEnv(url), RemoteEnv(url)
    try:
        await holder.reset(seed=1)
        with pytest.raises(CapacityReachedError) as caught:
            await refused.reset()
        err = caught.value
        assert (err.active_sessions, err.max_sessions) == (1, 1)
        assert not refused.is_connected  # the server closes a refused session
        assert (await holder.step({"by": 1})).observation.n == 2  # the holder is unaffected

        await holder.close()
        # The server frees the slot when it sees the close; retry a bounded number of times.
        deadline = time.monotonic() + 5.0
        while True:
            try:
                obs, _ = await refused.reset(seed=4)
                break
            except CapacityReachedError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert obs.n == 4
    finally:
        await holder.close()
        await refused.close()


async def test_server_gone_mid_session_then_reset_reconnects() -> None:
    port = _free_port()
    env = RemoteEnv(f"http://127.0.0.1:{port}", message_timeout=10.0)
    try:
        server = _thread_server(count_app(), port)
        await asyncio.to_thread(server.__enter__)
        await env.reset(seed=1)
        assert (await env.step({"by": 1})).observation.n == 2
        # Stop it off the loop: uvicorn's shutdown waits for our side of the close handshake.
        await asyncio.to_thread(server.__exit__, None, None, None)
        with pytest.raises(ConnectionClosedError, match=r"close code 10\d\d") as caught:
            await env.step({"by": 1})
        assert "call reset()" in str(caught.value)
        with pytest.raises(ConnectionClosedError, match="the session ended .*call reset"):
            await env.step({"by": 1})
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            await env.reset()  # nobody listens now
        server = _thread_server(count_app(), port)
        await asyncio.to_thread(server.__enter__)
        try:
            obs, _ = await env.reset(seed=3)  # a fresh session on the restarted server
            assert obs.n == 3
            assert (await env.step({"by": 1})).observation.n == 4
        finally:
            await env.close()
            await asyncio.to_thread(server.__exit__, None, None, None)
    finally:
        await env.close()


async def test_message_timeout_names_the_deadline_and_drops_the_session(serve_app) -> None:
    url = serve_app(count_app())
    async with RemoteEnv(url, message_timeout=0.3) as env:
        await env.reset(seed=1)
        started = time.monotonic()
        with pytest.raises(EnvTimeoutError, match=r"message_timeout \(0.3s\).*step reply") as caught:
            await env.step({"by": 1, "sleep_s": 0.8})
        assert time.monotonic() - started < 0.75
        assert isinstance(caught.value, TimeoutError)
        assert not env.is_connected
        with pytest.raises(ConnectionClosedError, match="no step reply within message_timeout"):
            await env.step({"by": 1})
        obs, _ = await env.reset(seed=2)  # reconnects
        assert obs.n == 2 and env.is_connected


async def test_outer_cancellation_drops_the_session_instead_of_desynchronising(serve_app) -> None:
    url = serve_app(count_app())
    async with RemoteEnv(url) as env:
        await env.reset(seed=0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(env.step({"by": 1, "sleep_s": 0.5}), timeout=0.1)
        assert not env.is_connected
        obs, _ = await env.reset(seed=1)
        # Had the socket been kept, this would read the late reply of the cancelled step.
        assert (await env.step({"by": 2})).observation.n == 3


# --- MCP ------------------------------------------------------------------------------------------


async def test_mcp_tools_over_http_and_over_the_session(serve_app) -> None:
    url = serve_app(create_app(EchoEnv, CallToolAction, CallToolObservation, env_name="echo_env", max_concurrent_envs=4))
    async with RemoteEnv(url) as env:
        over_http = await env.list_tools()
        assert not env.is_connected
        assert [t.name for t in over_http] == ["echo_message"]
        assert over_http[0].description == "Echo the message back."
        assert over_http[0].input_schema["required"] == ["message"]
        result = await env.call_tool("echo_message", {"message": "hi"})
        assert result["data"] == "hi" and result["is_error"] is False

        _, info = await env.reset()
        assert info["status"] == "ready"
        over_ws = await env.list_tools()
        assert env.is_connected and over_ws == over_http
        assert (await env.call_tool("echo_message", {"message": "ws"}))["data"] == "ws"
        # MCP-style actions through plain step() work too.
        step = await env.step({"type": "call_tool", "tool_name": "echo_message", "arguments": {"message": "s"}})
        assert step.observation.result["data"] == "s"
        with pytest.raises(RemoteExecutionError, match="nope"):
            await env.call_tool("nope", {})
        assert (await env.call_tool("echo_message", {"message": "still"}))["data"] == "still"


async def test_mcp_on_a_plain_env_says_it_is_unsupported(serve_app) -> None:
    url = serve_app(count_app())
    async with RemoteEnv(url) as env:
        with pytest.raises(RemoteExecutionError, match="does not support MCP"):
            await env.list_tools()


# --- many sessions ------------------------------------------------------------------------------


async def test_two_hundred_sessions_in_one_loop_stay_isolated(serve_app) -> None:
    url = serve_app(count_app(max_sessions=256))
    envs = [RemoteEnv(url) for _ in range(200)]

    async def episode(i: int, env: RemoteEnv) -> list[int]:
        await env.reset(seed=i % 3, options={"episode_id": f"e{i}"})
        seen = [(await env.step({"by": 1})).observation.n for _ in range(2)]
        state = await env.state()
        assert state.episode_id == f"e{i}"
        return seen

    try:
        results = await asyncio.wait_for(asyncio.gather(*(episode(i, e) for i, e in enumerate(envs))), 60)
    finally:
        await asyncio.gather(*(e.close() for e in envs))
    assert results == [[i % 3 + 1, i % 3 + 2] for i in range(200)]


async def test_concurrent_calls_on_one_env_never_interleave(serve_app) -> None:
    url = serve_app(count_app())
    async with RemoteEnv(url) as env:
        await env.reset(seed=0)
        results = await asyncio.gather(*(env.step({"by": 0}) for _ in range(30)), env.state())
        assert [r.observation.n for r in results[:-1]] == [0] * 30
        assert results[-1].step_count == 30


def test_sync_view_runs_an_episode(serve_app) -> None:
    url = serve_app(count_app())
    with RemoteEnv(url, observation_type=CountView).sync() as env:
        obs, _ = env.reset(seed=1)
        assert obs == CountView(n=1)
        assert env.step({"by": 4}).terminated
        assert env.state().step_count == 1


# --- the env `openenv init` generates --------------------------------------------------------------

TEMPLATE = "fe_client_tpl_env"


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run the real `openenv init` CLI once; skip (with the reason) if it cannot run here."""
    root = tmp_path_factory.mktemp("openenv_init")
    cli = Path(sys.executable).with_name("openenv")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "openenv.cli"]
    try:
        result = subprocess.run(
            [*command, "init", TEMPLATE], cwd=root, capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"`openenv init` could not run: {e}")
    if not (root / TEMPLATE / "server" / "app.py").exists():
        pytest.skip(
            "`openenv init` did not generate the template (its CLI imports typer, rich, tomli, "
            f"tomli-w, openai, huggingface_hub): {result.stderr[-800:]}"
        )
    return root


@pytest.fixture
def template_app(template_dir: Path) -> Iterator[Any]:
    sys.path.insert(0, str(template_dir))
    try:
        yield importlib.import_module(f"{TEMPLATE}.server.app").app
    finally:
        sys.path.remove(str(template_dir))


@pytest.mark.slow
async def test_openenv_init_template_episode_and_its_capacity_of_one(serve_app, template_app) -> None:
    url = serve_app(template_app)
    async with RemoteEnv(url) as env, RemoteEnv(url) as second:
        obs, _ = await env.reset(options={"episode_id": "tpl-1"})
        assert obs.echoed_message.endswith("environment ready!")
        result = await env.step({"message": "hello"})
        assert (result.observation.echoed_message, result.observation.message_length) == ("hello", 5)
        assert result.reward == pytest.approx(0.5)
        assert result.info == {"original_message": "hello", "step": 1}
        assert not result.done
        assert (await env.state()).episode_id == "tpl-1"
        with pytest.raises(ValidationFailedError, match="VALIDATION_ERROR"):
            await env.step({"text": "wrong field"})
        # The template serves max_concurrent_envs=1.
        with pytest.raises(CapacityReachedError):
            await second.reset()
        meta = await env.metadata()
        assert meta.name == "FeClientTplEnvironment", meta


@pytest.mark.slow
async def test_server_process_killed_is_connection_closed_1006(template_dir: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{TEMPLATE}.server.app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        cwd=template_dir,
        env={**os.environ, "PYTHONPATH": str(template_dir)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(_wait_healthy, url, lambda: proc.poll() is None, 60.0)
        async with RemoteEnv(url, message_timeout=10.0) as env:
            await env.reset()
            assert (await env.step({"message": "abc"})).observation.message_length == 3
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            started = time.monotonic()
            with pytest.raises(ConnectionClosedError, match="close code 1006.*process died") as caught:
                await env.step({"message": "after the crash"})
            assert time.monotonic() - started < 5.0
            assert f"url={url}" in str(caught.value)
            with pytest.raises(ConnectError, match="Is the server running"):
                await env.reset()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_close_during_a_request_ends_it_at_once(serve_app) -> None:
    url = serve_app(count_app())
    env = RemoteEnv(url, message_timeout=None)
    await env.reset(seed=0)
    slow = asyncio.ensure_future(env.step({"by": 1, "sleep_s": 0.6}))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await env.close()
    with pytest.raises(ConnectionClosedError, match="close\\(\\) was called while the step request was in flight"):
        await slow
    assert time.monotonic() - started < 0.4
