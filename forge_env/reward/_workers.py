"""RewardWorkers: score finished trajectories with a user's reward function, in this process.

The bookkeeping (which trajectories to score, applying scores and errors, counters, logging
once per kind of error) lives in :class:`_RewardWorkersBase`, shared with
:class:`forge_env.monarch._reward.MonarchRewardWorkers`, which only differs in where the
function runs.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

from forge_env.reward._config import RewardConfig
from forge_env.reward._load import normalize_spec
from forge_env.reward._score import _Outcome, _Scorer

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.rollout import Trajectory, TrajectoryGroup

__all__ = ["RewardWorkers"]

logger = logging.getLogger(__name__)

INFO_SCORE = "reward_fn"
"""``trajectory.info`` key of the fn's (unweighted) score."""
INFO_ERROR = "reward_fn_error"
"""``trajectory.info`` key of why a trajectory got no score."""


class _RewardWorkersBase(abc.ABC):
    """What every kind of reward workers shares: picking, applying, counting, logging."""

    def __init__(self, config: RewardConfig) -> None:
        if not isinstance(config, RewardConfig):
            raise TypeError(f"reward workers need a RewardConfig, got {type(config).__name__}")
        self.config = config
        self.spec = normalize_spec(config.fn)
        self._counts = dict.fromkeys(("scored", "errors", "timeouts", "skipped"), 0)
        self._seconds_total = 0.0
        self._window_sum = 0.0
        self._window_n = 0
        self._logged_kinds: set[str] = set()
        self._closed = False

    # --- what subclasses provide ----------------------------------------------------------------

    @abc.abstractmethod
    async def _score_all(self, trajectories: Sequence["Trajectory"]) -> list[_Outcome]:
        """One outcome per trajectory, in order. Raises only when no scoring is possible at all."""

    async def _close(self) -> None:
        """Release the workers (threads, processes)."""

    # --- the public contract --------------------------------------------------------------------

    async def score_group(self, group: "TrajectoryGroup") -> None:
        """Score every trajectory of ``group`` concurrently and apply the scores in place.

        A scored trajectory gets ``turns[-1].reward += weight * score`` and
        ``info["reward_fn"] = score``. A call that raises, returns no finite float or passes
        ``timeout_s`` adds nothing and sets ``info["reward_fn_error"]`` (a message naming the fn
        and the error); it is counted, logged once per kind of error, and never raised.
        Trajectories left alone (counted as ``skipped``): failed ones when ``skip_failed``,
        those without turns (no turn to add the reward to) and those already scored
        (``"reward_fn"`` in their info), so scoring a group twice adds its reward once.

        Raises:
            RuntimeError: the workers are closed.
        """
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed; create a new one")
        chosen = [t for t in group.trajectories if self._wanted(t)]
        self._counts["skipped"] += len(group.trajectories) - len(chosen)
        if not chosen:
            return
        outcomes = await self._score_all(chosen)
        for trajectory, outcome in zip(chosen, outcomes, strict=True):
            self._apply(trajectory, outcome)

    def metrics(self) -> dict[str, float]:
        """Counters since the start: ``reward_fn/scored``, ``reward_fn/errors`` (raised or
        returned no finite float), ``reward_fn/timeouts``, ``reward_fn/skipped``,
        ``reward_fn/seconds_total`` (time inside the fn, summed over calls); and
        ``reward_fn/mean``, the mean score of the trajectories scored since the previous
        ``metrics()`` call (0.0 if none; ``reward_fn/window_scored`` says how many)."""
        window_mean = self._window_sum / self._window_n if self._window_n else 0.0
        out = {f"reward_fn/{k}": float(v) for k, v in self._counts.items()}
        out["reward_fn/mean"] = window_mean
        out["reward_fn/window_scored"] = float(self._window_n)
        out["reward_fn/seconds_total"] = self._seconds_total
        self._window_sum, self._window_n = 0.0, 0
        return out

    async def aclose(self) -> None:
        """Release the workers. Idempotent; ``score_group`` raises afterwards."""
        if self._closed:
            return
        self._closed = True
        await self._close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- bookkeeping ----------------------------------------------------------------------------

    def _wanted(self, trajectory: "Trajectory") -> bool:
        if self.config.skip_failed and trajectory.failed:
            return False
        return bool(trajectory.turns) and INFO_SCORE not in trajectory.info

    def _apply(self, trajectory: "Trajectory", outcome: _Outcome) -> None:
        self._seconds_total += outcome.seconds
        if outcome.score is not None:
            trajectory.turns[-1].reward += self.config.weight * outcome.score
            trajectory.info[INFO_SCORE] = outcome.score
            trajectory.info.pop(INFO_ERROR, None)
            self._counts["scored"] += 1
            self._window_sum += outcome.score
            self._window_n += 1
            return
        trajectory.info[INFO_ERROR] = outcome.error
        self._counts["timeouts" if outcome.kind == "timeout" else "errors"] += 1
        if outcome.kind not in self._logged_kinds:
            self._logged_kinds.add(outcome.kind)
            counter = "reward_fn/timeouts" if outcome.kind == "timeout" else "reward_fn/errors"
            detail = f"\n{outcome.traceback}" if outcome.traceback else ""
            logger.warning(
                "%s (task %s, sample %d): no reward added; the run goes on. Later %s errors are "
                "counted in %s, not logged.%s",
                outcome.error, trajectory.task.key, trajectory.group_index, outcome.kind or "such",
                counter, detail,
            )
        else:
            logger.debug("%s (task %s, sample %d)", outcome.error, trajectory.task.key, trajectory.group_index)


class RewardWorkers(_RewardWorkersBase):
    """Apply a reward function to finished trajectories, in this process (threads).

    The function runs ``config.concurrency`` trajectories at a time: a sync function in
    threads (so a blocking judge or verifier does not stall the event loop), an ``async def``
    one on the loop. A bad ``fn`` spec fails here, at construction.

    >>> import asyncio
    >>> from forge_env.rollout import Task, Trajectory, TrajectoryGroup, Turn
    >>> turn = Turn(index=0, completion_start=0, completion_end=90, text="...", finish_reason="stop",
    ...             version=0, reward=1.0)
    >>> group = TrajectoryGroup(task=Task(seed=0), trajectories=[
    ...     Trajectory(env_name="echo", task=Task(seed=0), loss_mask=[1] * 90, turns=[turn])])
    >>> async def main():
    ...     cfg = RewardConfig(fn="forge_env.reward:length_penalty", kwargs={"budget": 80})
    ...     async with RewardWorkers(cfg) as workers:
    ...         await workers.score_group(group)
    ...         return workers.metrics()["reward_fn/scored"]
    >>> asyncio.run(main())
    1.0
    >>> group.trajectories[0].total_reward, group.trajectories[0].info["reward_fn"]
    (0.9, -0.1)

    Raises:
        RewardSpecError: ``config.fn`` names nothing callable as ``fn(trajectory)`` (the message
            says why: module not found, attribute missing, not callable, wrong signature).
    """

    def __init__(self, config: RewardConfig) -> None:
        super().__init__(config)
        self._scorer = _Scorer(self.spec, kwargs=config.kwargs, timeout_s=config.timeout_s,
                               concurrency=config.concurrency)

    async def _score_all(self, trajectories: Sequence["Trajectory"]) -> list[_Outcome]:
        return list(await asyncio.gather(*(self._scorer.score(t) for t in trajectories)))

    async def _close(self) -> None:
        self._scorer.close()

    def metrics(self) -> dict[str, float]:
        """As :meth:`_RewardWorkersBase.metrics`, plus ``reward_fn/stuck``: threads still running
        a sync call whose ``timeout_s`` passed (they end on their own; many means the fn hangs)."""
        out = super().metrics()
        out["reward_fn/stuck"] = float(self._scorer.stuck)
        return out

    def __repr__(self) -> str:
        return f"RewardWorkers({self.spec!r}, weight={self.config.weight}, concurrency={self.config.concurrency})"
