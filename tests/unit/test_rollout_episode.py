"""run_episode and RolloutCollector with a scripted generator: tokens, masks, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from agents import ChatAgent
from envs import load_env_factory
from forge_env import AsyncEnv, Observation, ResetResult, StepResult
from forge_env.generator import Completion, Generator, GeneratorError, SamplingParams
from forge_env.rollout import (
    CollectorConfig,
    RolloutCollector,
    RolloutConfig,
    Task,
    Trajectory,
    run_episode,
)


class ScriptedGenerator(Generator):
    """Replies with scripted texts (tokenized), logprob -0.5 per token; records every call."""

    def __init__(self, tokenizer: Any, replies: Sequence[str] | None = None, *, max_model_len: int = 2048,
                 delay: float = 0.0, fail_at: int | None = None, stop: bool = True) -> None:
        self.tokenizer = tokenizer
        self.replies = list(replies or [])
        self._len = max_model_len
        self.delay = delay
        self.fail_at = fail_at
        self.stop = stop
        self.calls: list[tuple[list[int], Completion]] = []
        self.reply_fn: Any = None

    @property
    def version(self) -> int:
        return 3

    @property
    def max_model_len(self) -> int:
        return self._len

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        if self.delay:
            await asyncio.sleep(self.delay)
        n = len(self.calls)
        if self.fail_at is not None and n >= self.fail_at:
            raise GeneratorError("engine died")
        text = self.reply_fn(prompt_ids) if self.reply_fn else self.replies[n % len(self.replies)]
        ids = self.tokenizer(text, add_special_tokens=False).input_ids[: params.max_tokens]
        reason = "length"
        if self.stop and len(ids) < params.max_tokens:
            ids.append(self.tokenizer.eos_token_id)
            reason = "stop"
        out = Completion(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason=reason,  # type: ignore[arg-type]
                         version=self.version, prompt_len=len(prompt_ids))
        self.calls.append((list(prompt_ids), out))
        return out

    async def update_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> None:
        raise NotImplementedError


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from forge_env.models import build_tiny_model

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("m") / "tiny"))


def guess_env() -> AsyncEnv[Any, Any]:
    return load_env_factory("guess_number")()


def binary_search_reply(tokenizer: Any) -> Any:
    """A reply function playing binary search from the interval in the last observation."""
    import re

    def reply(prompt_ids: Sequence[int]) -> str:
        text = tokenizer.decode(prompt_ids)
        lo, hi = 1, 16
        for a, b in re.findall(r"between (\d+) and (\d+)", text):
            lo, hi = int(a), int(b)
        return str((lo + hi) // 2)

    return reply


async def test_episode_keeps_exact_tokens_and_masks(tokenizer: Any) -> None:
    gen = ScriptedGenerator(tokenizer)
    gen.reply_fn = binary_search_reply(tokenizer)
    traj = await run_episode(ChatAgent(tokenizer), guess_env(), gen, Task(seed=5))
    assert traj.termination == "terminated" and traj.success
    assert traj.total_reward == 1.0 and traj.rewards[-1] == 1.0
    assert traj.num_turns == len(gen.calls) >= 2
    n = len(traj.token_ids)
    assert len(traj.logprobs) == len(traj.loss_mask) == n
    # Every sampled id sits in the trajectory exactly where its turn says, mask 1, logprobs kept;
    # each generation's prompt was the trajectory up to that turn.
    for turn, (prompt, completion) in zip(traj.turns, gen.calls, strict=True):
        assert traj.token_ids[: turn.completion_start] == prompt
        assert traj.token_ids[turn.completion_start: turn.completion_end] == completion.token_ids
        assert traj.loss_mask[turn.completion_start: turn.completion_end] == [1] * len(completion.token_ids)
        assert traj.logprobs[turn.completion_start: turn.completion_end] == completion.logprobs
        assert turn.version == 3
    assert sum(traj.loss_mask) == sum(len(c.token_ids) for _, c in gen.calls)
    # Outside the sampled spans: mask 0, logprob 0.
    sampled = {i for t in traj.turns for i in range(t.completion_start, t.completion_end)}
    assert all(traj.loss_mask[i] == 0 and traj.logprobs[i] == 0.0 for i in range(n) if i not in sampled)
    assert traj.prompt_len == traj.turns[0].completion_start


async def test_unparseable_replies_become_error_observations(tokenizer: Any) -> None:
    env = load_env_factory("countdown")()
    gen = ScriptedGenerator(tokenizer, ["no action here, sorry"])
    traj = await run_episode(ChatAgent(tokenizer), env, gen, Task(seed=1), config=RolloutConfig(max_turns=3))
    assert traj.termination == "max_turns" and not traj.failed
    assert traj.num_turns == 3 and traj.invalid_actions == 3
    assert all(t.action is None and t.observation_text.startswith("Error:") for t in traj.turns)
    # The error text went back to the model as env-side (masked) tokens of the next prompt.
    second_prompt = tokenizer.decode(gen.calls[1][0])
    assert traj.turns[0].error.split(";")[0][:30] in second_prompt


async def test_env_side_invalid_feedback_is_counted(tokenizer: Any) -> None:
    gen = ScriptedGenerator(tokenizer, ["99"])
    traj = await run_episode(ChatAgent(tokenizer), guess_env(), gen, Task(seed=0))
    assert traj.termination == "terminated" and not traj.success  # ran out of turns
    assert traj.num_turns == 6 and traj.invalid_actions == 6
    assert "outside the range" in traj.turns[0].error


class TextObservation(Observation):
    text: str = ""


class CrashingEnv(AsyncEnv[TextObservation, Any]):
    """Crashes on its second step."""

    def __init__(self) -> None:
        self.steps = 0

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult:
        return ResetResult(TextObservation(text="go"), {})

    async def step(self, action: Any) -> StepResult:
        self.steps += 1
        if self.steps == 2:
            raise RuntimeError("segfault in the simulator")
        if self.steps > 2:
            await asyncio.sleep(60)
        return StepResult(TextObservation(text="ok"), 0.5, False, False, {})


async def test_env_crash_is_recorded_not_raised(tokenizer: Any) -> None:
    gen = ScriptedGenerator(tokenizer, ['{"x": 1}'])
    traj = await run_episode(ChatAgent(tokenizer), CrashingEnv(), gen, Task(seed=0))
    assert traj.termination == "env_error" and traj.failed
    assert "segfault in the simulator" in traj.error
    assert traj.num_turns == 2 and traj.rewards == [0.5, 0.0]  # the turns played are kept


async def test_step_and_episode_deadlines(tokenizer: Any) -> None:
    env = CrashingEnv()
    env.steps = 2  # next step sleeps
    gen = ScriptedGenerator(tokenizer, ['{"x": 1}'])
    traj = await run_episode(ChatAgent(tokenizer), env, gen, config=RolloutConfig(step_timeout_s=0.2))
    assert traj.termination == "step_deadline" and "env.step" in traj.error
    slow = ScriptedGenerator(tokenizer, ["1"], delay=0.3)
    traj = await run_episode(ChatAgent(tokenizer), guess_env(), slow,
                             config=RolloutConfig(episode_timeout_s=0.5))
    assert traj.termination == "episode_deadline" and traj.failed and 1 <= traj.num_turns <= 2


async def test_generator_failure_and_context_limit(tokenizer: Any) -> None:
    gen = ScriptedGenerator(tokenizer, ["1"], fail_at=1)
    traj = await run_episode(ChatAgent(tokenizer), guess_env(), gen, Task(seed=0))
    assert traj.termination == "generator_error" and "engine died" in traj.error and traj.num_turns == 1
    prompt_len = len((await _first_prompt(tokenizer)))
    small = ScriptedGenerator(tokenizer, ["1 2 3 4 5 6 7 8 9 10 11 12"], max_model_len=prompt_len + 30, stop=False)
    traj = await run_episode(ChatAgent(tokenizer), guess_env(), small, Task(seed=0))
    assert traj.termination == "context_limit"
    assert len(traj.token_ids) <= prompt_len + 30 + 64  # the last env-side prompt may overshoot


async def _first_prompt(tokenizer: Any) -> list[int]:
    env = guess_env()
    reset = await env.reset(seed=0)
    agent = ChatAgent(tokenizer)
    episode = await agent.new_episode(env)
    return episode.first_prompt(agent.observation_text(env, reset.observation))


async def test_collector_groups_concurrency_and_stats(tokenizer: Any) -> None:
    gen = ScriptedGenerator(tokenizer, delay=0.01)
    gen.reply_fn = binary_search_reply(tokenizer)
    in_flight = 0
    peak = 0

    class CountingEnv(AsyncEnv[Any, Any]):
        def __init__(self) -> None:
            self.inner = guess_env()
            self.metadata = self.inner.metadata  # type: ignore[misc]
            self.action_type = self.inner.action_type  # type: ignore[misc]

        async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            return await self.inner.reset(seed=seed, options=options)

        async def step(self, action: Any) -> Any:
            return await self.inner.step(action)

        async def close(self) -> None:
            nonlocal in_flight
            in_flight -= 1

    config = CollectorConfig(group_size=3, max_concurrent_episodes=4)
    collector = RolloutCollector(ChatAgent(tokenizer), gen, CountingEnv, config)
    tasks = [Task(seed=s) for s in range(5)]
    groups = await collector.collect(tasks)
    assert [g.task for g in groups] == tasks
    assert all(len(g.trajectories) == 3 for g in groups)
    assert sorted(t.group_index for t in groups[0].trajectories) == [0, 1, 2]
    assert peak <= 4 and in_flight == 0  # bounded, and every env closed
    stats = collector.stats
    assert stats.episodes == 15 and stats.successes == 15 and stats.failed == 0
    assert stats.completion_tokens == sum(t.num_completion_tokens for g in groups for t in g.trajectories)
    streamed = [g async for g in collector.stream(tasks[:2])]
    assert sorted(g.task.seed for g in streamed) == [0, 1]


async def test_collector_keeps_failed_episodes(tokenizer: Any) -> None:
    gen = ScriptedGenerator(tokenizer, ['{"x": 1}'])
    collector = RolloutCollector(ChatAgent(tokenizer), gen, CrashingEnv, CollectorConfig(group_size=2))
    [group] = await collector.collect([Task(seed=1)])
    assert [t.termination for t in group.trajectories] == ["env_error", "env_error"]
    assert collector.stats.failed == 2 and collector.stats.terminations == {"env_error": 2}


async def test_trajectory_round_trips_through_dict(tokenizer: Any) -> None:
    gen = ScriptedGenerator(tokenizer)
    gen.reply_fn = binary_search_reply(tokenizer)
    traj = await run_episode(ChatAgent(tokenizer), guess_env(), gen, Task(seed=2, options={"hi": 8}))
    import json

    again = Trajectory.from_dict(json.loads(json.dumps(traj.to_dict())))
    assert again == traj and again.task.key == "seed=2,hi=8"


def test_rollout_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="max_turns"):
        RolloutConfig(max_turns=0)
    with pytest.raises(ValueError, match="step_timeout_s"):
        RolloutConfig(step_timeout_s=0)
    with pytest.raises(ValueError, match="group_size"):
        CollectorConfig(group_size=0)
