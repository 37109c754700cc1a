"""What one episode leaves behind: exact tokens, logprobs, loss mask, per-turn rewards."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

__all__ = ["Task", "TerminationReason", "Trajectory", "TrajectoryGroup", "Turn"]

TerminationReason = Literal[
    "terminated",        # the env ended the episode (win, loss, submit, ...)
    "truncated",         # the env truncated it (its own time limit)
    "max_turns",         # the rollout's turn limit
    "context_limit",     # the next prompt would not fit the generator's context
    "episode_deadline",  # the per-episode wall-clock deadline passed
    "step_deadline",     # one env step or generation took longer than its deadline
    "env_error",         # the env failed (crashed, connection lost, server error)
    "generator_error",   # the generator failed
]

#: Reasons an episode ended because something failed, not because the game ended.
FAILURE_REASONS: frozenset[str] = frozenset(
    {"episode_deadline", "step_deadline", "env_error", "generator_error"}
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """One episode's start: a reset seed and reset options.

    >>> Task(seed=3).key
    'seed=3'
    """

    seed: int | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str:
        """Readable id, equal for equal tasks (groups are keyed by it)."""
        opts = ",".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return f"seed={self.seed}" + (f",{opts}" if opts else "")


@dataclasses.dataclass(kw_only=True)
class Turn:
    """One model reply and what the env made of it.

    ``token_ids[completion_start:completion_end]`` of the trajectory are exactly the ids the
    generator sampled for this turn.
    """

    index: int
    completion_start: int
    completion_end: int
    text: str
    """The completion decoded (for transcripts and parsing; never re-tokenized)."""
    finish_reason: str
    version: int
    """Policy version that sampled this turn."""
    action: dict[str, Any] | None = None
    """The action sent to the env; None when the reply could not be parsed."""
    error: str | None = None
    """Why the reply was not a valid action (parse error or the env's rejection)."""
    observation_text: str = ""
    reward: float = 0.0
    generate_seconds: float = 0.0
    env_seconds: float = 0.0

    @property
    def num_completion_tokens(self) -> int:
        return self.completion_end - self.completion_start


@dataclasses.dataclass(kw_only=True)
class Trajectory:
    """A whole multi-turn episode as the learner needs it.

    ``token_ids`` is the full conversation: the first prompt, then for each turn the sampled
    completion followed by the env-side tokens (observation, chat-template glue).
    ``loss_mask[i] == 1`` exactly where ``token_ids[i]`` was sampled by the generator;
    ``logprobs[i]`` is the generator's logprob there and 0.0 elsewhere.
    """

    env_name: str
    task: Task
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    loss_mask: list[int] = dataclasses.field(default_factory=list)
    prompt_len: int = 0
    """Length of the first prompt."""
    turns: list[Turn] = dataclasses.field(default_factory=list)
    termination: TerminationReason = "terminated"
    error: str | None = None
    """What failed, for failure terminations."""
    success: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The env's info of the last step."""
    seconds: float = 0.0
    group_index: int = 0
    """Which of the task's G samples this is."""

    @property
    def rewards(self) -> list[float]:
        """Per-turn rewards."""
        return [t.reward for t in self.turns]

    @property
    def total_reward(self) -> float:
        return float(sum(self.rewards))

    @property
    def versions(self) -> list[int]:
        """Per-turn policy versions."""
        return [t.version for t in self.turns]

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def num_completion_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def failed(self) -> bool:
        """True when the episode ended by a failure (env, generator or deadline)."""
        return self.termination in FAILURE_REASONS

    @property
    def invalid_actions(self) -> int:
        """Turns whose reply was not a valid action."""
        return sum(t.error is not None for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``from_dict`` inverts it)."""
        out = dataclasses.asdict(self)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trajectory:
        data = dict(data)
        data["task"] = Task(**data["task"])
        data["turns"] = [Turn(**t) for t in data.get("turns", [])]
        return cls(**data)


@dataclasses.dataclass(kw_only=True)
class TrajectoryGroup:
    """The G samples of one task (GRPO normalises advantages within a group)."""

    task: Task
    trajectories: list[Trajectory]

    @property
    def rewards(self) -> list[float]:
        return [t.total_reward for t in self.trajectories]

    @property
    def min_version(self) -> int:
        """Oldest policy version of any turn in the group (staleness is judged by it)."""
        versions = [v for t in self.trajectories for v in t.versions]
        return min(versions) if versions else 0
