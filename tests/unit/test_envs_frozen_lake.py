"""frozen_lake: gymnasium FrozenLake-v1 through from_gymnasium, with its own models."""

from __future__ import annotations

import pytest

from envs.frozen_lake import ACTION_NAMES, FrozenLakeAction, FrozenLakeEnv, FrozenLakeObservation
from forge_env import InvalidActionError

WINNING_PATH = ["down", "down", "right", "right", "down", "right"]


async def test_reset_text_and_winning_path():
    env = FrozenLakeEnv()
    obs, info = await env.reset(seed=0)
    assert isinstance(obs, FrozenLakeObservation)
    assert obs.text.splitlines() == [
        "SFFF", "FHFH", "FFFH", "HFFG",
        "You are at row 0, column 0 (counting from 0, row 0 at the top).",
        "Legal actions: left, down, right, up.",
    ]
    assert obs.legal_actions == list(ACTION_NAMES) and obs.raw == 0 and info == {"prob": 1}
    rewards = []
    for move in WINNING_PATH:
        result = await env.step(FrozenLakeAction(action=move))
        rewards.append(result.reward)
    assert rewards == [0.0] * 5 + [1.0]
    assert result.terminated and not result.truncated and result.observation.raw == 15
    assert result.observation.text.startswith("Last move: right.")


async def test_hole_terminates_with_zero_and_step_limit_truncates():
    env = FrozenLakeEnv()
    await env.reset(seed=0)
    await env.step({"action": "down"})
    result = await env.step({"action": "right"})  # (1,1) is a hole
    assert (result.observation.raw, result.reward, result.terminated) == (5, 0.0, True)

    env = FrozenLakeEnv(max_episode_steps=3)
    await env.reset(seed=0)
    results = [await env.step({"action": "left"}) for _ in range(3)]
    assert [r.truncated for r in results] == [False, False, True]
    assert not any(r.terminated for r in results)


async def test_names_numbers_and_illegal_actions():
    env = FrozenLakeEnv()
    await env.reset(seed=0)
    assert (await env.step({"action": 2})).observation.raw == 1  # right
    assert (await env.step({"action": "Down"})).observation.raw == 5  # any case; (1,1) is a hole
    env = FrozenLakeEnv()
    await env.reset(seed=0)
    result = await env.step({"action": "north"})
    assert "unknown action 'north'" in result.observation.error and result.observation.raw == 0
    assert not result.done and result.reward == 0.0
    with pytest.raises(InvalidActionError):
        await env.step({"move": "left"})


async def test_slippery_map_is_reproducible_by_seed():
    async def play(seed):
        env = FrozenLakeEnv(is_slippery=True)
        await env.reset(seed=seed)
        trace = []
        for move in ["right", "down"] * 10:
            result = await env.step({"action": move})
            trace.append((result.observation.raw, result.reward, result.done))
            if result.done:
                break
        return trace

    traces = [await play(s) for s in range(8)]
    assert traces == [await play(s) for s in range(8)]
    assert len(set(map(tuple, traces))) > 1  # slipping really depends on the seed


def test_models_do_not_need_gymnasium():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['gymnasium'] = None\n"
        "from envs.frozen_lake import FrozenLakeAction, FrozenLakeObservation\n"
        "print(FrozenLakeAction(action='left').action)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "left", done.stderr
