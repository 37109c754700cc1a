"""The environment interface (:class:`AsyncEnv`) and its adapters to and from gymnasium.

Imports without torch, numpy or gymnasium; :func:`to_gymnasium` / :func:`from_gymnasium`
import gymnasium when called.
"""

from typing import Any

from forge_env.env._core import (
    Action,
    AnyAction,
    AnyObservation,
    AsyncEnv,
    EnvMetadata,
    Observation,
    ResetResult,
    State,
    StepResult,
    SyncEnv,
    ToolSpec,
)


def to_gymnasium(env: AsyncEnv, **kwargs: Any) -> Any:
    """A real ``gymnasium.Env`` driving ``env`` (see ``forge_env.env._gymnasium.to_gymnasium``)."""
    from forge_env.env._gymnasium import to_gymnasium as _impl

    return _impl(env, **kwargs)


def from_gymnasium(gym_env: Any, **kwargs: Any) -> AsyncEnv:
    """An :class:`AsyncEnv` wrapping any ``gymnasium.Env`` (see ``forge_env.env._gymnasium``)."""
    from forge_env.env._gymnasium import from_gymnasium as _impl

    return _impl(gym_env, **kwargs)


_GYMNASIUM_NAMES = ("GymAction", "GymObservation", "GymnasiumEnv", "AsyncEnvAsGymnasium")


def __getattr__(name: str) -> Any:
    # These need gymnasium: import it only when asked for.
    if name in _GYMNASIUM_NAMES:
        from forge_env.env import _gymnasium

        return getattr(_gymnasium, name)
    raise AttributeError(f"module 'forge_env.env' has no attribute {name!r}")


__all__ = [
    *_GYMNASIUM_NAMES,
    "Action",
    "AnyAction",
    "AnyObservation",
    "AsyncEnv",
    "EnvMetadata",
    "Observation",
    "ResetResult",
    "State",
    "StepResult",
    "SyncEnv",
    "ToolSpec",
    "to_gymnasium",
    "from_gymnasium",
]
