"""The OpenEnv 0.10 wire format, shared by our server and our client.

One place defines the frames and how a :class:`StepResult` maps onto them, so the server
and the client cannot drift apart. The code of record is ``openenv==0.10.0``
(``openenv/core/env_server/types.py`` and ``http_server.py``).

WebSocket ``/ws`` (one env instance per connection):

    -> {"type": "reset", "data": {"seed": 7, "episode_id": "e1", ...extra reset kwargs}}
    -> {"type": "step",  "data": {...action fields, not wrapped...}}
    -> {"type": "state"}
    -> {"type": "close"}
    -> {"type": "mcp",   "data": {JSON-RPC 2.0 request}}
    <- {"type": "observation", "data": {"observation": {...}, "reward": r, "done": d,
                                        "metadata": {...}   (only when non-empty)}}
    <- {"type": "state", "data": {"episode_id": ..., "step_count": ...}}
    <- {"type": "mcp",   "data": {JSON-RPC 2.0 response}}
    <- {"type": "error", "data": {"message": str, "code": ErrorCode, ...}}

gymnasium's ``truncated`` has no field in OpenEnv: we send ``done=true`` and
``metadata.truncated=true``; ``info`` travels as ``metadata``.
"""

from __future__ import annotations

import enum
import functools
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forge_env.env._core import Observation, ResetResult, StepResult

__all__ = [
    "ErrorCode",
    "JsonRpcErrorCode",
    "ResetFrame",
    "StepFrame",
    "StateFrame",
    "CloseFrame",
    "McpFrame",
    "TRUNCATED_KEY",
    "observation_payload",
    "step_result_from_payload",
    "reset_result_from_payload",
    "error_frame",
    "jsonable",
]

TRUNCATED_KEY = "truncated"


class ErrorCode(str, enum.Enum):
    """Error codes of the OpenEnv WebSocket error envelope."""

    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    EXECUTION_ERROR = "EXECUTION_ERROR"
    CAPACITY_REACHED = "CAPACITY_REACHED"
    FACTORY_ERROR = "FACTORY_ERROR"
    SESSION_ERROR = "SESSION_ERROR"


class JsonRpcErrorCode(int, enum.Enum):
    """JSON-RPC 2.0 error codes used on ``/mcp``."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    SERVER_ERROR = -32000


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResetFrame(_Frame):
    type: Literal["reset"] = "reset"
    data: dict[str, Any] = Field(default_factory=dict)


class StepFrame(_Frame):
    type: Literal["step"] = "step"
    data: dict[str, Any]


class StateFrame(_Frame):
    type: Literal["state"] = "state"


class CloseFrame(_Frame):
    type: Literal["close"] = "close"


class McpFrame(_Frame):
    type: Literal["mcp"] = "mcp"
    data: dict[str, Any]


def jsonable(value: Any) -> Any:
    """Make ``value`` JSON-serialisable (pydantic models, numpy scalars/arrays, tuples, sets).

    Non-finite floats become None: JSON has no NaN and OpenEnv's clients reject it.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, BaseModel):
        return jsonable(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, without importing numpy
        return jsonable(value.tolist())
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def observation_payload(
    observation: Observation,
    *,
    reward: float | None,
    done: bool,
    info: dict[str, Any] | None = None,
    truncated: bool = False,
) -> dict[str, Any]:
    """The ``data`` of an ``observation`` frame (and the body of HTTP /reset, /step)."""
    metadata = dict(info or {})
    if truncated:
        metadata[TRUNCATED_KEY] = True
    payload: dict[str, Any] = {
        "observation": jsonable(observation.model_dump(mode="json")),
        "reward": None if reward is None else jsonable(float(reward)),
        "done": bool(done),
    }
    if metadata:
        payload["metadata"] = jsonable(metadata)
    return payload


@functools.lru_cache(maxsize=256)
def _envelope_keys_to_strip(observation_type: type[Observation]) -> tuple[str, ...]:
    """Envelope keys (metadata/reward/done) that some servers echo inside the observation
    and that this observation type does not declare as its own fields. Cached: hot path."""
    return tuple(k for k in ("metadata", "reward", "done") if k not in observation_type.model_fields)


def _split_payload(
    data: dict[str, Any], observation_type: type[Observation]
) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
    obs_fields = data.get("observation")
    obs_fields = dict(obs_fields) if isinstance(obs_fields, dict) else {}
    info: dict[str, Any] = {}
    # OpenEnv 0.10 puts metadata at the top level; older servers and some envs nest it
    # inside the observation, and servers built on OpenEnv's Observation may echo
    # reward/done there too. Accept both; the top level wins.
    for key in _envelope_keys_to_strip(observation_type):
        value = obs_fields.pop(key, None)
        if key == "metadata" and isinstance(value, dict):
            info.update(value)
    top_meta = data.get("metadata")
    if isinstance(top_meta, dict):
        info.update(top_meta)
    reward_raw = data.get("reward")
    reward = 0.0 if reward_raw is None else float(reward_raw)
    done = bool(data.get("done", False))
    truncated = bool(done and info.get(TRUNCATED_KEY, False))
    terminated = done and not truncated
    observation = observation_type.model_validate(obs_fields)
    return observation, reward, terminated, truncated, info


def step_result_from_payload(
    data: dict[str, Any], observation_type: type[Observation]
) -> StepResult[Any]:
    """Turn an ``observation`` frame's ``data`` into a :class:`StepResult`.

    Tolerates ``reward: null`` (-> 0.0), ``metadata`` absent, nested or top-level.
    """
    observation, reward, terminated, truncated, info = _split_payload(data, observation_type)
    return StepResult(observation, reward, terminated, truncated, info)


def reset_result_from_payload(
    data: dict[str, Any], observation_type: type[Observation]
) -> ResetResult[Any]:
    """Turn the reset answer into ``(observation, info)``; ``done``/``reward`` go into info
    only when the server says the episode is already over or rewarded."""
    observation, reward, terminated, truncated, info = _split_payload(data, observation_type)
    if data.get("reward") is not None:
        info.setdefault("reward", reward)
    if terminated or truncated:
        info.setdefault("done", True)
    return ResetResult(observation, info)


def error_frame(code: ErrorCode, message: str, **extra: Any) -> dict[str, Any]:
    """An ``error`` frame: ``{"type": "error", "data": {"message", "code", **extra}}``."""
    return {"type": "error", "data": {"message": message, "code": code.value, **jsonable(extra)}}
