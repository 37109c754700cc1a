"""The echo environment (protocol tests): every message is echoed, reward 0.1 per character."""

from envs.echo.env import READY_MESSAGE, REWARD_PER_CHAR, EchoEnv
from envs.echo.models import EchoAction, EchoObservation, EchoState

__all__ = [
    "EchoAction",
    "EchoEnv",
    "EchoObservation",
    "EchoState",
    "READY_MESSAGE",
    "REWARD_PER_CHAR",
]
