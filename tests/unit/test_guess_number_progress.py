"""guess_number's optional progress reward: the share of the interval a guess rules out."""

from __future__ import annotations

import pytest

from envs.guess_number.env import GuessNumberEnv, solve


def _play(env, guesses):  # type: ignore[no-untyped-def]
    rewards = []
    for g in guesses:
        _, reward, terminated, _, _ = env.step({"guess": g})
        rewards.append(reward)
        if terminated:
            break
    return rewards


def test_off_by_default_only_the_win_pays() -> None:
    env = GuessNumberEnv().sync()
    obs, _ = env.reset(seed=1)
    total = 0.0
    while True:
        obs, reward, terminated, _, _ = env.step(solve(obs))
        total += reward
        if terminated:
            break
    assert total == 1.0


def test_the_middle_earns_half_an_edge_little_outside_nothing() -> None:
    env = GuessNumberEnv(progress_reward=1.0).sync()
    env.reset(seed=1)                     # target 5 (random.Random(1).randint(1, 16))
    # 8 of 1..16: rules out 8 of 16 for sure -> 0.5; then 1..7 remains.
    # 1 of 1..7: an edge, rules out 1 for sure -> 1/7; then 2..7 remains.
    # 12 is outside 2..7 -> 0.
    assert _play(env, [8, 1, 12]) == pytest.approx([0.5, 1 / 7, 0.0])


def test_it_does_not_depend_on_the_hidden_number() -> None:
    rewards = set()
    for seed in range(20):
        env = GuessNumberEnv(progress_reward=0.5).sync()
        env.reset(seed=seed)
        _, reward, terminated, _, _ = env.step({"guess": 4})   # 1..16: worst case 12 left
        rewards.add(round(reward, 9) if not terminated else round(reward - 1.0, 9))
    assert rewards == {round(0.5 * (1 - 12 / 16), 9)}


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValueError, match="progress_reward"):
        GuessNumberEnv(progress_reward=-1.0)
    env = GuessNumberEnv().sync()
    with pytest.raises(ValueError, match="progress_reward"):
        env.reset(options={"progress_reward": "x"})
