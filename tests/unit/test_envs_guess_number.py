"""guess_number: rules, reward math, invalid guesses, seeds, and the scripted solver."""

from __future__ import annotations

import math
import random

import pytest

from envs.guess_number import GuessAction, GuessNumberEnv, max_guesses_needed, solve
from forge_env import EpisodeNotStartedError


def _target(seed: int, lo: int = 1, hi: int = 16) -> int:
    return random.Random(seed).randint(lo, hi)  # the documented rule


async def _reveal(env: GuessNumberEnv, obs) -> int:
    """Play the episode out with the solver; the final info names the number."""
    for _ in range(64):
        result = await env.step(solve(obs))
        obs = result.observation
        if result.done:
            return result.info["target"]
    raise AssertionError("episode did not end")


async def test_reset_observation_and_state():
    env = GuessNumberEnv()
    obs, info = await env.reset(seed=0, options={"episode_id": "ep-1"})
    assert (obs.feedback, obs.turns_left, obs.lo, obs.hi, obs.last_guess) == ("start", 6, 1, 16, None)
    assert "from 1 to 16" in obs.text and info == {}
    state = await env.state()
    assert state.episode_id == "ep-1" and state.step_count == 0 and not state.done
    assert "target" not in state.model_dump()  # the answer is not leaked


async def test_higher_lower_narrow_the_interval_and_turns_count_down():
    env = GuessNumberEnv()
    await env.reset(seed=1)
    target = _target(1)
    low_guess, high_guess = 1 if target > 1 else None, 16 if target < 16 else None
    if low_guess is not None:
        result = await env.step({"guess": low_guess})
        assert result.observation.feedback == "higher" and result.observation.lo == 2
        assert result.reward == 0.0 and not result.done
    if high_guess is not None:
        result = await env.step({"guess": high_guess})
        assert result.observation.feedback == "lower" and result.observation.hi == 15
    assert result.observation.turns_left == 6 - (low_guess is not None) - (high_guess is not None)
    assert f"between {result.observation.lo} and {result.observation.hi}" in result.observation.text


@pytest.mark.parametrize("turn_cost, turn, expected", [(0.0, 1, 1.0), (0.0, 4, 1.0), (0.1, 1, 1.0),
                                                       (0.1, 3, 0.8), (0.25, 5, 0.0), (0.3, 6, 0.0)])
async def test_reward_is_one_minus_cost_per_earlier_turn(turn_cost, turn, expected):
    env = GuessNumberEnv(turn_cost=turn_cost)
    await env.reset(seed=42)
    target = _target(42)
    wrong = 1 if target != 1 else 2
    rewards = [(await env.step({"guess": wrong})).reward for _ in range(turn - 1)]
    result = await env.step(GuessAction(guess=target))
    assert rewards == [0.0] * (turn - 1)
    assert result.reward == pytest.approx(expected)
    assert result.terminated and not result.truncated
    assert result.observation.feedback == "correct" and result.info == {"target": target, "won": True}


async def test_wrong_until_out_of_turns_terminates_with_zero():
    for seed in range(20):
        env = GuessNumberEnv(max_turns=4)
        await env.reset(seed=seed)
        wrong = 1 if _target(seed) != 1 else 16
        total, results = 0.0, []
        for _ in range(4):
            results.append(await env.step({"guess": wrong}))
            total += results[-1].reward
        assert total == 0.0
        assert [r.terminated for r in results] == [False, False, False, True]
        assert not any(r.truncated for r in results)
        assert results[-1].observation.turns_left == 0
        assert f"The number was {_target(seed)}" in results[-1].observation.text
        with pytest.raises(EpisodeNotStartedError, match="over"):
            await env.step({"guess": 3})


@pytest.mark.parametrize(
    "action, message",
    [
        ({"guess": 0}, "outside the range 1..16"),
        ({"guess": 17}, "outside the range 1..16"),
        ({"guess": "seven"}, "valid integer"),
        ({"guess": 2.5}, "valid integer"),
        ({"guess": True}, "boolean"),
        ({}, "Field required"),
        ({"guess": 3, "extra": 1}, "Extra inputs"),
        ({"number": 3}, "Field required"),
    ],
)
async def test_invalid_guesses_are_observations_that_cost_a_turn(action, message):
    env = GuessNumberEnv()
    await env.reset(seed=0)
    result = await env.step(action)
    obs = result.observation
    assert obs.feedback == "invalid" and message in obs.error and message in obs.text
    assert (result.reward, result.terminated, obs.turns_left, obs.lo, obs.hi) == (0.0, False, 5, 1, 16)


async def test_parse_action_turns_malformed_input_into_an_invalid_guess():
    # The server validates with env.parse_action: a bad payload must not become a VALIDATION_ERROR.
    env = GuessNumberEnv()
    action = env.parse_action({"guess": "x"})
    assert isinstance(action, GuessAction)
    await env.reset(seed=0)
    assert (await env.step(action)).observation.feedback == "invalid"
    assert env.parse_action({"guess": "7"}).guess == 7  # integer strings are fine


async def test_step_before_reset_is_refused():
    with pytest.raises(EpisodeNotStartedError, match="reset"):
        await GuessNumberEnv().step({"guess": 1})


async def test_same_seed_same_episode_and_seedless_resets_continue_the_generator():
    async def play(env, seed):
        obs, _ = await env.reset(seed=seed)
        trace = [obs.model_dump()]
        for guess in (4, 9, 13, 2, 15, 8):
            result = await env.step({"guess": guess})
            trace.append((result.observation.model_dump(), result.reward, result.terminated))
            if result.done:
                break
        return trace

    env = GuessNumberEnv()
    assert await play(env, 7) == await play(GuessNumberEnv(), 7)
    for seed in range(30):
        obs, _ = await env.reset(seed=seed)
        assert await _reveal(env, obs) == _target(seed)
    a, b = GuessNumberEnv(), GuessNumberEnv()
    await a.reset(seed=3)
    await b.reset(seed=3)
    followups_a = [await _reveal(a, (await a.reset())[0]) for _ in range(10)]
    followups_b = [await _reveal(b, (await b.reset())[0]) for _ in range(10)]
    assert followups_a == followups_b and len(set(followups_a)) > 1


async def test_solver_always_wins_within_the_binary_search_bound():
    env = GuessNumberEnv()
    bound = max_guesses_needed(16)
    assert bound == 5 == math.ceil(math.log2(17))
    turns_used = []
    for seed in range(200):
        obs, _ = await env.reset(seed=seed)
        for turn in range(1, 7):
            result = await env.step(solve(obs))
            obs = result.observation
            if result.done:
                break
        assert result.terminated and result.reward == 1.0 and obs.feedback == "correct", seed
        turns_used.append(turn)
    assert max(turns_used) <= bound
    assert len(set(_target(s) for s in range(200))) == 16  # every number was exercised


async def test_reset_options_override_one_episode_and_are_checked():
    env = GuessNumberEnv()
    obs, _ = await env.reset(seed=0, options={"lo": 10, "hi": 20, "max_turns": 3})
    assert (obs.lo, obs.hi, obs.turns_left, obs.range_lo, obs.range_hi) == (10, 20, 3, 10, 20)
    assert await _reveal(env, obs) == _target(0, 10, 20)
    obs, _ = await env.reset(seed=0)
    assert (obs.lo, obs.hi, obs.turns_left) == (1, 16, 6)  # back to the constructor's settings
    with pytest.raises(ValueError, match="unknown reset options \\['hii'\\]"):
        await env.reset(options={"hii": 3})
    with pytest.raises(ValueError, match="hi must be greater than lo"):
        await env.reset(options={"lo": 5, "hi": 5})
    with pytest.raises(ValueError, match="max_turns must be at least 1"):
        GuessNumberEnv(max_turns=0)
    with pytest.raises(ValueError, match="turn_cost"):
        GuessNumberEnv(turn_cost=-0.1)


def test_spaces_for_gymnasium():
    from gymnasium import spaces

    env = GuessNumberEnv(lo=3, hi=10)
    assert env.action_space == spaces.Discrete(8, start=3)
    assert isinstance(env.observation_space, spaces.Text)
    assert env.action_from_space(env.action_space.sample()).guess in range(3, 11)
    assert GuessNumberEnv.supports_concurrent_sessions
