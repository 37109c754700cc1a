"""to_gymnasium: a real gymnasium.Env over an AsyncEnv, checked with gymnasium's own checker."""

from __future__ import annotations

import asyncio
import json
import warnings

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

from envs.echo import EchoEnv
from envs.frozen_lake import FrozenLakeEnv
from envs.guess_number import GuessNumberEnv
from forge_env import from_gymnasium, to_gymnasium
from forge_env.env._gymnasium import AsyncEnvAsGymnasium


def _check(env) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # check_env reports problems as warnings too
        warnings.filterwarnings("ignore", message=".*render.*")  # spec-less envs: no render check
        check_env(env)


def test_guess_number_passes_check_env():
    env = to_gymnasium(GuessNumberEnv(), render_mode="ansi")
    assert env.action_space == spaces.Discrete(16, start=1)
    assert isinstance(env.observation_space, spaces.Text)
    _check(env)
    obs, info = env.reset(seed=5)
    assert obs in env.observation_space and json.loads(obs)["feedback"] == "start"
    assert "integer from 1 to 16" in env.render()
    env.close()


def test_frozen_lake_passes_check_env_and_keeps_gymnasium_spaces():
    env = to_gymnasium(FrozenLakeEnv())
    assert env.action_space == spaces.Discrete(4)
    assert env.observation_space == spaces.Discrete(16)
    _check(env)
    obs, _ = env.reset(seed=0)
    assert obs == 0 and isinstance(obs, np.integer)
    obs, reward, terminated, truncated, _ = env.step(np.int64(1))  # down
    assert (obs, reward, terminated, truncated) == (4, 0.0, False, False)
    env.close()


def test_round_trip_matches_the_original_gymnasium_env():
    import gymnasium

    original = gymnasium.make("FrozenLake-v1", is_slippery=True)
    wrapped = to_gymnasium(from_gymnasium("FrozenLake-v1", is_slippery=True))
    _check(wrapped)
    original.reset(seed=11)
    wrapped.reset(seed=11)
    rng = np.random.default_rng(0)
    for _ in range(60):  # slippery: the same seed must give the same random transitions
        action = int(rng.integers(4))
        a = original.step(action)
        b = wrapped.step(action)
        assert a[:4] == b[:4]
        if a[2] or a[3]:
            original.reset(seed=int(rng.integers(1000)))
            wrapped.reset(seed=int(original.unwrapped.np_random_seed))
    wrapped.close()


def test_env_without_spaces_gets_json_text_spaces():
    env = to_gymnasium(EchoEnv())
    assert isinstance(env.action_space, spaces.Text) and isinstance(env.observation_space, spaces.Text)
    obs, _ = env.reset(seed=1)
    assert json.loads(obs) == {"echoed_message": "Echo environment ready!", "message_length": 0}
    obs, reward, terminated, truncated, info = env.step('{"message": "héllo"}')
    assert obs in env.observation_space  # non-ASCII text is escaped into printable JSON
    assert json.loads(obs)["echoed_message"] == "héllo"
    assert reward == pytest.approx(0.5) and not terminated and not truncated
    env.close()


def test_invalid_actions_are_observations_for_envs_that_answer_them():
    env = to_gymnasium(GuessNumberEnv(lo=1, hi=8, max_turns=3))
    env.reset(seed=0)
    obs, reward, terminated, _, _ = env.step(99)
    assert json.loads(obs)["feedback"] == "invalid" and reward == 0.0 and not terminated


async def test_calling_it_inside_a_running_loop_says_to_use_the_async_api():
    env = to_gymnasium(GuessNumberEnv())
    with pytest.raises(RuntimeError, match="await env.reset"):
        env.reset(seed=0)
    # The refused call did not leak a never-awaited coroutine or break the env.
    await asyncio.to_thread(env.reset, seed=0)
    await asyncio.to_thread(env.close)


def test_close_is_idempotent_and_a_closed_env_says_so():
    env = to_gymnasium(GuessNumberEnv())
    env.reset(seed=0)
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset(seed=0)


def test_render_modes():
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        to_gymnasium(GuessNumberEnv(), render_mode="rgb_array")
    env = to_gymnasium(GuessNumberEnv())
    env.reset(seed=0)
    assert env.render() is None
    assert isinstance(env, AsyncEnvAsGymnasium) and env.unwrapped is env
