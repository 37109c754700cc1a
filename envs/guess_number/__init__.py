"""Guess the number: find a hidden integer from higher/lower hints in a few turns."""

from envs.guess_number.env import GuessNumberConfig, GuessNumberEnv, max_guesses_needed, solve
from envs.guess_number.models import Feedback, GuessAction, GuessObservation, GuessState

__all__ = [
    "Feedback",
    "GuessAction",
    "GuessNumberConfig",
    "GuessNumberEnv",
    "GuessObservation",
    "GuessState",
    "max_guesses_needed",
    "solve",
]
