"""The GRPO loop with a scripted world: real RolloutCollector, ReplayBuffer and Orchestrator; a fake
learner, a fake generator, a one-turn env and an agent that needs no tokenizer.

The world: every episode is one turn. The agent puts the task seed into the prompt; the fake
generator answers token ``_A`` or ``_B`` chosen by ``choose(task_index, k)`` (``k``: how many times
that task was sampled before); the env pays 1.0 for ``_A``, 0.0 for ``_B``. With the default
``choose`` a group of 2 scores [1, 0]: every group carries signal unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import Any, cast

import pytest

from agents._base import Agent, AgentEpisode
from forge_env import AsyncEnv, Observation, ResetResult, StepResult
from forge_env.buffer import BufferConfig, ReplayBuffer
from forge_env.generator import Completion, Generator, SamplingParams
from forge_env.orchestrator import LoopStalledError, Orchestrator, OrchestratorConfig, StepReport
from forge_env.rollout import CollectorConfig, RolloutCollector, RolloutConfig, Trajectory, TrajectoryGroup

_A, _B = 10, 11          # the two replies: _A wins
_FIRST = 2_000_000       # OrchestratorConfig.first_task_seed's default
_HANG = -1               # choose(...) -> _HANG: the generation never returns
_CRASH = -2              # choose(...) -> _CRASH: the generator raises (an engine error, not a bug)

Choose = Callable[[int, int], int]


def _alternate(task: int, k: int) -> int:
    return _A if k % 2 == 0 else _B


# -- the scripted world ---------------------------------------------------------------------------


class _Obs(Observation):
    text: str


@dataclasses.dataclass
class _World:
    """What the env and generator saw, shared by one rig's parts."""

    resets: list[int] = dataclasses.field(default_factory=list)
    """Task seeds in the order episodes reset them."""
    occupancy: list[int] = dataclasses.field(default_factory=list)
    """At every reset and generation: groups generating (reset, not yet in the buffer) + buffered."""
    buffer: _CountingBuffer | None = None

    def observe(self) -> None:
        assert self.buffer is not None
        generating = set(self.resets) - set(self.buffer.added_seeds)
        self.occupancy.append(len(generating) + len(self.buffer))


class _WordEnv(AsyncEnv[_Obs, Any]):
    """One turn: reward 1.0 for the word "a", 0.0 otherwise. Raises on reset for ``broken`` seeds."""

    def __init__(self, world: _World, broken: frozenset[int] = frozenset()) -> None:
        self.world = world
        self.broken = broken

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> ResetResult[_Obs]:
        assert seed is not None
        self.world.resets.append(seed)
        self.world.observe()
        if seed in self.broken:
            raise ConnectionError("env container died")
        return ResetResult(_Obs(text=str(seed)), {})

    async def step(self, action: Any) -> StepResult[_Obs]:
        reward = 1.0 if action["word"] == "a" else 0.0
        return StepResult(_Obs(text="done"), reward, True, False, {})


class _Episode(AgentEpisode):
    def __init__(self, bug_on: frozenset[int]) -> None:
        self.bug_on = bug_on

    def first_prompt(self, observation_text: str) -> list[int]:
        seed = int(observation_text)
        if seed in self.bug_on:
            raise KeyError(f"agent bug on seed {seed}")
        return [1, seed]   # the seed travels to the generator in the prompt

    def parse_action(self, completion_ids: Sequence[int]) -> dict[str, Any]:
        return {"word": "a" if completion_ids[0] == _A else "b"}

    def next_prompt(self, completion_ids: Sequence[int], finish_reason: str, observation_text: str) -> list[int]:
        return [2]

    def decode(self, token_ids: Sequence[int]) -> str:
        return " ".join(map(str, token_ids))


class _Agent(Agent):
    """No tokenizer: prompts are ``[1, seed]``; a seed in ``bug_on`` makes the agent itself crash."""

    tokenizer = None

    def __init__(self, bug_on: frozenset[int] = frozenset()) -> None:
        self.bug_on = bug_on

    async def new_episode(self, env: AsyncEnv[Any, Any]) -> AgentEpisode:
        return _Episode(self.bug_on)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return ()


@dataclasses.dataclass
class _Gen:
    seed: int
    version: int
    started: float


class _FakeGenerator(Generator):
    """Answers ``choose(task_index, k)`` after ``delay`` s, stamped with its version; records pushes."""

    def __init__(self, world: _World, *, choose: Choose = _alternate, delay: float = 0.0,
                 first_task_seed: int = _FIRST) -> None:
        self.world = world
        self.choose = choose
        self.delay = delay
        self.first = first_task_seed
        self._version = 0
        self._seen: Counter[int] = Counter()
        self.calls: list[_Gen] = []
        self.pushes: list[tuple[int, list[tuple[str, Any]]]] = []

    @property
    def version(self) -> int:
        return self._version

    @property
    def max_model_len(self) -> int:
        return 4096

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        seed = prompt_ids[1]
        k = self._seen[seed]
        self._seen[seed] += 1
        version = self._version   # the weights this request runs on ("finish" in-flight policy)
        self.calls.append(_Gen(seed=seed, version=version, started=time.monotonic()))
        self.world.observe()
        token = self.choose(seed - self.first, k)
        if token == _HANG:
            await asyncio.Event().wait()
        if token == _CRASH:
            raise RuntimeError("CUDA error: device-side assert triggered")
        if self.delay:
            await asyncio.sleep(self.delay)
        return Completion(token_ids=[token], logprobs=[-0.5], finish_reason="stop", version=version,
                          prompt_len=len(prompt_ids))

    async def update_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> None:
        self.pushes.append((version, list(named_tensors)))
        self._version = version


@dataclasses.dataclass
class _Train:
    version: int
    """Learner version when the step started."""
    seeds: list[int]
    ages: list[int]
    advantages: list[list[float]]
    failed: list[bool]
    rewards: list[float]
    started: float
    ended: float = 0.0
    ref: list[list[float]] | None = None
    """The reference logprobs passed (KL term), if any."""


class _FakeLearner:
    """Records every train_step (in the worker thread the orchestrator uses), one version per call."""

    def __init__(self, *, version: int = 0, train_s: float = 0.0) -> None:
        self.version = version
        self.train_s = train_s
        self.calls: list[_Train] = []
        self.threads: set[int] = set()

    def train_step(self, trajectories: list[Trajectory], advantages: list[list[float]], *,
                   ref_logprobs: list[list[float]] | None = None) -> dict[str, float]:
        record = _Train(
            ref=ref_logprobs,
            version=self.version,
            seeds=[t.task.seed for t in trajectories],  # type: ignore[misc]
            ages=[self.version - min(t.versions) for t in trajectories if t.versions],
            advantages=advantages,
            failed=[t.failed for t in trajectories],
            rewards=[t.total_reward for t in trajectories],
            started=time.monotonic(),
        )
        self.threads.add(threading.get_ident())
        if self.train_s:
            time.sleep(self.train_s)   # blocking on purpose: it runs in a worker thread
        record.ended = time.monotonic()
        self.calls.append(record)
        self.version += 1
        return {"loss/total": 0.25, "learner/grad_norm": 1.5}

    def hf_named_tensors(self) -> list[tuple[str, Any]]:
        return [("model.w", [float(self.version)])]


class _CountingBuffer(ReplayBuffer):
    """A ReplayBuffer that remembers the seed of every group added."""

    def __init__(self, config: BufferConfig) -> None:
        super().__init__(config)
        self.added_seeds: list[int] = []

    def add(self, group: TrajectoryGroup) -> bool:
        assert group.task.seed is not None
        self.added_seeds.append(group.task.seed)
        return super().add(group)


@dataclasses.dataclass
class _Rig:
    orchestrator: Orchestrator
    learner: _FakeLearner
    generator: _FakeGenerator
    buffer: _CountingBuffer
    world: _World

    async def run(self) -> list[StepReport]:
        async with _closing_run(self.orchestrator) as reports:
            return [r async for r in reports]


def _closing_run(orchestrator: Orchestrator) -> contextlib.aclosing[AsyncGenerator[StepReport, None]]:
    """``run()`` closed on exit: leaving ``async for`` early must cancel the groups in flight now."""
    # run() is an async generator; its annotation (AsyncIterator) hides aclose from mypy.
    return contextlib.aclosing(cast(AsyncGenerator[StepReport, None], orchestrator.run()))


def _rig(
    *,
    mode: str = "sync",
    steps: int = 3,
    groups_per_step: int = 2,
    group_size: int = 2,
    weight_push_every: int = 1,
    max_policy_age: int = 1,
    max_groups_in_flight: int | None = None,
    batch_timeout_s: float | None = 30.0,
    drop_failed: bool = False,
    capacity: int = 1024,
    choose: Choose = _alternate,
    gen_delay: float = 0.0,
    train_s: float = 0.0,
    learner_version: int = 0,
    broken: frozenset[int] = frozenset(),
    bug_on: frozenset[int] = frozenset(),
) -> _Rig:
    world = _World()
    buffer = _CountingBuffer(BufferConfig(max_policy_age=max_policy_age, drop_failed=drop_failed,
                                          capacity=capacity))
    world.buffer = buffer
    generator = _FakeGenerator(world, choose=choose, delay=gen_delay)
    learner = _FakeLearner(version=learner_version, train_s=train_s)
    collector = RolloutCollector(
        _Agent(bug_on), generator, lambda: _WordEnv(world, broken),
        CollectorConfig(group_size=group_size, max_concurrent_episodes=256,
                        rollout=RolloutConfig(max_turns=1, sampling=SamplingParams(max_tokens=4))),
    )
    config = OrchestratorConfig(
        mode=mode,  # type: ignore[arg-type]
        steps=steps, groups_per_step=groups_per_step, weight_push_every=weight_push_every,
        max_groups_in_flight=max_groups_in_flight, batch_timeout_s=batch_timeout_s,
    )
    orchestrator = Orchestrator(learner=learner, generator=generator, collector=collector, buffer=buffer,
                                config=config)
    return _Rig(orchestrator, learner, generator, buffer, world)


def _other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


REPORT_KEYS = {
    "step", "version", "reward/mean", "reward/std", "success/rate", "episode/failed", "policy_age/mean",
    "policy_age/max", "batch/groups", "batch/degenerate_groups", "batch/trained_sequences", "util/learner",
    "util/generator", "throughput/tokens_per_s", "throughput/episodes_per_s", "time/step_s", "time/wait_s",
    "time/push_s", "time/train_s", "loss/total", "learner/grad_norm",
}


# -- sync mode ------------------------------------------------------------------------------------


async def test_sync_trains_each_step_on_a_fresh_batch_of_the_current_policy() -> None:
    rig = _rig(mode="sync", steps=3, groups_per_step=2, group_size=2)
    reports = await rig.run()

    assert [r["step"] for r in reports] == [1.0, 2.0, 3.0]
    assert [r["version"] for r in reports] == [1.0, 2.0, 3.0]
    assert len(rig.learner.calls) == 3
    for n, call in enumerate(rig.learner.calls):
        # exactly groups_per_step groups of group_size episodes, tasks in order, never reused
        assert sorted(call.seeds) == sorted([_FIRST + 2 * n] * 2 + [_FIRST + 2 * n + 1] * 2)
        assert call.ages == [0, 0, 0, 0]       # sampled by the policy being trained
        assert sorted(call.rewards) == [0.0, 0.0, 1.0, 1.0]
    assert [r["policy_age/max"] for r in reports] == [0.0, 0.0, 0.0]
    assert [v for v, _ in rig.generator.pushes] == [1, 2, 3]
    # the generator is never asked while the learner trains, and samples each step with the new weights
    assert [c.version for c in rig.generator.calls] == [0] * 4 + [1] * 4 + [2] * 4
    for report in reports:
        assert REPORT_KEYS <= report.keys()
        assert report["reward/mean"] == 0.5 and report["success/rate"] == 0.5
        assert report["batch/groups"] == 2.0 and report["batch/degenerate_groups"] == 0.0
        assert report["batch/trained_sequences"] == 4.0 and report["episode/failed"] == 0.0
        assert report["loss/total"] == 0.25 and report["learner/grad_norm"] == 1.5
        assert report["throughput/tokens_per_s"] > 0 and 0.0 <= report["util/generator"] <= 1.0
    assert all(isinstance(v, float) for r in reports for v in r.values())
    assert json.loads(json.dumps(reports)) == reports
    assert _other_tasks() == set()


async def test_sync_pushes_every_k_steps_and_always_after_the_last() -> None:
    rig = _rig(mode="sync", steps=5, weight_push_every=2, max_policy_age=1)
    reports = await rig.run()

    # pushed after steps 2, 4 and the final 5; each push carries the learner's version then
    assert [v for v, _ in rig.generator.pushes] == [2, 4, 5]
    assert [named for _, named in rig.generator.pushes] == [[("model.w", [2.0])], [("model.w", [4.0])],
                                                           [("model.w", [5.0])]]
    # between pushes the samples are one version behind the learner, never more
    assert [r["policy_age/max"] for r in reports] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert [c.ages for c in rig.learner.calls] == [[0] * 4, [1] * 4, [0] * 4, [1] * 4, [0] * 4]
    assert rig.generator.version == rig.learner.version == 5


async def test_sync_does_not_overlap_generation_and_training() -> None:
    rig = _rig(mode="sync", steps=2, train_s=0.1)
    await rig.run()
    for call in rig.learner.calls:
        assert not [g for g in rig.generator.calls if call.started <= g.started <= call.ended]
    assert threading.get_ident() not in rig.learner.threads   # train_step ran off the event loop


async def test_sync_generator_utilisation_counts_every_group() -> None:
    # Task 0's group answers at once, task 1's after 0.3 s: the generator is busy for >= 0.3 s of
    # the step (busy time = util/generator x the report window = util x episodes / episodes_per_s).
    rig = _rig(mode="sync", steps=1, groups_per_step=2)
    original = rig.generator.generate

    async def generate(prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        if prompt_ids[1] == _FIRST + 1:
            await asyncio.sleep(0.3)
        return await original(prompt_ids, params)

    rig.generator.generate = generate  # type: ignore[method-assign]
    [report] = await rig.run()
    busy_s = report["util/generator"] * 4 / report["throughput/episodes_per_s"]   # 4 episodes
    assert busy_s >= 0.29, report


# -- async mode -----------------------------------------------------------------------------------


async def test_async_overlaps_generation_with_training_within_the_staleness_bound() -> None:
    rig = _rig(mode="async", steps=4, groups_per_step=2, max_policy_age=1, train_s=0.2, gen_delay=0.01)
    reports = await rig.run()

    assert [r["step"] for r in reports] == [1.0, 2.0, 3.0, 4.0]
    # while the learner slept in its thread, the event loop kept generating the next batch
    during = [g for c in rig.learner.calls for g in rig.generator.calls if c.started <= g.started <= c.ended]
    assert during
    # ... on the weights pushed before that step: samples reach the learner one version old, never older
    ages = [a for c in rig.learner.calls for a in c.ages]
    assert max(ages) == 1 and rig.learner.calls[0].ages == [0, 0, 0, 0]
    assert all(r["policy_age/max"] <= 1 for r in reports)
    assert max(r["policy_age/max"] for r in reports) == 1.0
    assert [v for v, _ in rig.generator.pushes] == [1, 2, 3, 4]
    for call in rig.learner.calls:
        assert len(call.seeds) == 4 and len(set(call.seeds)) == 2
    assert all(REPORT_KEYS <= r.keys() for r in reports)
    assert rig.buffer.stats()["dropped_stale"] == 0
    assert _other_tasks() == set()


async def test_async_push_every_two_steps_keeps_samples_within_two_versions() -> None:
    rig = _rig(mode="async", steps=5, groups_per_step=2, weight_push_every=2, max_policy_age=2,
               train_s=0.05, gen_delay=0.005)
    reports = await rig.run()
    assert [v for v, _ in rig.generator.pushes] == [2, 4, 5]
    assert len(reports) == 5
    assert all(0 <= a <= 2 for c in rig.learner.calls for a in c.ages)
    assert all(r["policy_age/max"] <= 2 for r in reports)


@pytest.mark.parametrize(("groups_per_step", "max_groups_in_flight"), [(2, None), (2, 5)])
async def test_async_bounds_groups_generating_or_buffered(groups_per_step: int,
                                                          max_groups_in_flight: int | None) -> None:
    rig = _rig(mode="async", steps=4, groups_per_step=groups_per_step, max_groups_in_flight=max_groups_in_flight,
               train_s=0.05, gen_delay=0.05)
    bound = rig.orchestrator.config.groups_in_flight
    await rig.run()
    assert bound == (max_groups_in_flight or groups_per_step)
    assert rig.world.occupancy and max(rig.world.occupancy) == bound   # filled up to the bound, never over
    assert all(a <= 1 for c in rig.learner.calls for a in c.ages)


async def test_task_seeds_are_consecutive_and_never_reused() -> None:
    rig = _rig(mode="async", steps=4, groups_per_step=3, max_groups_in_flight=4, train_s=0.02)
    await rig.run()
    started = list(dict.fromkeys(rig.world.resets))          # distinct seeds in order of first reset
    assert started == list(range(_FIRST, _FIRST + len(started)))
    assert all(n == 2 for n in Counter(rig.world.resets).values())   # one group (G=2) per seed
    trained = [s for c in rig.learner.calls for s in dict.fromkeys(c.seeds)]
    assert len(trained) == len(set(trained)) == 12


# -- what gets trained ----------------------------------------------------------------------------


def _degenerate_first_steps(task: int, k: int) -> int:
    if task == 0:
        return _A              # step 1: task 0 solved by every sample, task 1 split
    if task in (2, 3):
        return _B              # step 2: no sample solves either task
    return _alternate(task, k)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_degenerate_groups_are_counted_and_left_out(mode: str) -> None:
    rig = _rig(mode=mode, steps=3, groups_per_step=2, group_size=2, choose=_degenerate_first_steps)
    reports = await rig.run()

    assert [r["batch/degenerate_groups"] for r in reports] == [1.0, 2.0, 0.0]
    assert [r["batch/trained_sequences"] for r in reports] == [2.0, 0.0, 4.0]
    assert [r["reward/mean"] for r in reports] == [0.75, 0.0, 0.5]
    # step 2 had nothing to learn from: no update, the version stays
    assert len(rig.learner.calls) == 2
    assert [r["version"] for r in reports] == [1.0, 1.0, 2.0]
    assert reports[1]["time/train_s"] == 0.0 and "loss/total" not in reports[1]
    first = rig.learner.calls[0]
    assert first.seeds == [_FIRST + 1, _FIRST + 1]
    assert sorted(adv[-1] for adv in first.advantages) == pytest.approx([-1.0, 1.0], abs=1e-5)
    assert rig.generator.version == rig.learner.version == 2


async def test_failed_episodes_get_zero_advantage_and_are_counted() -> None:
    # the third sample of every task crashes the generator (an engine error, not a bug in our code)
    def crash_third(task: int, k: int) -> int:
        return _CRASH if k == 2 else _alternate(task, k)

    rig = _rig(mode="sync", steps=2, groups_per_step=2, group_size=3, choose=crash_third)
    reports = await rig.run()

    assert [r["episode/failed"] for r in reports] == [2.0, 2.0]
    assert [r["batch/trained_sequences"] for r in reports] == [6.0, 6.0]
    for call in rig.learner.calls:
        for failed, reward, adv in zip(call.failed, call.rewards, call.advantages, strict=True):
            if failed:
                assert set(adv) == {0.0}
            else:
                assert adv[-1] == pytest.approx(1.0 if reward == 1.0 else -1.0, abs=1e-5)
        assert sum(call.failed) == 2
    assert rig.orchestrator.collector.stats.terminations.get("generator_error") == 4


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_bug_in_the_rollout_stops_the_run_with_that_error(mode: str) -> None:
    # The agent raising is a bug in our code: it must surface, not become a failed episode.
    # Task 1's generations are slow so they are still running when task 0's bug surfaces.
    rig = _rig(mode=mode, steps=3, bug_on=frozenset({_FIRST}))
    original = rig.generator.generate

    async def slow_generate(prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        await asyncio.sleep(0.2)
        return await original(prompt_ids, params)

    rig.generator.generate = slow_generate  # type: ignore[method-assign]
    with pytest.raises(KeyError, match="agent bug on seed"):
        await rig.run()
    assert rig.learner.calls == []
    await asyncio.sleep(0)
    assert _other_tasks() == set(), "groups still generating after run() raised"
    assert len(rig.buffer) == 0


# -- stalls ---------------------------------------------------------------------------------------


def _hang(task: int, k: int) -> int:
    return _HANG


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_hung_generator_raises_loop_stalled_after_batch_timeout(mode: str) -> None:
    rig = _rig(mode=mode, steps=2, batch_timeout_s=0.3, choose=_hang)
    async with asyncio.timeout(3):   # a failing loop must fail this test, not hang the suite
        with pytest.raises(LoopStalledError, match="batch_timeout_s"):
            await rig.run()
    assert rig.learner.calls == []
    await asyncio.sleep(0)
    assert _other_tasks() == set()


async def test_async_all_episodes_failing_and_dropped_stalls_with_counts() -> None:
    every = frozenset(range(_FIRST, _FIRST + 100_000))
    rig = _rig(mode="async", steps=1, batch_timeout_s=0.3, drop_failed=True, broken=every)
    with pytest.raises(LoopStalledError, match="batch_timeout_s") as info:
        await rig.run()
    message = str(info.value)
    assert "failed" in message and "'env_error'" in message and "dropped_empty" in message
    assert rig.learner.calls == []


async def test_sync_all_episodes_failing_and_dropped_names_the_filters() -> None:
    every = frozenset(range(_FIRST, _FIRST + 1000))
    rig = _rig(mode="sync", steps=1, drop_failed=True, broken=every)
    with pytest.raises(LoopStalledError, match="drop_failed"):
        await rig.run()
    # 8 rounds of 2 groups, then it gives up
    assert len(set(rig.world.resets)) == 16


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "push_every", "max_age"), [("async", 1, 0), ("async", 3, 2), ("sync", 3, 1)])
def test_a_staleness_bound_that_would_drop_every_batch_is_refused(mode: str, push_every: int,
                                                                 max_age: int) -> None:
    with pytest.raises(ValueError) as info:
        _rig(mode=mode, weight_push_every=push_every, max_policy_age=max_age)
    message = str(info.value)
    assert "weight_push_every" in message and "max_policy_age" in message
    need = push_every if mode == "async" else push_every - 1
    assert f"max_policy_age >= {need}" in message


@pytest.mark.parametrize(("mode", "push_every", "max_age"), [("async", 1, 1), ("async", 2, 2), ("sync", 1, 0),
                                                             ("sync", 2, 1)])
def test_the_tightest_working_staleness_bound_is_accepted(mode: str, push_every: int, max_age: int) -> None:
    _rig(mode=mode, weight_push_every=push_every, max_policy_age=max_age)


def test_too_few_groups_in_flight_for_a_batch_is_refused() -> None:
    # the producer would stop at 1 group while the learner waits for 2: a certain stall
    with pytest.raises(ValueError, match="max_groups_in_flight") as info:
        _rig(mode="async", groups_per_step=2, max_groups_in_flight=1)
    assert "groups_per_step" in str(info.value)


@pytest.mark.parametrize(("mode", "max_groups_in_flight"), [("sync", None), ("async", None), ("async", 4)])
def test_a_buffer_too_small_for_the_loop_is_refused(mode: str, max_groups_in_flight: int | None) -> None:
    # groups_per_step=2; async keeps max_groups_in_flight (default: groups_per_step) in the buffer
    need = max_groups_in_flight or 2
    with pytest.raises(ValueError, match="capacity"):
        _rig(mode=mode, groups_per_step=2, max_groups_in_flight=max_groups_in_flight, capacity=need - 1)
    _rig(mode=mode, groups_per_step=2, max_groups_in_flight=max_groups_in_flight, capacity=need)


async def test_sync_with_zero_staleness_runs() -> None:
    rig = _rig(mode="sync", steps=2, max_policy_age=0)
    reports = await rig.run()
    assert [r["policy_age/max"] for r in reports] == [0.0, 0.0]


async def test_generator_behind_the_learner_gets_the_weights_first() -> None:
    rig = _rig(mode="sync", steps=1, learner_version=7)
    [report] = await rig.run()
    assert [v for v, _ in rig.generator.pushes] == [7, 8]
    assert {c.version for c in rig.generator.calls} == {7}
    assert report["step"] == 1.0 and report["version"] == 8.0 and report["policy_age/max"] == 0.0


# -- checkpoints ----------------------------------------------------------------------------------


async def test_async_state_round_trips_and_resume_reissues_tasks_in_flight() -> None:
    # Generation (0.3 s) is slower than training: when step 2's report is yielded, the groups of
    # the next batch are generating.
    first = _rig(mode="async", steps=4, groups_per_step=2, gen_delay=0.3)
    state: dict[str, Any] = {}
    async with _closing_run(first.orchestrator) as reports:
        async for report in reports:
            if report["step"] == 2:
                state = json.loads(json.dumps(await first.orchestrator.state_dict()))
                break
    assert _other_tasks() == set()
    assert state["step"] == 2 and state["next_task"] == 6
    assert state["pending_tasks"] == [4, 5]          # in flight at the snapshot
    trained_before = {s for c in first.learner.calls for s in c.seeds}
    assert trained_before == {_FIRST + i for i in range(4)}

    # resume: the learner restored its own state (version 2); a fresh generator is behind
    second = _rig(mode="async", steps=4, groups_per_step=2, gen_delay=0.01, learner_version=2)
    await second.orchestrator.load_state_dict(state)
    reports2 = await second.run()
    assert [r["step"] for r in reports2] == [3.0, 4.0]
    assert [v for v, _ in second.generator.pushes] == [2, 3, 4]
    started = list(dict.fromkeys(second.world.resets))
    assert set(started[:2]) == {_FIRST + 4, _FIRST + 5}      # the interrupted tasks come first
    assert started[2:] == list(range(_FIRST + 6, _FIRST + 6 + len(started) - 2))
    trained_after = [s for c in second.learner.calls for s in dict.fromkeys(c.seeds)]
    assert trained_after == [_FIRST + 4, _FIRST + 5, _FIRST + 6, _FIRST + 7]
    assert not trained_before & set(trained_after)


async def test_state_taken_after_the_run_still_reissues_interrupted_tasks() -> None:
    # run() ended (last step, or the caller closed it) while tasks 4 and 5 were generating:
    # they were cancelled, so a checkpoint taken now must hand them to the next run
    rig = _rig(mode="async", steps=2, groups_per_step=2, gen_delay=0.3)
    await rig.run()
    state = await rig.orchestrator.state_dict()
    assert state["next_task"] == 6
    assert state["pending_tasks"] == [4, 5]


async def test_sync_state_restores_the_task_stream() -> None:
    first = _rig(mode="sync", steps=2)
    await first.run()
    state = await first.orchestrator.state_dict()
    assert state["step"] == 2 and state["next_task"] == 4 and state["pending_tasks"] == []

    second = _rig(mode="sync", steps=3, learner_version=2)
    await second.orchestrator.load_state_dict(json.loads(json.dumps(state)))
    assert second.orchestrator.step == 2
    [report] = await second.run()
    assert report["step"] == 3.0
    assert sorted(set(second.world.resets)) == [_FIRST + 4, _FIRST + 5]


async def test_state_of_another_format_is_refused() -> None:
    rig = _rig(mode="sync")
    state = await rig.orchestrator.state_dict()
    with pytest.raises(ValueError, match="format"):
        await rig.orchestrator.load_state_dict({**state, "format": 99})


# -- a buffer, reference and reward workers awaited through their interfaces ------------------------


class _FarBuffer:
    """An AsyncBuffer whose calls take time, like one in another process: each call's effect
    lands after ``delay`` seconds, in the order the calls were made."""

    def __init__(self, inner: ReplayBuffer, delay: float) -> None:
        self.inner = inner
        self.config = inner.config
        self.delay = delay
        self._order = asyncio.Lock()

    async def _later(self, fn: Callable[[], Any]) -> Any:
        async with self._order:  # in order of arrival, as messages to one actor
            await asyncio.sleep(self.delay)
            return fn()

    async def add(self, group: TrajectoryGroup) -> bool:
        return bool(await self._later(lambda: self.inner.add(group)))

    async def num_fresh(self, current_version: int) -> int:
        return int(await self._later(lambda: self.inner.num_fresh(current_version)))

    async def wait_for(self, n_groups: int, *, current_version: int, timeout: float | None = None) -> bool:
        return await self.inner.wait_for(n_groups, current_version=current_version, timeout=timeout)

    async def sample(self, n_groups: int, *, current_version: int) -> list[TrajectoryGroup]:
        return list(await self._later(lambda: self.inner.sample(n_groups, current_version=current_version)))

    async def stats(self) -> dict[str, Any]:
        return dict(await self._later(self.inner.stats))

    async def state_dict(self) -> dict[str, Any]:
        return dict(await self._later(self.inner.state_dict))

    async def load_state_dict(self, state: dict[str, Any]) -> None:
        await self._later(lambda: self.inner.load_state_dict(state))


async def test_a_slow_far_buffer_keeps_every_task_exactly_once_in_a_snapshot() -> None:
    # Adds take 50 ms to land: snapshots taken while some are on their way must still hold each
    # issued task once (trained, in the buffer's state, or pending), never twice or not at all.
    rig = _rig(mode="async", steps=6, groups_per_step=2, gen_delay=0.02)
    far = _FarBuffer(rig.buffer, delay=0.05)
    rig.orchestrator.buffer = far
    snapshots: list[tuple[set[int], dict[str, Any]]] = []
    async with _closing_run(rig.orchestrator) as reports:
        async for _ in reports:
            trained = {s - _FIRST for c in rig.learner.calls for s in dict.fromkeys(c.seeds)}
            snapshots.append((trained, await rig.orchestrator.state_dict()))
    assert len(snapshots) == 6
    for trained, state in snapshots:
        buffered = [g["task"]["seed"] - _FIRST for g in state["buffer"]["groups"]]
        places = sorted(trained) + sorted(buffered) + list(state["pending_tasks"])
        assert sorted(places) == list(range(state["next_task"])), (trained, buffered, state["pending_tasks"])


class _InTransitStats(_FarBuffer):
    """A far buffer whose ``stats`` answer is taken when asked and arrives ``delay`` later, while
    its other calls land at once: room made by a ``sample`` meanwhile is not in the answer."""

    async def stats(self) -> dict[str, Any]:
        answer = self.inner.stats()
        await asyncio.sleep(self.delay)
        return dict(answer)

    async def sample(self, n_groups: int, *, current_version: int) -> list[TrajectoryGroup]:
        return self.inner.sample(n_groups, current_version=current_version)


async def test_room_made_while_the_producer_asks_a_far_buffer_is_not_lost() -> None:
    # The producer asks the buffer how full it is; the learner takes the batch while that answer
    # is on its way. Every group has ended, so only the learner's wake-up can start the next
    # ones: lost, the loop stalled for batch_timeout_s (CI: a runtime=monarch run after step 21).
    rig = _rig(mode="async", steps=6, groups_per_step=2, max_groups_in_flight=2, batch_timeout_s=2.0)
    rig.orchestrator.buffer = _InTransitStats(rig.buffer, delay=0.05)
    async with asyncio.timeout(20):   # a failing loop must fail this test, not hang the suite
        reports = await rig.run()
    assert [r["step"] for r in reports] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert all(r["time/wait_s"] < 1.0 for r in reports)


class _Reference:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    async def logprobs(self, trajectories: list[Trajectory]) -> list[list[float]]:
        self.batches.append([t.task.seed for t in trajectories])  # type: ignore[misc]
        return [[-0.5] * len(t.token_ids) for t in trajectories]

    def metrics(self) -> dict[str, float]:
        return {}


class _Rewards:
    """Reward workers that add 1.0 to the last turn of every episode of task seeds they are told."""

    def __init__(self, bonus_seeds: set[int]) -> None:
        self.bonus_seeds = bonus_seeds
        self.groups = 0

    async def score_group(self, group: TrajectoryGroup) -> None:
        await asyncio.sleep(0.01)
        self.groups += 1
        if group.task.seed in self.bonus_seeds:
            for t in group.trajectories:
                t.turns[-1].reward += 1.0


async def test_reference_logprobs_and_reward_workers_reach_the_learner() -> None:
    rig = _rig(mode="sync", steps=2, groups_per_step=2)  # episode k of every group wins iff k is even
    reference, rewards = _Reference(), _Rewards({_FIRST + 1})
    rig.orchestrator.reference, rig.orchestrator.rewards = reference, rewards
    reports = await rig.run()
    assert rewards.groups == 4
    # The learner saw the reference's logprobs of exactly its batch, and task 1's episodes each
    # with the env's reward (as task 0's, episode by episode) plus the reward workers' 1.0.
    calls = rig.learner.calls
    assert [sorted(set(c.seeds)) for c in calls] == [sorted(set(b)) for b in reference.batches]
    assert all(c.ref is not None and len(c.ref) == len(c.seeds) for c in calls)
    assert all(r["time/reference_s"] >= 0 for r in reports if r["batch/trained_sequences"] > 0)
    rewards_of_task1 = [r for c in calls for s, r in zip(c.seeds, c.rewards) if s == _FIRST + 1]
    rewards_of_task0 = [r for c in calls for s, r in zip(c.seeds, c.rewards) if s == _FIRST]
    assert rewards_of_task1 and all(r == w + 1.0 for r, w in zip(rewards_of_task1, rewards_of_task0))
