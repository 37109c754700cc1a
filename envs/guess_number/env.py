"""Guess the number: a tiny multi-turn environment for language-model agents.

The hidden number is ``random.Random(seed).randint(lo, hi)`` (with no seed,
the env's generator continues, as in gymnasium). After each guess the player hears
"higher", "lower" or "correct" and the interval the number is still in.

Rules (all documented choices):

- Defaults ``lo=1, hi=16, max_turns=6``: small enough for a tiny LM, and a
  binary search (at most ``ceil(log2(16 + 1)) = 5`` guesses) always wins.
- Reward: only the correct guess is rewarded, ``max(0, 1 - turn_cost * (turn - 1))`` on
  turn ``turn`` (1 with the default ``turn_cost=0``); every other step gives 0.
- Optional progress reward (``progress_reward=p``, default 0): each valid guess also earns
  ``p * (1 - max(below, above) / n)``, where ``n`` numbers were still possible and ``below`` /
  ``above`` of them lie below / above the guess: the share of the interval the guess rules out
  whatever the answer. It depends only on the interval and the guess (not on the hidden
  number), is largest for the middle (about ``p / 2``), and 0 for a guess outside the interval
  still possible. The win alone decides success; this is a dense per-turn signal for RL
  (measured: GRPO on the win reward alone did not improve the warm-started tiny model in 100
  steps, since which guess wins is mostly luck).
- Running out of turns ends the episode as ``terminated`` with reward 0: the turn limit is a
  rule of this game, stated in every observation. ``truncated`` is left to limits imposed
  from outside (a rollout deadline).
- An invalid guess (out of range, not an integer, missing field, extra fields) is not an
  exception: it costs a turn and returns ``feedback="invalid"`` with an ``error`` message, so
  a model's bad output is part of its trajectory.
- ``step`` before ``reset`` or after the episode ended raises ``EpisodeNotStartedError``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import uuid
from typing import Any

from pydantic import BaseModel, Field

from forge_env._exceptions import EpisodeNotStartedError, InvalidActionError
from forge_env.env import AsyncEnv, EnvMetadata, Observation, ResetResult, StepResult

from envs.guess_number.models import Feedback, GuessAction, GuessObservation, GuessState

__all__ = ["GuessNumberConfig", "GuessNumberEnv", "solve"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class GuessNumberConfig:
    """Game settings: constructor arguments, overridable per episode by reset options."""

    lo: int = 1
    """Smallest possible number."""
    hi: int = 16
    """Largest possible number."""
    max_turns: int = 6
    """Guesses allowed per episode (invalid guesses count)."""
    turn_cost: float = 0.0
    """Reward taken off the win per guess before the correct one."""
    progress_reward: float = 0.0
    """Weight of the per-guess progress reward (see the module docstring); 0: off."""

    def __post_init__(self) -> None:
        for field in ("lo", "hi", "max_turns"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{field} must be an integer, got {value!r}")
        if self.hi <= self.lo:
            raise ValueError(f"hi must be greater than lo; got lo={self.lo}, hi={self.hi}")
        if self.hi - self.lo > 1_000_000:
            raise ValueError(f"the range {self.lo}..{self.hi} is too large (max 10^6 values)")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {self.max_turns}")
        cost = self.turn_cost
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0.0 <= cost <= 1.0:
            raise ValueError(f"turn_cost must be a number in [0, 1], got {self.turn_cost!r}")
        progress = self.progress_reward
        if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 10.0:
            raise ValueError(f"progress_reward must be a number in [0, 10], got {self.progress_reward!r}")


class _MalformedGuess(GuessAction):
    """A guess that failed validation, carried to ``step`` so it answers "invalid"."""

    guess: Any = Field(default=None)  # type: ignore[assignment]
    problem: str = ""


class GuessNumberEnv(AsyncEnv[GuessObservation, GuessAction]):
    """Guess a hidden integer in ``[lo, hi]`` within ``max_turns`` guesses.

    Action ``{"guess": 8}``. Reset options (one episode only): ``lo``,
    ``hi``, ``max_turns``, ``turn_cost``, ``episode_id``. See the module docstring
    for the rules.

    For gymnasium (:func:`~forge_env.to_gymnasium`): ``action_space`` is
    ``Discrete(hi - lo + 1, start=lo)`` and ``observation_space`` a
    ``Text`` holding the observation's JSON, both from the constructor's settings.

    >>> env = GuessNumberEnv().sync()
    >>> obs, info = env.reset(seed=3)
    >>> obs.lo, obs.hi, obs.turns_left
    (1, 16, 6)
    >>> while True:
    ...     obs, reward, terminated, truncated, info = env.step(solve(obs))
    ...     if terminated:
    ...         break
    >>> obs.feedback, reward
    ('correct', 1.0)
    """

    action_type = GuessAction
    observation_type = GuessObservation
    state_type = GuessState
    supports_concurrent_sessions = True  # all state is per instance
    metadata = EnvMetadata(
        name="guess_number",
        description="Guess a hidden integer in a few turns from higher/lower hints.",
        version="0.1.0",
    )

    def __init__(
        self,
        *,
        lo: int = 1,
        hi: int = 16,
        max_turns: int = 6,
        turn_cost: float = 0.0,
        progress_reward: float = 0.0,
    ) -> None:
        self.config = GuessNumberConfig(lo=lo, hi=hi, max_turns=max_turns, turn_cost=turn_cost,
                                        progress_reward=progress_reward)
        self._rng: random.Random | None = None
        self._game = self.config
        self._target = 0
        self._lo = self._hi = 0
        self._turns_used = 0
        self._last_guess: int | None = None
        self._started = False
        self._done = False
        self._won = False
        self._episode_id: str | None = None

    # --- gymnasium spaces (gymnasium imported only when asked) ---------------------------

    @functools.cached_property
    def action_space(self) -> Any:  # type: ignore[override]
        spaces = _gym_spaces()
        size = self.config.hi - self.config.lo + 1
        return spaces.Discrete(size, start=self.config.lo)

    @functools.cached_property
    def observation_space(self) -> Any:  # type: ignore[override]
        import string

        return _gym_spaces().Text(max_length=4096, min_length=1, charset=string.printable)

    def action_from_space(self, sample: Any) -> GuessAction:
        return GuessAction(guess=int(sample))

    # --- the contract ----------------------------------------------------------------------

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> ResetResult[GuessObservation]:
        options = dict(options or {})
        episode_id = options.pop("episode_id", None)
        unknown = set(options) - {f.name for f in dataclasses.fields(GuessNumberConfig)}
        if unknown:
            raise ValueError(
                f"unknown reset options {sorted(unknown)}; guess_number accepts lo, "
                "hi, max_turns, turn_cost, progress_reward and episode_id"
            )
        game = dataclasses.replace(self.config, **options)
        if seed is not None or self._rng is None:
            # Seeded: the episode is a function of the seed. Unseeded: continue the generator.
            self._rng = random.Random(seed)
        self._game = game
        self._target = self._rng.randint(game.lo, game.hi)
        self._lo, self._hi = game.lo, game.hi
        self._turns_used = 0
        self._last_guess = None
        self._started, self._done, self._won = True, False, False
        self._episode_id = str(episode_id) if episode_id is not None else uuid.uuid4().hex
        text = (
            f"I am thinking of an integer from {game.lo} to {game.hi}. "
            f"Guess it in at most {game.max_turns} turns. After each guess I will say "
            f"whether the number is higher or lower."
        )
        return ResetResult(self._observation(text, "start"), {})

    async def step(self, action: GuessAction | dict[str, Any]) -> StepResult[GuessObservation]:
        if not self._started:
            raise EpisodeNotStartedError("step() before reset(): call reset() first", env_name=self.name)
        if self._done:
            raise EpisodeNotStartedError(
                "the episode is over: call reset() to start a new one", env_name=self.name
            )
        parsed = self.parse_action(action)
        game = self._game
        self._turns_used += 1
        turns_left = game.max_turns - self._turns_used
        guess = parsed.guess
        feedback: Feedback
        error: str | None = None
        reward = 0.0
        lo_before, hi_before = self._lo, self._hi
        if isinstance(parsed, _MalformedGuess):
            feedback, error = "invalid", parsed.problem
        elif not game.lo <= guess <= game.hi:
            feedback = "invalid"
            error = f"{guess} is outside the range {game.lo}..{game.hi}"
        elif guess == self._target:
            feedback = "correct"
            reward = max(0.0, 1.0 - game.turn_cost * (self._turns_used - 1))
            self._won = True
        elif guess < self._target:
            feedback = "higher"
            self._lo = max(self._lo, guess + 1)
        else:
            feedback = "lower"
            self._hi = min(self._hi, guess - 1)
        if feedback != "invalid":
            self._last_guess = guess
            if game.progress_reward and lo_before <= guess <= hi_before:
                n = hi_before - lo_before + 1
                worst_left = max(guess - lo_before, hi_before - guess)
                reward += game.progress_reward * (1.0 - worst_left / n)
        self._done = self._won or turns_left == 0

        if feedback == "correct":
            turns = f"{self._turns_used} turn{'s' if self._turns_used != 1 else ''}"
            text = f"Correct! The number was {self._target}. You found it in {turns}."
        else:
            if feedback == "invalid":
                first = f"Invalid guess: {error}. Send an integer from {game.lo} to {game.hi}."
            else:
                too = "low" if feedback == "higher" else "high"
                first = f"{guess} is too {too}: the number is {feedback}."
            if self._done:
                text = f"{first} No turns left. The number was {self._target}."
            else:
                text = (
                    f"{first} It is between {self._lo} and {self._hi}. "
                    f"{turns_left} turn{'s' if turns_left != 1 else ''} left."
                )
        info: dict[str, Any] = {"target": self._target, "won": self._won} if self._done else {}
        return StepResult(self._observation(text, feedback, error), reward, self._done, False, info)

    async def state(self) -> GuessState:
        return GuessState(
            episode_id=self._episode_id,
            step_count=self._turns_used,
            range_lo=self._game.lo if self._started else None,
            range_hi=self._game.hi if self._started else None,
            max_turns=self._game.max_turns if self._started else None,
            turns_used=self._turns_used,
            done=self._done,
            won=self._won,
        )

    def parse_action(self, action: GuessAction | dict[str, Any]) -> GuessAction:  # type: ignore[override]
        """Validate an action; a malformed one becomes an "invalid" guess instead of an error."""
        try:
            return super().parse_action(action)
        except InvalidActionError as e:
            problem = "; ".join(
                f"{'.'.join(str(p) for p in err.get('loc', ())) or 'action'}: {err.get('msg')}"
                for err in e.errors[:3]
            ) or e.message
            hint = f"expected {{\"guess\": <integer>}}, got {_short(action)} ({problem})"
            return _MalformedGuess.model_construct(guess=None, problem=hint)

    def _observation(self, text: str, feedback: Feedback, error: str | None = None) -> GuessObservation:
        game = self._game
        return GuessObservation(
            text=text,
            feedback=feedback,
            last_guess=self._last_guess,
            turns_left=game.max_turns - self._turns_used,
            lo=self._lo,
            hi=self._hi,
            range_lo=game.lo,
            range_hi=game.hi,
            error=error,
        )


def solve(observation: Observation | dict[str, Any]) -> GuessAction:
    """The binary-search policy: guess the middle of the interval still possible.

    It wins every game within ``ceil(log2(n + 1))`` guesses for ``n`` possible numbers
    (5 for the default 1..16).

    >>> solve({"lo": 1, "hi": 16}).guess
    8
    """
    # Any observation model with lo/hi fields works, e.g. RemoteEnv's untyped AnyObservation.
    data = observation.model_dump() if isinstance(observation, BaseModel) else observation
    return GuessAction(guess=(int(data["lo"]) + int(data["hi"])) // 2)


def max_guesses_needed(n: int) -> int:
    """Worst-case guesses of binary search over ``n`` values: ``ceil(log2(n + 1))``."""
    return math.ceil(math.log2(n + 1))


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value.model_dump() if hasattr(value, "model_dump") else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _gym_spaces() -> Any:
    try:
        from gymnasium import spaces
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "gymnasium spaces need gymnasium: pip install 'forge-env[gym]'"
        ) from e
    return spaces
