"""RemoteEnv against OUR server (``forge_env.server.create_app``): the full round trip.

An AsyncEnv defined here, served on a real loopback port, driven through RemoteEnv: what the
env returns locally must come back identically through the wire (truncated included).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, ClassVar

import pytest

from forge_env import (
    Action,
    AsyncEnv,
    CapacityReachedError,
    ConnectionClosedError,
    EnvMetadata,
    InvalidActionError,
    Observation,
    RemoteExecutionError,
    ResetResult,
    SessionError,
    State,
    StepResult,
    ToolSpec,
    ValidationFailedError,
)
from forge_env.client import RemoteEnv

server = pytest.importorskip("forge_env.server", reason="forge_env.server is not written yet")
create_app = server.create_app


class Guess(Action):
    guess: int
    wait_s: float = 0.0


class Hint(Observation):
    hint: str
    guesses: int


class GuessState(State):
    low: int = 0
    high: int = 100


class GuessNumber(AsyncEnv[Hint, Guess]):
    """Guess the hidden number in 1..100; the seed picks it. At most 4 guesses."""

    action_type = Guess
    observation_type = Hint
    state_type = GuessState
    metadata: ClassVar[EnvMetadata] = EnvMetadata(name="guess_number", description="Guess 1..100", version="0.1")

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult[Hint]:
        self.target = (seed or 0) % 100 + 1
        self.guesses = 0
        self.low, self.high = 1, 100
        return ResetResult(Hint(hint="guess a number in 1..100", guesses=0), {"options": options or {}})

    async def step(self, action: Guess) -> StepResult[Hint]:
        if action.guess == 0:
            raise RuntimeError("0 is unlucky: the env raised on purpose")
        if action.guess < 0:  # a domain error the env reports as an invalid action
            raise InvalidActionError("guesses are positive", errors=[{"loc": ["guess"], "msg": "negative"}])
        if action.wait_s:
            await asyncio.sleep(action.wait_s)
        self.guesses += 1
        if action.guess == self.target:
            return StepResult(Hint(hint="correct", guesses=self.guesses), 1.0, True, False, {"target": self.target})
        if action.guess < self.target:
            self.low = max(self.low, action.guess + 1)
            hint = "higher"
        else:
            self.high = min(self.high, action.guess - 1)
            hint = "lower"
        out_of_guesses = self.guesses >= 4
        return StepResult(Hint(hint=hint, guesses=self.guesses), 0.0, False, out_of_guesses, {})

    async def state(self) -> GuessState:
        return GuessState(low=self.low, high=self.high)

    async def list_tools(self) -> list[ToolSpec]:
        return [ToolSpec(name="bounds", description="The interval still possible")]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        if name != "bounds":
            raise KeyError(f"no tool {name!r}")
        return {"low": getattr(self, "low", 1), "high": getattr(self, "high", 100)}


async def test_typed_round_trip_with_truncation_state_and_info(serve_app) -> None:
    url = serve_app(create_app(GuessNumber, max_sessions=8))
    async with RemoteEnv(url, action_type=Guess, observation_type=Hint, state_type=GuessState) as env:
        obs, info = await env.reset(seed=41, options={"episode_id": "g1"})  # target 42
        assert obs == Hint(hint="guess a number in 1..100", guesses=0)
        assert info == {"options": {"episode_id": "g1"}}
        assert await env.step(Guess(guess=50)) == (Hint(hint="lower", guesses=1), 0.0, False, False, {})
        assert (await env.step(Guess(guess=40))).observation.hint == "higher"
        state = await env.state()
        assert type(state) is GuessState and (state.low, state.high) == (41, 49)
        assert state.episode_id == "g1" and state.step_count == 2
        assert await env.step(Guess(guess=42)) == (Hint(hint="correct", guesses=3), 1.0, True, False, {"target": 42})

        await env.reset(seed=0)  # target 1; four wrong guesses run out the episode
        for value in (50, 25, 12):
            assert not (await env.step(Guess(guess=value))).done
        last = await env.step({"guess": 6})
        assert (last.terminated, last.truncated, last.done) == (False, True, True)
        assert last.info == {"truncated": True}


async def test_http_routes_and_tools(serve_app) -> None:
    url = serve_app(create_app(GuessNumber, max_sessions=8))
    async with RemoteEnv(url) as env:
        assert (await env.health())["status"] == "healthy"
        meta = await env.metadata()
        assert (meta.name, meta.description, meta.version) == ("guess_number", "Guess 1..100", "0.1")
        schema = await env.schema()
        assert schema["action"]["required"] == ["guess"]
        assert set(schema["state"]["properties"]) >= {"low", "high", "episode_id", "step_count"}

        assert await env.list_tools() == [ToolSpec(name="bounds", description="The interval still possible")]
        assert await env.call_tool("bounds", {}) == {"low": 1, "high": 100}  # fresh env over HTTP
        await env.reset(seed=41)
        await env.step({"guess": 50})
        assert await env.call_tool("bounds", {}) == {"low": 1, "high": 49}  # the session's env over /ws
        with pytest.raises(ValidationFailedError, match="nope"):
            await env.call_tool("nope", {})
        assert env.is_connected


async def test_errors_map_to_exceptions_and_the_session_survives(serve_app) -> None:
    url = serve_app(create_app(GuessNumber, max_sessions=8, step_timeout=0.3))
    async with RemoteEnv(url, observation_type=Hint) as env:
        await env.reset(seed=41)
        with pytest.raises(ValidationFailedError) as bad_field:
            await env.step({"guess": "fifty"})
        assert any(e.get("loc", [None])[-1] == "guess" for e in bad_field.value.errors)
        with pytest.raises(ValidationFailedError, match="guesses are positive"):
            await env.step({"guess": -1})
        with pytest.raises(RemoteExecutionError, match="0 is unlucky"):
            await env.step({"guess": 0})
        started = time.monotonic()
        with pytest.raises(RemoteExecutionError, match="timed out after 0.3s"):
            await env.step({"guess": 1, "wait_s": 2.0})
        assert time.monotonic() - started < 1.5
        assert (await env.step({"guess": 42})).terminated  # same session, same target
        assert (await env.state()).step_count == 1


async def test_capacity_and_idle_eviction(serve_app) -> None:
    url = serve_app(create_app(GuessNumber, max_sessions=1, session_idle_timeout=0.5))
    first, second = RemoteEnv(url), RemoteEnv(url)
    try:
        await first.reset(seed=1)
        with pytest.raises(CapacityReachedError) as caught:
            await second.reset()
        assert (caught.value.active_sessions, caught.value.max_sessions) == (1, 1)
        # The idle first session is evicted by the server; its next step says so.
        await asyncio.sleep(1.2)
        with pytest.raises((SessionError, ConnectionClosedError)):
            await first.step({"guess": 2})
        assert not first.is_connected
        obs, _ = await second.reset(seed=2)  # the slot is free now
        assert obs.guesses == 0
    finally:
        await first.close()
        await second.close()


async def test_reset_after_the_server_reaped_the_idle_session_reconnects(serve_app) -> None:
    url = serve_app(create_app(GuessNumber, max_sessions=4, session_idle_timeout=0.3))
    async with RemoteEnv(url, observation_type=Hint) as env:
        await env.reset(seed=1)
        first_session = env.session_address
        await asyncio.sleep(0.9)  # the server evicts the session and closes the socket
        obs, _ = await env.reset(seed=5)  # no error: a fresh session
        assert obs.guesses == 0 and env.session_address != first_session
        assert (await env.step({"guess": 6})).terminated


@pytest.mark.slow
async def test_256_sessions_in_one_loop(serve_app) -> None:
    url = serve_app(create_app(GuessNumber, max_sessions=256))
    envs = [RemoteEnv(url, observation_type=Hint) for _ in range(256)]

    async def play(i: int, env: RemoteEnv) -> str:
        await env.reset(seed=i)
        result = await env.step({"guess": i % 100 + 1})
        return result.observation.hint

    try:
        hints = await asyncio.wait_for(asyncio.gather(*(play(i, e) for i, e in enumerate(envs))), 60)
    finally:
        await asyncio.gather(*(e.close() for e in envs))
    assert hints == ["correct"] * 256
