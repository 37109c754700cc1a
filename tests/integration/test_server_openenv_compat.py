"""The real openenv==0.10.0 package against our server: its clients run full episodes and
its validator (`openenv validate --url`, run as the real CLI) passes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from forge_env import Action, AsyncEnv, EnvMetadata, Observation, ResetResult, State, StepResult, ToolSpec
from forge_env.server import create_app

pytestmark = pytest.mark.openenv

openenv = pytest.importorskip("openenv", reason="the openenv package is not installed")

from openenv.core.client_types import StepResult as OEStepResult  # noqa: E402
from openenv.core.env_client import EnvClient  # noqa: E402
from openenv.core.env_server.types import Action as OEAction  # noqa: E402
from openenv.core.env_server.types import State as OEState  # noqa: E402
from openenv.core.generic_client import GenericEnvClient  # noqa: E402
from openenv.core.mcp_client import MCPToolClient  # noqa: E402

CLOSES: list[int] = []
_lock = threading.Lock()


class Guess(Action):
    number: int


class Feedback(Observation):
    hint: str
    target_hint: int | None = None


class GuessState(State):
    guesses: int = 0


class GuessNumber(AsyncEnv[Feedback, Guess]):
    """Guess the number the seed picked (0-9)."""

    action_type = Guess
    observation_type = Feedback
    state_type = GuessState
    metadata = EnvMetadata(name="guess_number", description="Guess the number the seed picked (0-9).", version="0.1.0")

    def __init__(self) -> None:
        self.target = 0
        self.guesses = 0
        self.episode_id: str | None = None

    async def reset(self, *, seed=None, options=None):
        self.target, self.guesses = (seed or 0) % 10, 0
        self.episode_id = (options or {}).get("episode_id")
        return ResetResult(Feedback(hint="guess 0-9"), {})

    async def step(self, action: Guess):
        self.guesses += 1
        if action.number == self.target:
            return StepResult(Feedback(hint="correct"), 1.0, True, False, {"guesses": self.guesses})
        hint = "higher" if action.number < self.target else "lower"
        return StepResult(Feedback(hint=hint), 0.0, False, self.guesses >= 5, {})

    async def state(self) -> GuessState:
        return GuessState(episode_id=self.episode_id, step_count=self.guesses, guesses=self.guesses)

    async def list_tools(self) -> list[ToolSpec]:
        return [ToolSpec(name="peek", description="reveals the target")]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        return {"target": self.target}

    async def close(self) -> None:
        with _lock:
            CLOSES.append(1)


# An OpenEnv-style typed client: its actions carry OpenEnv's `metadata` field.
class OEGuess(OEAction):
    number: int


class GuessClient(EnvClient[OEGuess, dict, OEState]):
    def _step_payload(self, action: OEGuess) -> dict[str, Any]:
        return action.model_dump()  # {"number": n, "metadata": {}}

    def _parse_result(self, payload: dict[str, Any]) -> OEStepResult[dict]:
        return OEStepResult(observation=payload["observation"], reward=payload.get("reward"), done=payload["done"])

    def _parse_state(self, payload: dict[str, Any]) -> OEState:
        return OEState(**payload)


@pytest.fixture
def url(serve_app):
    CLOSES.clear()
    return serve_app(create_app(GuessNumber, max_sessions=4))


async def _closed_once(timeout_s: float = 10.0) -> None:
    """The server closed the session's env exactly once. It does so when it sees the client's
    disconnect, a moment after the client returns (later on a loaded machine): wait for it."""
    deadline = time.monotonic() + timeout_s
    while not CLOSES and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # a second close would land now
    assert CLOSES == [1]


def play(env: Any, seed: int) -> list[Any]:
    """Binary search with a sync GenericEnvClient; returns the step results."""
    env.reset(seed=seed, episode_id=f"ep-{seed}")
    low, high, results = 0, 9, []
    for _ in range(5):
        guess = (low + high) // 2
        r = env.step({"number": guess})
        results.append(r)
        hint = r.observation["hint"]
        if r.done:
            break
        low, high = (guess + 1, high) if hint == "higher" else (low, guess - 1)
    return results


async def test_generic_client_async_episode(url):
    async with GenericEnvClient(base_url=url) as env:
        r = await env.reset(seed=7, episode_id="abc")
        assert r.observation == {"hint": "guess 0-9", "target_hint": None}
        assert r.reward is None and r.done is False
        r = await env.step({"number": 3})
        assert (r.observation["hint"], r.reward, r.done) == ("higher", 0.0, False)
        r = await env.step({"number": 7})
        assert (r.observation["hint"], r.reward, r.done) == ("correct", 1.0, True)
        assert r.metadata == {"guesses": 2}
        state = await env.state()
        assert state == {"episode_id": "abc", "step_count": 2, "guesses": 2}
        with pytest.raises(RuntimeError, match="VALIDATION_ERROR"):
            await env.step({"number": "seven"})
        r = await env.step({"number": 7})  # the session survived the error
        assert r.done is True
    await _closed_once()


def test_generic_client_sync_episodes(url):
    with GenericEnvClient(base_url=url).sync() as env:
        for seed in (2, 5, 9):
            results = play(env, seed)
            assert results[-1].observation["hint"] == "correct"
            assert results[-1].reward == 1.0 and results[-1].done
            assert env.state()["step_count"] == len(results)


async def test_typed_client_sends_openenv_action_metadata(url):
    async with GuessClient(base_url=url) as env:
        await env.reset(seed=4)
        r = await env.step(OEGuess(number=4))
        assert r.observation["hint"] == "correct" and r.reward == 1.0 and r.done
        state = await env.state()
        assert isinstance(state, OEState) and state.step_count == 1


async def test_openenv_client_sees_capacity_error(serve_app):
    u = serve_app(create_app(GuessNumber, max_sessions=1))
    async with GenericEnvClient(base_url=u) as first:
        await first.reset(seed=1)
        second = GenericEnvClient(base_url=u)
        try:
            with pytest.raises(RuntimeError, match="CAPACITY_REACHED"):
                await second.reset(seed=1)
        finally:
            await second.close()
        assert (await first.step({"number": 1})).done


async def test_openenv_mcp_tool_client(url):
    """MCPToolClient: HTTP session create, WS attach by session_id, tools/call on it."""
    client = MCPToolClient(base_url=url)
    async with client:
        tools = await client.list_tools()
        assert [t.name for t in tools] == ["peek"]
        await client.reset(seed=6)  # over the attached WebSocket
        assert await client.call_tool("peek") == {"target": 6}  # same env as the WS
    await _closed_once()


def _openenv_cli() -> list[str]:
    exe = Path(sys.executable).with_name("openenv")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "openenv.cli"]


def test_openenv_validate_cli_passes(url):
    proc = subprocess.run(
        [*_openenv_cli(), "validate", "--url", url, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    if proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr:
        pytest.skip(f"the openenv CLI lacks a dependency: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is True
    assert report["standard_profile"] == "openenv-http/1.x"
    assert report["mode"] == "simulation"
    checks = {c["id"]: c["passed"] for c in report["criteria"]}
    assert checks == {
        "openapi_version_available": True,
        "health_endpoint": True,
        "metadata_endpoint": True,
        "schema_endpoint": True,
        "mcp_endpoint": True,
        "mode_endpoint_consistency": True,
    }
