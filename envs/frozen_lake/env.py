"""FrozenLake through text: gymnasium's ``FrozenLake-v1`` wrapped by :func:`forge_env.from_gymnasium`.

Defaults: the 4x4 map, ``is_slippery=False`` (deterministic moves, so a language model can
plan), gymnasium's 100-step limit (``truncated``). Reward 1 on reaching the goal, else 0;
falling in a hole terminates with 0.
"""

from __future__ import annotations

from typing import Any

import gymnasium

from forge_env.env import EnvMetadata
from forge_env.env._gymnasium import GymnasiumEnv

from envs.frozen_lake.models import ACTION_NAMES, FrozenLakeAction, FrozenLakeObservation

__all__ = ["FrozenLakeEnv"]


class FrozenLakeEnv(GymnasiumEnv):
    """Cross the frozen lake from S to G without falling into a hole (H).

    Action ``{"action": "right"}`` (or 0-3 for left/down/right/up). An unknown name or an
    out-of-range number gives an observation with ``error`` and changes nothing.
    ``reset(seed=s)`` reproduces an episode (it matters only for slippery or random maps).

    >>> env = FrozenLakeEnv().sync()
    >>> obs, info = env.reset(seed=0)
    >>> print(obs.text)
    SFFF
    FHFH
    FFFH
    HFFG
    You are at row 0, column 0 (counting from 0, row 0 at the top).
    Legal actions: left, down, right, up.
    >>> env.step({"action": "down"}).observation.raw
    4

    Args:
        map_name: ``"4x4"`` or ``"8x8"``.
        is_slippery: gymnasium's slippery ice (moves go sideways with probability 2/3).
        desc: a custom map (list of strings); overrides ``map_name``.
        max_episode_steps: step limit (``truncated``); gymnasium's default is 100 (200 for 8x8).
    """

    action_type = FrozenLakeAction
    observation_type = FrozenLakeObservation
    supports_concurrent_sessions = True  # each instance builds its own gymnasium env
    metadata = EnvMetadata(
        name="frozen_lake",
        description="gymnasium FrozenLake-v1 (4x4, not slippery) played through text.",
        version="0.1.0",
    )

    def __init__(
        self,
        *,
        map_name: str = "4x4",
        is_slippery: bool = False,
        desc: list[str] | None = None,
        max_episode_steps: int | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"map_name": map_name, "is_slippery": is_slippery, "desc": desc}
        if max_episode_steps is not None:
            kwargs["max_episode_steps"] = max_episode_steps
        super().__init__(
            gymnasium.make("FrozenLake-v1", render_mode="ansi", **kwargs),
            action_names=ACTION_NAMES,
            render="ansi",
        )
