"""``forge-env play`` driven by a script on its input, against real servers in this process."""

from __future__ import annotations

import io
from typing import Any, Optional

import pytest

from envs.guess_number import GuessNumberEnv, solve
from forge_env.cli._play import run_play
from forge_env.server import create_app


async def _solution(seed: int) -> list[tuple[int, str]]:
    """The binary-search guesses for ``seed`` and the feedback each gets (played in-process)."""
    env = GuessNumberEnv()
    try:
        obs, _ = await env.reset(seed=seed)
        moves = []
        for _ in range(10):
            action = solve(obs)
            result = await env.step(action)
            obs = result.observation
            moves.append((action.guess, obs.feedback))
            if result.done:
                return moves
    finally:
        await env.close()
    raise AssertionError("binary search did not finish in 10 guesses")


async def _seed_with_both_hints() -> tuple[int, list[tuple[int, str]]]:
    for seed in range(100):
        moves = await _solution(seed)
        hints = {feedback for _, feedback in moves}
        if {"higher", "lower", "correct"} <= hints:
            return seed, moves
    raise AssertionError("no seed in 0..99 needs both 'higher' and 'lower'")


async def test_play_guess_number_from_a_script(serve_app):
    url = serve_app(create_app(GuessNumberEnv))
    seed, moves = await _seed_with_both_hints()
    script = "".join(f"{guess}\n" for guess, _ in moves)
    script += "5\n"  # after the episode ended: refused locally, with the fix
    script += ":state\n:frobnicate\n:reset nine\n:quit\n"
    script += "7\n"  # never read: :quit ended the session
    out = io.StringIO()

    code = await run_play(url, seed=seed, input_stream=io.StringIO(script), output=out)

    text = out.getvalue()
    assert code == 0
    assert "forge-env play: guess_number at " + url in text
    assert 'a bare value for `guess`' in text
    assert f"== episode 1 (seed {seed}) ==" in text
    # Each scripted guess is echoed and answered with the hint the in-process game gives.
    for turn, (guess, feedback) in enumerate(moves, start=1):
        block = text.split(f"> {guess}\n", 1)[1]
        answer = block.splitlines()[0]
        if feedback == "correct":
            assert answer.startswith("Correct!"), answer
        else:
            assert f"the number is {feedback}" in answer, answer
        assert block.splitlines()[1].startswith(f"[turn {turn}] reward "), block
    last = len(moves)
    assert f"[turn {last}] reward 1  return 1  done True" in text
    assert f"== episode 1 over after {last} turn(s): return 1." in text
    assert "the episode is over: type :reset [SEED] to start another" in text
    assert f'"step_count": {last}' in text and '"won": true' in text
    assert "error: unknown command :frobnicate" in text
    assert "error: :reset takes an integer seed, got 'nine'" in text
    assert text.rstrip().endswith("bye")
    assert "> 7" not in text


async def test_play_resets_and_ends_at_eof(serve_app):
    url = serve_app(create_app(GuessNumberEnv))
    moves = await _solution(3)
    out = io.StringIO()
    script = ":reset 3\n" + "".join(f'{{"guess": {g}}}\n' for g, _ in moves)  # JSON actions
    assert await run_play(url, seed=None, input_stream=io.StringIO(script), output=out) == 0
    text = out.getvalue()
    assert "== episode 1 ==" in text and "== episode 2 (seed 3) ==" in text
    assert f"[turn {len(moves)}] reward 1  return 1  done True" in text
    assert text.rstrip().endswith("bye")  # EOF ends play like :quit


@pytest.mark.openenv
async def test_play_shows_server_errors_and_goes_on(serve_app):
    """Against OpenEnv's own server: a bad action gets its VALIDATION_ERROR printed."""
    from openenv.core.env_server.http_server import create_app as openenv_create_app
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State

    class AddAction(Action):
        by: int

    class TotalObservation(Observation):
        total: int = 0

    class AddEnv(Environment[AddAction, TotalObservation, State]):
        def __init__(self) -> None:
            super().__init__()
            self._state, self._total = State(step_count=0), 0

        def reset(self, seed: Optional[int] = None, episode_id: Optional[str] = None,
                  **kwargs: Any) -> TotalObservation:
            self._state, self._total = State(step_count=0), 0
            return TotalObservation(total=0, reward=0.0, done=False)

        def step(self, action: AddAction, timeout_s: Optional[float] = None,
                 **kwargs: Any) -> TotalObservation:
            self._state.step_count += 1
            self._total += action.by
            return TotalObservation(total=self._total, reward=float(action.by), done=False)

        @property
        def state(self) -> State:
            return self._state

    url = serve_app(openenv_create_app(AddEnv, AddAction, TotalObservation, env_name="add"))
    out = io.StringIO()
    script = "abc\n2\n3\n:tools\n:schema\n"
    assert await run_play(url, seed=1, input_stream=io.StringIO(script), output=out) == 0
    text = out.getvalue()
    assert "error from the server: VALIDATION_ERROR: Invalid message (by: Input should be a valid integer" in text
    # No text field: the observation is shown as pretty JSON.
    assert '"total": 2' in text and '"total": 5' in text
    assert "[turn 2] reward 3  return 5  done False" in text
    assert "error from the server:" in text.split("> :tools", 1)[1]  # OpenEnv env without MCP
    assert '"action": {' in text.split("> :schema", 1)[1]
