"""FrozenLake (gymnasium ``FrozenLake-v1``, 4x4, not slippery) played through text."""

from envs.frozen_lake.models import ACTION_NAMES, FrozenLakeAction, FrozenLakeObservation

__all__ = ["ACTION_NAMES", "FrozenLakeAction", "FrozenLakeEnv", "FrozenLakeObservation"]


def __getattr__(name: str) -> object:
    # The env needs gymnasium; the models do not (a client can import them without it).
    if name == "FrozenLakeEnv":
        from envs.frozen_lake.env import FrozenLakeEnv

        return FrozenLakeEnv
    raise AttributeError(f"module 'envs.frozen_lake' has no attribute {name!r}")
