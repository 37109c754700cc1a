"""from_gymnasium: any Discrete-action gymnasium env as a text AsyncEnv."""

from __future__ import annotations

import asyncio

import gymnasium
import pytest

from forge_env import EpisodeNotStartedError, InvalidActionError, from_gymnasium
from forge_env.env._gymnasium import GymAction, GymnasiumEnv, GymObservation


async def _play(env, seed, actions):
    obs, info = await env.reset(seed=seed)
    trace = [(obs.model_dump(), info)]
    for action in actions:
        result = await env.step({"action": action})
        trace.append((result.observation.model_dump(), result.reward, result.terminated, result.truncated))
        if result.done:
            break
    return trace


async def test_frozen_lake_by_id_text_names_and_reward():
    env = from_gymnasium("FrozenLake-v1", is_slippery=False)
    assert env.name == "FrozenLake-v1"
    obs, info = await env.reset(seed=0)
    assert isinstance(obs, GymObservation)
    assert obs.legal_actions == ["left", "down", "right", "up"]
    assert obs.text.splitlines()[:4] == ["SFFF", "FHFH", "FFFH", "HFFG"]  # ANSI codes stripped
    assert "\x1b" not in obs.text and "row 0, column 0" in obs.text
    rewards = []
    for move in ["down", "DOWN", 2, "right", " down ", "3"]:  # names, any case, ints, numeric strings
        result = await env.step({"action": move})
        rewards.append(result.reward)
    # down, down, right, right, down -> (3,2); "3" is up -> (2,2)
    assert result.observation.raw == 10 and rewards == [0.0] * 6
    for move in ["down", "right"]:
        result = await env.step(GymAction(action=move))
    assert (result.reward, result.terminated, result.truncated) == (1.0, True, False)
    with pytest.raises(EpisodeNotStartedError, match="reset"):
        await env.step({"action": "left"})
    await env.close()


async def test_illegal_actions_are_error_observations_and_change_nothing():
    env = from_gymnasium("FrozenLake-v1", is_slippery=False)
    await env.reset(seed=0)
    await env.step({"action": "down"})
    for bad, message in [("jump", "unknown action 'jump'"), (4, "out of range 0..3"), (-1, "out of range")]:
        result = await env.step({"action": bad})
        assert message in result.observation.error
        assert result.observation.text.startswith("Invalid action:")
        assert (result.observation.raw, result.reward, result.done) == (4, 0.0, False)
        assert result.info == {"invalid_action": True}
    # Not an action at all: the schema refuses it (the server answers VALIDATION_ERROR).
    for bad in [{"action": 1.5}, {"action": True}, {}, {"action": 1, "extra": 2}]:
        with pytest.raises(InvalidActionError):
            await env.step(bad)


async def test_step_before_reset_is_refused():
    env = from_gymnasium("FrozenLake-v1")
    with pytest.raises(EpisodeNotStartedError, match="reset"):
        await env.step({"action": 0})


async def test_taxi_names_description_and_seeded_reproducibility():
    env = from_gymnasium("Taxi-v4")
    actions = ["south", "north", "east", "west", "pickup", "dropoff"] * 3
    first = await _play(env, 123, actions)
    again = await _play(env, 123, actions)
    other = await _play(env, 124, actions)
    assert first == again
    assert first[0] != other[0]  # a different seed places taxi/passenger elsewhere
    obs = first[0][0]
    assert obs["legal_actions"] == ["south", "north", "east", "west", "pickup", "dropoff"]
    assert "Taxi at row" in obs["text"] and "Destination:" in obs["text"] and "+---------+" in obs["text"]
    # Taxi's reward is passed through: -1 per move, -10 for an illegal pickup/dropoff.
    assert {step[1] for step in first[1:]} <= {-1.0, -10.0, 20.0}
    assert -10.0 in {step[1] for step in first[1:]}
    # info (with numpy arrays) is JSON-safe.
    assert isinstance(first[0][1]["action_mask"], list)


async def test_blackjack_has_no_ansi_render_and_gets_a_readable_description():
    env = from_gymnasium("Blackjack-v1")
    obs, _ = await env.reset(seed=3)
    assert obs.legal_actions == ["stick", "hit"]
    player, dealer, ace = obs.raw
    assert obs.text.startswith(f"Your hand totals {player}")
    result = await env.step({"action": "stick"})
    assert result.terminated and result.reward in (-1.0, 0.0, 1.0)
    # Same seed, same game.
    outcomes = set()
    for _ in range(3):
        obs2, _ = await env.reset(seed=3)
        outcomes.add((tuple(obs2.raw), (await env.step({"action": "stick"})).reward))
    assert outcomes == {(tuple(obs.raw), result.reward)}


async def test_instance_and_callable_sources_and_custom_names():
    instance = gymnasium.make("CliffWalking-v1")
    env = from_gymnasium(instance, action_names=["N", "E", "S", "W"], name="cliff", describe=lambda o: f"cell {o}")
    obs, _ = await env.reset(seed=0)
    assert env.name == "cliff" and obs.legal_actions == ["N", "E", "S", "W"]
    assert obs.text == "cell 36\nLegal actions: N, E, S, W."  # no ANSI render: repr description
    assert (await env.step({"action": "n"})).observation.raw == 24

    env2 = from_gymnasium(lambda **kw: gymnasium.make("FrozenLake-v1", **kw), map_name="8x8")
    assert env2.observation_space.n == 64
    with pytest.raises(TypeError, match="id or a callable"):
        from_gymnasium(instance, is_slippery=False)
    with pytest.raises(TypeError, match="Discrete action spaces"):
        from_gymnasium("MountainCarContinuous-v0")
    with pytest.raises(ValueError, match="4 distinct names"):
        from_gymnasium("FrozenLake-v1", action_names=["a", "b"])
    with pytest.raises(ValueError, match="render='ansi'"):
        from_gymnasium("Blackjack-v1", render="ansi")


async def test_repr_render_and_unknown_env_names_use_numbers():
    env = from_gymnasium("FrozenLake-v1", render="repr", action_names=None)
    obs, _ = await env.reset(seed=0)
    assert obs.text.startswith("You are at row 0")  # no map without the ANSI render
    acrobot = from_gymnasium("Acrobot-v1")
    obs, _ = await acrobot.reset(seed=0)
    assert obs.legal_actions == ["0", "1", "2"] and obs.text.startswith("Observation: [")
    assert (await acrobot.step({"action": "2"})).observation.error is None


async def test_run_in_thread_gives_the_same_episode():
    inline = from_gymnasium("FrozenLake-v1", is_slippery=True)
    threaded = from_gymnasium("FrozenLake-v1", is_slippery=True, run_in_thread=True)
    actions = [0, 1, 2, 3] * 5
    assert await _play(inline, 9, actions) == await _play(threaded, 9, actions)


async def test_sessions_are_independent():
    a, b = from_gymnasium("FrozenLake-v1"), from_gymnasium("FrozenLake-v1")
    await asyncio.gather(a.reset(seed=0), b.reset(seed=0))
    await a.step({"action": "down"})
    assert (await a.state()).step_count == 1 and (await b.state()).step_count == 0
    assert GymnasiumEnv.supports_concurrent_sessions
