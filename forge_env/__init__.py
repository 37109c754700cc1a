"""forge-env: an environment-interface SDK for agentic RL of language models.

The environment side — :class:`AsyncEnv`, the OpenEnv-compatible server and the
:class:`RemoteEnv` client — imports without torch.

>>> import forge_env
>>> issubclass(forge_env.RemoteEnv, forge_env.AsyncEnv)
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forge_env._exceptions import (
    CapacityReachedError,
    ConnectError,
    ConnectionClosedError,
    EnvError,
    EnvExecutionError,
    EnvTimeoutError,
    EpisodeNotStartedError,
    FactoryError,
    ForgeEnvError,
    InvalidActionError,
    InvalidJSONError,
    RemoteExecutionError,
    RuntimeStartError,
    ServerError,
    SessionError,
    TransportError,
    UnknownMessageTypeError,
    ValidationFailedError,
)
from forge_env.env import (
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
    from_gymnasium,
    to_gymnasium,
)

__version__ = "0.1.0"

# Server, client and runtime are imported on first use: `import forge_env` stays cheap
# for code that only defines an environment.
_LAZY = {
    "create_app": "forge_env.server",
    "serve": "forge_env.server",
    "RemoteEnv": "forge_env.client",
    "InProcessRuntime": "forge_env.runtime",
    "LocalProcessRuntime": "forge_env.runtime",
    "EnvPool": "forge_env.runtime",
}

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.client import RemoteEnv
    from forge_env.runtime import EnvPool, InProcessRuntime, LocalProcessRuntime
    from forge_env.server import create_app, serve


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'forge_env' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
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
    "from_gymnasium",
    "to_gymnasium",
    "create_app",
    "serve",
    "RemoteEnv",
    "InProcessRuntime",
    "LocalProcessRuntime",
    "EnvPool",
    "ForgeEnvError",
    "EnvError",
    "InvalidActionError",
    "EnvExecutionError",
    "EpisodeNotStartedError",
    "TransportError",
    "ConnectError",
    "EnvTimeoutError",
    "ConnectionClosedError",
    "ServerError",
    "InvalidJSONError",
    "UnknownMessageTypeError",
    "ValidationFailedError",
    "RemoteExecutionError",
    "CapacityReachedError",
    "FactoryError",
    "SessionError",
    "RuntimeStartError",
]
