"""Action, observation and state of the guess-the-number environment."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from forge_env.env import Action, Observation, State

__all__ = ["Feedback", "GuessAction", "GuessObservation", "GuessState"]

Feedback = Literal["start", "higher", "lower", "correct", "invalid"]


class GuessAction(Action):
    """One guess.

    Integer-valued strings and floats (``"7"``, ``7.0``) are accepted, as pydantic does;
    booleans are not.

    >>> GuessAction(guess=7).guess
    7
    """

    guess: int = Field(description="Your guess: an integer in the game's range")

    @field_validator("guess", mode="before")
    @classmethod
    def _no_bool(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("a boolean is not a guess; send an integer")
        return value


class GuessObservation(Observation):
    """What the player sees after each turn.

    ``lo``/``hi`` are the interval the number is known to lie in: the full range at the
    start, narrowed by every "higher"/"lower" answer.

    >>> GuessObservation(text="Guess", feedback="start", turns_left=6, lo=1, hi=16,
    ...                  range_lo=1, range_hi=16).lo
    1
    """

    text: str = Field(description="Readable summary of the turn, for a language model")
    feedback: Feedback = Field(description="Answer to the last guess ('start' after reset)")
    last_guess: int | None = Field(default=None, description="The last valid integer guess")
    turns_left: int = Field(ge=0, description="Guesses left in this episode")
    lo: int = Field(description="Smallest value the number can still be")
    hi: int = Field(description="Largest value the number can still be")
    range_lo: int = Field(description="Smallest value of the game's range")
    range_hi: int = Field(description="Largest value of the game's range")
    error: str | None = Field(default=None, description="Why the last action was invalid")


class GuessState(State):
    """Episode bookkeeping; the hidden number is not part of it."""

    range_lo: int | None = None
    range_hi: int | None = None
    max_turns: int | None = None
    turns_used: int = 0
    done: bool = False
    won: bool = False
