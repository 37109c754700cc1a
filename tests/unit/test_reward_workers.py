"""RewardWorkers: a user's reward function applied to finished trajectories, in this process.

Real functions from ``reward_fns.py`` (next to this file), loaded by spec like a user's."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

import reward_fns
from forge_env.reward import RewardConfig, RewardSpecError, RewardWorkers, length_penalty, load_reward_fn
from forge_env.rollout import Task, Trajectory, TrajectoryGroup, Turn

HERE = Path(__file__).resolve().parent


def _turn(index: int, start: int, end: int, reward: float) -> Turn:
    return Turn(index=index, completion_start=start, completion_end=end, text="x", finish_reason="stop",
                version=0, reward=reward)


def _group(seed: int, n: int = 4, *, turn_rewards: tuple[float, ...] = (0.5, 1.0),
           termination: str = "terminated") -> TrajectoryGroup:
    """``n`` trajectories of one task, each with one turn per env reward (10 completion tokens each)."""
    trajectories = []
    for i in range(n):
        turns, mask = [], [0] * 5
        for k, r in enumerate(turn_rewards):
            turns.append(_turn(k, len(mask), len(mask) + 10, r))
            mask += [1] * 10 + [0] * 3
        trajectories.append(Trajectory(env_name="echo", task=Task(seed=seed), token_ids=list(range(len(mask))),
                                       logprobs=[0.0] * len(mask), loss_mask=mask, prompt_len=5, turns=turns,
                                       termination=termination, group_index=i))  # type: ignore[arg-type]
    return TrajectoryGroup(task=Task(seed=seed), trajectories=trajectories)


async def _score(config: RewardConfig, *groups: TrajectoryGroup) -> dict[str, float]:
    async with RewardWorkers(config) as workers:
        for group in groups:
            await workers.score_group(group)
        return workers.metrics()


# --- applying scores ------------------------------------------------------------------------------


async def test_scores_are_added_to_the_last_turn_and_recorded_in_info() -> None:
    group = _group(seed=3)
    metrics = await _score(RewardConfig(fn="reward_fns:seed_score"), group)
    for t in group.trajectories:
        expected = 3 + 0.1 * t.group_index
        assert t.info["reward_fn"] == pytest.approx(expected)
        assert t.rewards == pytest.approx([0.5, 1.0 + expected])  # only the last turn changes
        assert t.total_reward == pytest.approx(1.5 + expected)
        assert "reward_fn_error" not in t.info
    assert metrics["reward_fn/scored"] == 4 and metrics["reward_fn/errors"] == 0
    assert metrics["reward_fn/timeouts"] == 0 and metrics["reward_fn/skipped"] == 0
    assert metrics["reward_fn/mean"] == pytest.approx(3.15)
    assert metrics["reward_fn/seconds_total"] >= 0.0


async def test_weight_scales_the_added_reward_not_the_recorded_score() -> None:
    group = _group(seed=2, n=2)
    await _score(RewardConfig(fn="reward_fns:seed_score", weight=-0.5), group)
    assert [t.info["reward_fn"] for t in group.trajectories] == pytest.approx([2.0, 2.1])
    assert [t.total_reward for t in group.trajectories] == pytest.approx([1.5 - 1.0, 1.5 - 1.05])


async def test_async_function_gives_the_same_scores() -> None:
    sync_group, async_group = _group(seed=5), _group(seed=5)
    await _score(RewardConfig(fn="reward_fns:seed_score"), sync_group)
    await _score(RewardConfig(fn="reward_fns:async_seed_score"), async_group)
    assert [t.rewards for t in async_group.trajectories] == [t.rewards for t in sync_group.trajectories]


async def test_kwargs_file_spec_and_a_callable_instance() -> None:
    by_path, by_module, judged = _group(seed=1, n=2), _group(seed=1, n=2), _group(seed=1, n=2)
    await _score(RewardConfig(fn=f"{HERE / 'reward_fns.py'}:scaled", kwargs={"factor": 2.0}), by_path)
    await _score(RewardConfig(fn="reward_fns:scaled", kwargs={"factor": 2.0}), by_module)
    await _score(RewardConfig(fn="reward_fns:judge"), judged)
    assert [t.info["reward_fn"] for t in by_path.trajectories] == pytest.approx([2.0, 2.2])
    assert [t.rewards for t in by_path.trajectories] == [t.rewards for t in by_module.trajectories]
    assert [t.info["reward_fn"] for t in judged.trajectories] == [0.5, 0.5]


async def test_scoring_a_group_twice_adds_the_reward_once() -> None:
    group = _group(seed=1, n=2)
    async with RewardWorkers(RewardConfig(fn="reward_fns:seed_score")) as workers:
        await workers.score_group(group)
        await workers.score_group(group)
        metrics = workers.metrics()
    assert [t.total_reward for t in group.trajectories] == pytest.approx([2.5, 2.6])
    assert metrics["reward_fn/scored"] == 2 and metrics["reward_fn/skipped"] == 2


async def test_mean_covers_the_scores_since_the_last_metrics_call() -> None:
    async with RewardWorkers(RewardConfig(fn="reward_fns:seed_score")) as workers:
        await workers.score_group(_group(seed=1, n=2))
        first = workers.metrics()
        await workers.score_group(_group(seed=7, n=2))
        second = workers.metrics()
        third = workers.metrics()
    assert first["reward_fn/mean"] == pytest.approx(1.05) and first["reward_fn/window_scored"] == 2
    assert second["reward_fn/mean"] == pytest.approx(7.05) and second["reward_fn/scored"] == 4
    assert third["reward_fn/mean"] == 0.0 and third["reward_fn/window_scored"] == 0


async def test_concurrency_runs_that_many_calls_at_once_in_threads() -> None:
    reward_fns.max_running = 0
    group = _group(seed=0, n=6)
    # pair_up only returns when two calls meet: all six scored proves two ran at once.
    metrics = await _score(RewardConfig(fn="reward_fns:pair_up", concurrency=2), group)
    assert metrics["reward_fn/scored"] == 6 and metrics["reward_fn/errors"] == 0
    assert reward_fns.max_running == 2


# --- failures: counted, recorded, never raised --------------------------------------------------


async def test_exceptions_are_recorded_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    groups = [_group(seed=1), _group(seed=2)]
    with caplog.at_level(logging.WARNING, logger="forge_env.reward"):
        metrics = await _score(RewardConfig(fn="reward_fns:boom_on_odd"), *groups)
    for t in (t for g in groups for t in g.trajectories):
        if t.group_index % 2:
            assert t.total_reward == 1.5 and "reward_fn" not in t.info
            error = t.info["reward_fn_error"]
            assert "reward_fns:boom_on_odd" in error and "ValueError" in error
            assert f"sample {t.group_index} is odd" in error
        else:
            assert t.total_reward == 2.5 and t.info["reward_fn"] == 1.0
    assert metrics["reward_fn/errors"] == 4 and metrics["reward_fn/scored"] == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one per kind of error, not one per trajectory
    assert "boom_on_odd" in warnings[0].getMessage() and "raise ValueError" in warnings[0].getMessage()


async def test_sync_timeout_is_counted_and_the_rest_are_scored() -> None:
    group = _group(seed=1, n=3)
    async with RewardWorkers(RewardConfig(fn="reward_fns:slow_first", timeout_s=0.2,
                                          kwargs={"seconds": 3.0})) as workers:
        await workers.score_group(group)
        metrics = workers.metrics()
    first, *rest = group.trajectories
    assert "timed out after 0.2s" in first.info["reward_fn_error"] and "slow_first" in first.info["reward_fn_error"]
    assert first.total_reward == 1.5 and "reward_fn" not in first.info
    assert all(t.info["reward_fn"] == 1.0 for t in rest)
    assert metrics["reward_fn/timeouts"] == 1 and metrics["reward_fn/errors"] == 0
    assert metrics["reward_fn/scored"] == 2
    assert metrics["reward_fn/stuck"] == 1  # its thread still sleeps; it ends on its own


async def test_async_timeout_cancels_the_call() -> None:
    group = _group(seed=1, n=2)
    async with RewardWorkers(RewardConfig(fn="reward_fns:async_slow_first", timeout_s=0.2)) as workers:
        await asyncio.wait_for(workers.score_group(group), 10)
        metrics = workers.metrics()
        # The cancellation lands on the fns' own loop (a thread) a moment later: the call ends.
        for _ in range(200):
            if not workers.metrics()["reward_fn/stuck"]:
                break
            await asyncio.sleep(0.01)
        stuck = workers.metrics()["reward_fn/stuck"]
    assert "timed out" in group.trajectories[0].info["reward_fn_error"]
    assert group.trajectories[1].info["reward_fn"] == 1.0
    assert metrics["reward_fn/timeouts"] == 1 and stuck == 0


async def test_an_async_fn_that_blocks_its_loop_times_out_and_the_callers_loop_runs_on() -> None:
    # Sample 0's call sleeps 2 s without awaiting: on the caller's loop it would freeze the
    # trainer (envs, generator) and its deadline could not fire until it returned.
    group = _group(seed=1, n=2)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    ticker = asyncio.ensure_future(tick())
    started = time.monotonic()
    async with RewardWorkers(RewardConfig(fn="reward_fns:async_blocking_first", timeout_s=0.3)) as workers:
        await workers.score_group(group)
        waited = time.monotonic() - started
        metrics = workers.metrics()
    ticker.cancel()
    assert "timed out after 0.3s" in group.trajectories[0].info["reward_fn_error"]
    assert waited < 1.5 and ticks >= 5                     # the deadline ended the wait; no freeze
    # Sample 1 queued behind the blocked call on the fns' loop: it timed out too, or was scored.
    assert metrics["reward_fn/timeouts"] + metrics["reward_fn/scored"] == 2
    assert metrics["reward_fn/stuck"] >= 1                  # the blocked call has not ended yet


async def test_a_return_value_that_is_not_a_finite_float_is_an_error() -> None:
    group = _group(seed=1, n=4)
    metrics = await _score(RewardConfig(fn="reward_fns:bad_return"), group)
    errors = [t.info.get("reward_fn_error", "") for t in group.trajectories]
    assert "returned None" in errors[0] and "returned '1.0' (str)" in errors[1]
    assert "returned nan" in errors[2] and errors[3] == ""
    assert group.trajectories[3].info["reward_fn"] == 2.0  # an int is fine
    assert metrics["reward_fn/errors"] == 3 and metrics["reward_fn/scored"] == 1


async def test_failed_trajectories_are_skipped_unless_asked() -> None:
    failed, turnless = _group(seed=4, n=2, termination="env_error"), _group(seed=4, n=1, turn_rewards=())
    metrics = await _score(RewardConfig(fn="reward_fns:seed_score"), failed, turnless)
    assert all("reward_fn" not in t.info and t.total_reward == 1.5 for t in failed.trajectories)
    assert "reward_fn" not in turnless.trajectories[0].info  # no turn to add it to
    assert metrics["reward_fn/skipped"] == 3 and metrics["reward_fn/scored"] == 0

    metrics = await _score(RewardConfig(fn="reward_fns:seed_score", skip_failed=False), failed)
    assert [t.info["reward_fn"] for t in failed.trajectories] == pytest.approx([4.0, 4.1])
    assert metrics["reward_fn/scored"] == 2


async def test_closed_workers_refuse_work() -> None:
    workers = RewardWorkers(RewardConfig(fn="reward_fns:seed_score"))
    await workers.aclose()
    await workers.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await workers.score_group(_group(seed=1))


# --- bad specs fail at construction, saying what to do --------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("reward_fns.seed_score", "not 'module:function'.*Did you mean 'reward_fns:seed_score'"),
    ("no_such_module_xyz:score", "no module named 'no_such_module_xyz'.*PYTHONPATH"),
    ("reward_fns:seed_scor", "has no attribute 'seed_scor'.*Did you mean 'seed_score'"),
    ("reward_fns:not_a_function", "is a int.*not a function"),
    ("reward_fns:Judge", "is the class Judge.*instance"),
    ("reward_fns:two_args", "cannot be called as fn\\(trajectory\\)"),
    ("/nonexistent/rewards.py:score", "does not exist"),
])
def test_bad_specs_raise_at_construction(spec: str, expected: str) -> None:
    with pytest.raises(RewardSpecError, match=expected) as info:
        RewardWorkers(RewardConfig(fn=spec))
    assert isinstance(info.value, ValueError)


def test_a_module_that_fails_to_import_names_the_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken_rewards.py"
    broken.write_text("raise RuntimeError('needs an API key')\ndef score(t): return 1.0\n")
    with pytest.raises(RewardSpecError, match="importing .*broken_rewards.py failed: RuntimeError: needs an API key"):
        RewardWorkers(RewardConfig(fn=f"{broken}:score"))


def test_kwargs_the_function_does_not_take_are_refused() -> None:
    with pytest.raises(RewardSpecError, match="keyword arguments \\['budgett'\\]"):
        load_reward_fn("forge_env.reward:length_penalty", kwargs={"budgett": 3})


def test_config_checks_its_values() -> None:
    for bad in ({"fn": "m:f", "timeout_s": 0}, {"fn": "m:f", "concurrency": 0},
                {"fn": "m:f", "weight": float("nan")}):
        with pytest.raises(ValueError, match="RewardConfig"):
            RewardConfig(**bad)  # type: ignore[arg-type]


# --- the built-in ---------------------------------------------------------------------------------


def test_length_penalty_counts_completion_tokens_over_the_budget() -> None:
    trajectory = _group(seed=0, n=1).trajectories[0]  # 2 turns of 10 completion tokens
    assert trajectory.num_completion_tokens == 20
    assert length_penalty(trajectory, budget=20) == 0.0
    assert length_penalty(trajectory, budget=15, per_token=0.1) == pytest.approx(-0.5)
    assert length_penalty(trajectory, budget=0, per_token=0.1, max_penalty=1.0) == -1.0
    with pytest.raises(ValueError, match="RewardConfig.kwargs"):
        length_penalty(trajectory, budget=-1)


async def test_length_penalty_through_the_workers() -> None:
    group = _group(seed=0, n=2)
    await _score(RewardConfig(fn="forge_env.reward:length_penalty", weight=2.0,
                              kwargs={"budget": 16, "per_token": 0.05}), group)
    assert [t.info["reward_fn"] for t in group.trajectories] == pytest.approx([-0.2, -0.2])
    assert [t.total_reward for t in group.trajectories] == pytest.approx([1.1, 1.1])
