"""Action and observation of the FrozenLake environment.

Plain pydantic models (no gymnasium import), so a client of a FrozenLake server can use them
without installing gymnasium. They have the fields of forge-env's generic gymnasium
adapter (``forge_env.env._gymnasium.GymAction`` / ``GymObservation``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, StrictInt, StrictStr

from forge_env.env import Action, Observation

__all__ = ["ACTION_NAMES", "FrozenLakeAction", "FrozenLakeObservation"]

#: Action names in gymnasium's order: 0 left, 1 down, 2 right, 3 up.
ACTION_NAMES: tuple[str, ...] = ("left", "down", "right", "up")


class FrozenLakeAction(Action):
    """A move, by name or number.

    >>> FrozenLakeAction(action="right").action
    'right'
    """

    action: StrictInt | StrictStr = Field(
        description="'left', 'down', 'right', 'up' (any case) or 0-3 in that order"
    )


class FrozenLakeObservation(Observation):
    """The map as text, where the player is, and the moves.

    >>> FrozenLakeObservation(text="SFFF", legal_actions=list(ACTION_NAMES), raw=0).raw
    0
    """

    text: str = Field(
        description="The map (S start, F frozen, H hole, G goal; the last move above it) "
        "and the player's row and column"
    )
    legal_actions: list[str] = Field(description="Action names accepted by step")
    raw: Any = Field(default=None, description="gymnasium's observation: row * ncol + column")
    error: str | None = Field(default=None, description="Why the last action was refused")
