"""group_advantages against hand-computed values: episode and per-turn modes, token alignment."""

from __future__ import annotations

import math
import sys

import pytest

from forge_env.learner import AdvantageConfig, group_advantages, is_degenerate
from forge_env.rollout import Task, TerminationReason, Trajectory, TrajectoryGroup, Turn


def make_traj(rewards: list[float], *, prompt: int = 2, completion: int = 2, obs: int = 1,
              termination: TerminationReason = "terminated") -> Trajectory:
    """prompt tokens, then per turn `completion` sampled tokens followed by `obs` env tokens."""
    token_ids: list[int] = [0] * prompt
    loss_mask: list[int] = [0] * prompt
    turns = []
    for i, r in enumerate(rewards):
        start = len(token_ids)
        token_ids += [1] * completion
        loss_mask += [1] * completion
        turns.append(Turn(index=i, completion_start=start, completion_end=start + completion, text="",
                          finish_reason="stop", version=0, reward=r))
        if i < len(rewards) - 1:
            token_ids += [2] * obs
            loss_mask += [0] * obs
    return Trajectory(env_name="t", task=Task(seed=0), token_ids=token_ids,
                      logprobs=[-0.5 * m for m in loss_mask], loss_mask=loss_mask, turns=turns,
                      termination=termination)


def sampled(adv: list[float], traj: Trajectory) -> list[float]:
    return [a for a, m in zip(adv, traj.loss_mask) if m]


def test_episode_mode_four_rewards() -> None:
    group = TrajectoryGroup(task=Task(seed=0), trajectories=[make_traj([r]) for r in (1.0, 0.0, 0.0, 0.0)])
    # mean 0.25; population std sqrt((0.75^2 + 3 * 0.25^2) / 4) = sqrt(0.1875) = sqrt(3)/4.
    adv = group_advantages(group, AdvantageConfig(eps=0.0))
    assert adv[0] == pytest.approx([0.0, 0.0, math.sqrt(3), math.sqrt(3)])
    for a in adv[1:]:
        assert a == pytest.approx([0.0, 0.0, -1 / math.sqrt(3), -1 / math.sqrt(3)])
    # The default eps (1e-6) barely moves it; a group of rewards 2, 1, 0, 1 has std sqrt(1/2).
    adv = group_advantages([make_traj([r]) for r in (2.0, 1.0, 0.0, 1.0)], AdvantageConfig())
    assert [a[2] for a in adv] == pytest.approx([math.sqrt(2), 0.0, -math.sqrt(2), 0.0], rel=1e-5)


def test_episode_mode_without_std_is_dr_grpo() -> None:
    adv = group_advantages([make_traj([r]) for r in (2.0, 1.0, 0.0, 1.0)], AdvantageConfig(normalize_std=False))
    assert [a[2] for a in adv] == [1.0, 0.0, -1.0, 0.0]


def test_episode_mode_uses_total_reward_on_every_sampled_token() -> None:
    trajs = [make_traj([0.5, 0.5]), make_traj([0.0, 0.0])]    # totals 1 and 0
    adv = group_advantages(trajs, AdvantageConfig(eps=0.0))
    assert adv[0] == [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert adv[1] == [0.0, 0.0, -1.0, -1.0, 0.0, -1.0, -1.0]
    assert all(len(a) == len(t.token_ids) for a, t in zip(adv, trajs))


def test_equal_rewards_give_zeros_and_are_degenerate() -> None:
    group = TrajectoryGroup(task=Task(), trajectories=[make_traj([1.0]) for _ in range(4)])
    assert group_advantages(group) == [[0.0] * 4] * 4
    assert is_degenerate(group)
    assert is_degenerate([make_traj([0.3])])                    # a group of one
    assert is_degenerate([make_traj([0.1 + 0.2]), make_traj([0.3])])  # equal up to rounding
    assert not is_degenerate([make_traj([1.0]), make_traj([0.0])])


def test_per_turn_discounting_gamma_half() -> None:
    three = make_traj([1.0, 0.0, 2.0])     # returns-to-go: 1 + 0.5 * (0 + 0.5 * 2) = 1.5, 1.0, 2.0
    one = make_traj([0.0])                 # 0.0
    # Pool of every turn's return: 1.5, 1.0, 2.0, 0.0 -> mean 1.125.
    adv = group_advantages([three, one], AdvantageConfig(mode="per_turn", gamma=0.5, normalize_std=False))
    #               prompt     turn 0         obs  turn 1          obs  turn 2
    assert adv[0] == [0.0, 0.0, 0.375, 0.375, 0.0, -0.125, -0.125, 0.0, 0.875, 0.875]
    assert adv[1] == [0.0, 0.0, -1.125, -1.125]

    std = math.sqrt((0.375**2 + 0.125**2 + 0.875**2 + 1.125**2) / 4)   # 0.7395
    adv = group_advantages([three, one], AdvantageConfig(mode="per_turn", gamma=0.5, eps=0.0))
    assert sampled(adv[0], three) == pytest.approx([x / std for x in (0.375, 0.375, -0.125, -0.125, 0.875, 0.875)])
    assert not is_degenerate([three, one], AdvantageConfig(mode="per_turn", gamma=0.5))


def test_per_turn_gamma_zero_scores_each_turn_by_its_own_reward() -> None:
    adv = group_advantages([make_traj([1.0, 0.0])], AdvantageConfig(mode="per_turn", gamma=0.0, eps=0.0))
    assert sampled(adv[0], make_traj([1.0, 0.0])) == [1.0, 1.0, -1.0, -1.0]
    # Equal episode returns can still carry per-turn signal.
    trajs = [make_traj([1.0, 0.0]), make_traj([0.0, 1.0])]
    assert is_degenerate(trajs)
    assert not is_degenerate(trajs, AdvantageConfig(mode="per_turn", gamma=0.0))


def test_per_turn_only_tokens_in_the_span_and_in_the_mask() -> None:
    traj = make_traj([1.0, 0.0], completion=3)
    traj.loss_mask[3] = 0          # a token inside turn 0's span that was not sampled
    adv = group_advantages([traj], AdvantageConfig(mode="per_turn", gamma=1.0, eps=0.0))
    # Returns 1.0, 0.0 -> advantages +1, -1.
    assert adv[0] == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, -1.0, -1.0]


def test_failed_trajectories_get_zero_and_stay_out_of_the_baseline() -> None:
    trajs = [make_traj([1.0]), make_traj([0.0]), make_traj([0.0], termination="env_error")]
    adv = group_advantages(trajs, AdvantageConfig(eps=0.0))
    assert [a[2] for a in adv] == pytest.approx([1.0, -1.0, 0.0])
    # Kept: rewards 1, 0, 0 -> mean 1/3, std sqrt(2/9) -> sqrt(2), -1/sqrt(2), -1/sqrt(2).
    adv = group_advantages(trajs, AdvantageConfig(eps=0.0, include_failed=True))
    assert [a[2] for a in adv] == pytest.approx([math.sqrt(2), -1 / math.sqrt(2), -1 / math.sqrt(2)])
    # Only one trajectory left that counts: degenerate.
    assert is_degenerate([make_traj([1.0]), make_traj([0.0], termination="step_deadline")])


def test_misaligned_trajectories_are_errors() -> None:
    traj = make_traj([1.0])
    traj.loss_mask.append(1)
    with pytest.raises(ValueError, match="loss_mask"):
        group_advantages([traj, make_traj([0.0])])
    traj = make_traj([1.0])
    traj.turns[0].completion_end = 99
    with pytest.raises(ValueError, match="outside"):
        group_advantages([traj, make_traj([0.0])], AdvantageConfig(mode="per_turn"))


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="gamma"):
        AdvantageConfig(gamma=1.5)
    with pytest.raises(ValueError, match="mode"):
        AdvantageConfig(mode="token")  # type: ignore[arg-type]


def test_advantages_do_not_import_torch() -> None:
    # forge_env.buffer uses is_degenerate; it must stay importable without torch.
    import subprocess

    code = "import sys, forge_env.learner, forge_env.buffer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
