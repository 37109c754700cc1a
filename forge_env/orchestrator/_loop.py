"""The GRPO loop: collectors feed a replay buffer, the learner trains on it, weights flow back.

Read :meth:`Orchestrator.run` top to bottom; one learner step is

1. wait until the buffer holds ``groups_per_step`` fresh groups (at most
   ``max_policy_age`` versions older than the learner), take them;
2. group-normalised advantages; groups whose episodes all scored the same carry no signal and
   are left out of the batch (counted);
3. with a KL term (``kl_coef > 0``), the reference policy's logprobs of the batch;
4. ``learner.train_step`` in a worker thread, so the event loop keeps stepping envs and
   streaming generations meanwhile;
5. every ``weight_push_every`` steps, push the learner's weights to the generator, stamped
   with the learner's version.

Each finished group is scored by the reward workers (when given) before it enters the buffer.
The buffer, the reference and the reward workers are awaited through one interface each, so
they may live in this process or in Monarch actors (``runtime: monarch``) with no change here.

In ``async`` mode a producer keeps ``groups_in_flight`` groups generating or waiting in the
buffer at all times, so generation of the next batch overlaps training on this one. In ``sync``
mode the batch is generated after the previous step's push and before this step's training.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from forge_env.buffer import AsyncBuffer, ReplayBuffer, as_async_buffer
from forge_env.learner._advantages import AdvantageConfig, group_advantages, is_degenerate
from forge_env.orchestrator._config import OrchestratorConfig
from forge_env.rollout import RolloutCollector, Task, Trajectory, TrajectoryGroup

__all__ = ["LoopStalledError", "Orchestrator", "StepReport"]

logger = logging.getLogger(__name__)

_STATE_FORMAT = 1

StepReport = dict[str, float]
"""Flat metrics of one learner step (``step``, ``reward/mean``, ``success/rate``, ...)."""

TaskFactory = Callable[[int], Task]
"""``task_factory(i)`` is the ``i``-th training task (0-based)."""


class LoopStalledError(RuntimeError):
    """The learner waited ``batch_timeout_s`` for a batch the collectors did not deliver."""


@dataclasses.dataclass
class _Window:
    """What happened since the last step report (collector side)."""

    started: float = dataclasses.field(default_factory=time.monotonic)
    completion_tokens: int = 0
    episodes: int = 0
    generating_s: float = 0.0
    """Wall time during which at least one group was generating."""


class Orchestrator:
    """Runs GRPO: a rollout collector, a replay buffer, a learner and a generator.

    Example::

        orchestrator = Orchestrator(learner=learner, generator=generator, collector=collector,
                                    buffer=ReplayBuffer(BufferConfig(max_policy_age=1)),
                                    config=OrchestratorConfig(mode="async", steps=40))
        async for report in orchestrator.run():
            print(report["step"], report["reward/mean"], report["policy_age/mean"])

    The caller may await inside the ``async for`` body (evaluate, save a checkpoint): the
    learner waits there, while in async mode the collectors go on up to their bound.
    :meth:`state_dict` taken there is a consistent snapshot for resuming.
    """

    def __init__(
        self,
        *,
        learner: Any,
        generator: Any,
        collector: RolloutCollector,
        buffer: ReplayBuffer | AsyncBuffer,
        config: OrchestratorConfig | None = None,
        advantage: AdvantageConfig | None = None,
        task_factory: TaskFactory | None = None,
        reference: Any | None = None,
        rewards: Any | None = None,
    ) -> None:
        self.learner = learner
        self.generator = generator
        self.collector = collector
        self.buffer: AsyncBuffer = as_async_buffer(buffer)
        """The buffer as awaited here (a :class:`ReplayBuffer` given is wrapped in an ``InProcessBuffer``)."""
        self.reference = reference
        """Reference policy (``await reference.logprobs(trajectories)``) for ``kl_coef > 0``, or None."""
        self.rewards = rewards
        """Reward workers (``await rewards.score_group(group)``) applied to each finished group, or None."""
        self.config = config or OrchestratorConfig()
        self.advantage = advantage or AdvantageConfig()
        first = self.config.first_task_seed
        self.task_factory: TaskFactory = task_factory or (lambda i: Task(seed=first + i))
        self._check_staleness_bound()
        self._check_sizes()
        self.step = 0
        """Learner steps done by this loop (a resumed run continues the count)."""
        self._next_task = 0
        self._pending: list[int] = []     # task indices to (re)issue before new ones
        self._in_flight: dict[int, asyncio.Task[None]] = {}
        self._adding: set[int] = set()    # in _in_flight, their group's buffer.add already sent
        self._generating_since: float | None = None
        self._window = _Window()
        self._room = asyncio.Event()
        self._producer_error: BaseException | None = None

    def _check_sizes(self) -> None:
        cfg, capacity = self.config, self.buffer.config.capacity
        if cfg.mode == "async" and cfg.groups_in_flight < cfg.groups_per_step:
            raise ValueError(
                f"async mode keeps max_groups_in_flight={cfg.groups_in_flight} groups generating or buffered, "
                f"fewer than the groups_per_step={cfg.groups_per_step} of one batch: the learner would wait "
                f"forever. Set max_groups_in_flight >= {cfg.groups_per_step} (or None)."
            )
        held = cfg.groups_in_flight if cfg.mode == "async" else cfg.groups_per_step
        if capacity < held:
            raise ValueError(
                f"the buffer's capacity {capacity} is below the {held} groups this loop keeps in it "
                f"({'max_groups_in_flight' if cfg.mode == 'async' else 'groups_per_step'}): groups would be "
                f"evicted before the learner sees them. Set the buffer's capacity >= {held}."
            )

    def _check_staleness_bound(self) -> None:
        age, k = self.buffer.config.max_policy_age, self.config.weight_push_every
        # Samples of generator version P are trained at learner version >= P. Async: the batch
        # of step L was (partly) generated while step L-1 trained, i.e. with the weights pushed
        # k steps ago at worst -> age k. Sync: generated after the last push -> age k - 1.
        need = k if self.config.mode == "async" else k - 1
        if age < need:
            raise ValueError(
                f"{self.config.mode} mode with weight_push_every={k} produces samples up to {need} "
                f"policy versions old, but the buffer's max_policy_age is {age}: every batch would be "
                f"dropped as stale and the learner would wait forever. Set max_policy_age >= {need} "
                f"or push weights more often."
            )

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> AsyncGenerator[StepReport, None]:
        """Train until ``config.steps`` learner steps are done, yielding one report per step."""
        cfg = self.config
        await self._push_if_behind()
        producer = asyncio.ensure_future(self._produce()) if cfg.mode == "async" else None
        try:
            while self.step < cfg.steps:
                step_started = time.monotonic()
                if producer is None:
                    await self._generate_batch()
                groups = await self._take_batch(producer)
                waited = time.monotonic() - step_started
                report = await self._train(groups)
                pushed = 0.0
                due = self.step % cfg.weight_push_every == 0 or self.step == cfg.steps
                if due and self.generator.version != self.learner.version:
                    pushed = await self._push()
                report.update(self._timing(step_started, waited, pushed, report))
                yield report
        finally:
            if producer is not None:
                producer.cancel()
                await asyncio.gather(producer, return_exceptions=True)
            await self._cancel_in_flight()

    async def _generate_batch(self) -> None:
        """Sync mode: generate until the buffer holds a batch (groups a filter dropped are replaced)."""
        cfg = self.config
        version = self.learner.version
        rounds = 0
        while (fresh := await self.buffer.num_fresh(version)) < cfg.groups_per_step:
            rounds += 1
            if rounds > 8:
                raise LoopStalledError(
                    f"8 rounds of generation left the buffer with {fresh} of "
                    f"{cfg.groups_per_step} usable groups (buffer stats {await self.buffer.stats()}): its "
                    "filters (drop_failed / drop_degenerate) drop nearly everything; turn them off or "
                    "check the env"
                )
            need = cfg.groups_per_step - fresh
            indices = [self._take_task_index() for _ in range(need)]
            # Registered in _in_flight like the async producer's groups: the busy-time window
            # closes when the last group ends, and run()'s finally cancels them if one fails.
            spawned = [asyncio.ensure_future(self._spawn_group(i)) for i in indices]
            self._in_flight.update(zip(indices, spawned))
            try:
                async with asyncio.timeout(cfg.batch_timeout_s):
                    await asyncio.gather(*spawned)
            except TimeoutError:
                raise LoopStalledError(await self._stalled_message(version)) from None

    async def _take_batch(self, producer: asyncio.Future[None] | None) -> list[TrajectoryGroup]:
        cfg = self.config
        version = self.learner.version
        waiter = asyncio.ensure_future(
            self.buffer.wait_for(cfg.groups_per_step, current_version=version, timeout=cfg.batch_timeout_s)
        )
        watched: set[asyncio.Future[Any]] = {waiter} | ({producer} if producer is not None else set())
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():  # the producer ended: it failed
            waiter.cancel()
            assert producer is not None
            producer.result()  # raises the producer's error
            raise LoopStalledError("the rollout producer stopped without an error")
        if not waiter.result():
            raise LoopStalledError(await self._stalled_message(version))
        groups = await self.buffer.sample(cfg.groups_per_step, current_version=version)
        self._room.set()
        return groups

    async def _stalled_message(self, version: int) -> str:
        cfg = self.config
        stats = self.collector.stats.to_dict()
        return (
            f"waited {cfg.batch_timeout_s} s for {cfg.groups_per_step} fresh groups at policy version "
            f"{version}; the buffer holds {await self.buffer.num_fresh(version)} (stats {await self.buffer.stats()}); "
            f"collectors played {stats['episodes']} episodes, {stats['failed']} failed "
            f"(terminations {stats['terminations']}); {len(self._in_flight)} groups still generating. "
            "Check the env and generator, or raise "
            "orchestrator.batch_timeout_s"
        )

    async def _train(self, groups: list[TrajectoryGroup]) -> StepReport:
        version = self.learner.version
        trajectories: list[Trajectory] = [t for g in groups for t in g.trajectories]
        batch: list[Trajectory] = []
        advantages: list[list[float]] = []
        degenerate = 0
        for group in groups:
            if is_degenerate(group, self.advantage):
                degenerate += 1
                continue
            batch += group.trajectories
            advantages += group_advantages(group, self.advantage)
        report: StepReport = {}
        if batch:
            ref_logprobs = None
            if self.reference is not None:
                ref_started = time.monotonic()
                ref_logprobs = await self.reference.logprobs(batch)
                report["time/reference_s"] = time.monotonic() - ref_started
            train_started = time.monotonic()
            if ref_logprobs is None:
                metrics = await asyncio.to_thread(self.learner.train_step, batch, advantages)
            else:
                metrics = await asyncio.to_thread(
                    functools.partial(self.learner.train_step, batch, advantages, ref_logprobs=ref_logprobs))
            report.update(metrics)
            report["time/train_s"] = time.monotonic() - train_started
        else:
            # Every group scored alike (all solved, or all failed): no gradient to take.
            logger.info("step %d: all %d groups scored alike; no learner update", self.step + 1, len(groups))
            report["time/train_s"] = 0.0
        self.step += 1
        ages = [version - min(t.versions, default=version) for t in trajectories]
        rewards = [t.total_reward for t in trajectories]
        turns = sum(t.num_turns for t in trajectories)
        mean_reward = sum(rewards) / len(rewards)
        report.update({
            "step": float(self.step),
            "version": float(self.learner.version),
            "reward/mean": mean_reward,
            "reward/std": math.sqrt(sum((r - mean_reward) ** 2 for r in rewards) / len(rewards)),
            "success/rate": sum(t.success for t in trajectories) / len(trajectories),
            "episode/turns_mean": turns / len(trajectories),
            "episode/invalid_rate": sum(t.invalid_actions for t in trajectories) / max(turns, 1),
            "episode/failed": float(sum(t.failed for t in trajectories)),
            "episode/completion_tokens_mean": sum(t.num_completion_tokens for t in trajectories)
            / len(trajectories),
            "policy_age/mean": sum(ages) / len(ages),
            "policy_age/max": float(max(ages)),
            "batch/groups": float(len(groups)),
            "batch/degenerate_groups": float(degenerate),
            "batch/trained_sequences": float(len(batch)),
        })
        for key, value in (await self.buffer.stats()).items():
            if isinstance(value, (int, float)):
                report[f"buffer/{key}"] = float(value)
        return report

    def _timing(self, started: float, waited: float, pushed: float, report: StepReport) -> StepReport:
        now = time.monotonic()
        window, self._window = self._window, _Window(started=now)
        if self._generating_since is not None:  # close the open busy interval at the window's edge
            window.generating_s += now - self._generating_since
            self._generating_since = now
        span = max(now - window.started, 1e-9)
        step_s = now - started
        return {
            "time/step_s": step_s,
            "time/wait_s": waited,
            "time/push_s": pushed,
            "throughput/completion_tokens": float(window.completion_tokens),
            "throughput/tokens_per_s": window.completion_tokens / span,
            "throughput/episodes_per_s": window.episodes / span,
            "util/learner": report.get("time/train_s", 0.0) / span,
            "util/generator": min(1.0, window.generating_s / span),
        }

    # -- weights --------------------------------------------------------------------------

    async def _push(self) -> float:
        started = time.monotonic()
        push_weights = getattr(self.learner, "push_weights", None)
        if push_weights is not None:
            # A learner in other processes sends its weights to the generator's replicas
            # itself, without routing every tensor through this process.
            await push_weights(self.generator)
        else:
            named = await asyncio.to_thread(lambda: list(self.learner.hf_named_tensors()))
            await self.generator.update_weights(named, version=self.learner.version)
        return time.monotonic() - started

    async def _push_if_behind(self) -> None:
        if self.generator.version != self.learner.version:
            logger.info("pushing learner weights (version %d) to the generator (version %d)",
                        self.learner.version, self.generator.version)
            await self._push()

    # -- producing ------------------------------------------------------------------------

    def _take_task_index(self) -> int:
        if self._pending:
            return self._pending.pop(0)
        index = self._next_task
        self._next_task += 1
        return index

    async def _produce(self) -> None:
        """Async mode: keep ``groups_in_flight`` groups generating or waiting in the buffer."""
        bound = self.config.groups_in_flight
        while True:
            while True:
                # Cleared before asking: a buffer in another process answers later, and room
                # made meanwhile (the learner took a batch) must still wake the wait below.
                self._room.clear()
                if self._producer_error is not None:
                    raise self._producer_error
                if len(self._in_flight) + (await self.buffer.stats())["size"] < bound:
                    break
                await self._room.wait()
            index = self._take_task_index()
            self._in_flight[index] = asyncio.ensure_future(self._spawn_group(index))

    async def _spawn_group(self, index: int) -> None:
        task = self.task_factory(index)
        if self._generating_since is None:
            self._generating_since = time.monotonic()
        try:
            trajs = await asyncio.gather(
                *(self.collector.play(task, group_index=k) for k in range(self.collector.config.group_size))
            )
            group = TrajectoryGroup(task=task, trajectories=list(trajs))
            self._window.episodes += len(trajs)
            self._window.completion_tokens += sum(t.num_completion_tokens for t in trajs)
            if self.rewards is not None:
                await self.rewards.score_group(group)  # one trajectory's error is recorded, not raised
            # From here the group counts as in the buffer for state_dict(), even while the add
            # is still on its way to a buffer in another process (calls to it arrive in order).
            self._adding.add(index)
            await self.buffer.add(group)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # play() records episode failures itself; this is a bug or a dead loop
            logger.error("generating task %s failed: %r", task.key, e)
            self._producer_error = e
            raise
        finally:
            self._in_flight.pop(index, None)
            self._adding.discard(index)
            if not self._in_flight and self._generating_since is not None:
                self._window.generating_s += time.monotonic() - self._generating_since
                self._generating_since = None
            self._room.set()

    async def _cancel_in_flight(self) -> None:
        # Tasks cut short go back to the queue: a checkpoint taken after run() re-issues them.
        self._pending = sorted(set(self._pending) | (set(self._in_flight) - self._adding))
        running = list(self._in_flight.values())
        for fut in running:
            fut.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    # -- checkpoints ----------------------------------------------------------------------

    async def state_dict(self) -> dict[str, Any]:
        """The loop's position as JSON data: step, the task stream (groups still generating
        are re-issued on resume), and the buffer's contents. The learner saves its own."""
        # Taken before the buffer's snapshot is asked for: a group whose add was sent is in it.
        pending = sorted(set(self._pending) | (set(self._in_flight) - self._adding))
        return {
            "format": _STATE_FORMAT,
            "step": self.step,
            "next_task": self._next_task,
            "pending_tasks": pending,
            "buffer": await self.buffer.state_dict(),
        }

    async def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; call before :meth:`run`."""
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"orchestrator state has format {state.get('format')!r}, this forge-env reads format "
                f"{_STATE_FORMAT}: resume with the version that saved it"
            )
        self.step = int(state["step"])
        self._next_task = int(state["next_task"])
        self._pending = [int(i) for i in state["pending_tasks"]]
        await self.buffer.load_state_dict(state["buffer"])
