"""Action, observation and state of the echo environment."""

from __future__ import annotations

from pydantic import Field

from forge_env.env import Action, Observation, State

__all__ = ["EchoAction", "EchoObservation", "EchoState"]


class EchoAction(Action):
    """The message to echo.

    >>> EchoAction(message="hi").message
    'hi'
    """

    message: str = Field(description="The message to echo back")


class EchoObservation(Observation):
    """The echoed message and its length (OpenEnv's echo_env shape).

    >>> EchoObservation(echoed_message="hi", message_length=2).message_length
    2
    """

    echoed_message: str = Field(description="The message sent, echoed back")
    message_length: int = Field(ge=0, description="Length of the message in characters")


class EchoState(State):
    """Episode id and step count (inherited), nothing hidden."""
