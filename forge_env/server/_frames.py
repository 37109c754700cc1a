"""Encoding the server's replies, lean enough for the per-message path.

The meaning of every frame is :mod:`forge_env._wire`'s (``observation_payload`` and
``error_frame``); these functions produce the same JSON text without building and
re-walking intermediate dicts: the observation is serialised once by pydantic
(``model_dump_json``) and spliced into the envelope. ``tests/unit/test_server_frames.py``
checks that the two always decode to the same object.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel

from forge_env._wire import TRUNCATED_KEY, ErrorCode, error_frame, jsonable

__all__ = [
    "observation_json",
    "observation_frame_text",
    "error_frame_text",
    "dumps_jsonable",
]

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def dumps_jsonable(value: Any) -> str:
    """``json.dumps(jsonable(value))``, skipping the walk when ``value`` is plain JSON."""
    try:
        return _dumps(value)
    except (TypeError, ValueError):  # pydantic models, numpy, NaN, sets, ...
        return _dumps(jsonable(value))


# Observation class -> its pydantic serializer's ``to_json``, or None where the class
# overrides ``model_dump_json`` (then that is called). ``to_json`` with its defaults is
# exactly what ``BaseModel.model_dump_json()`` runs, minus a wrapper that re-passes 15
# keyword arguments: about 1 us less per step.
_TO_JSON: dict[type, Any] = {}


def _to_json_of(cls: type) -> Any:
    to_json = None
    if getattr(cls, "model_dump_json", None) is BaseModel.model_dump_json:
        try:
            to_json = cls.__pydantic_serializer__.to_json  # type: ignore[attr-defined]
        except Exception:  # a model not fully defined yet: model_dump_json() says why
            return None
    _TO_JSON[cls] = to_json
    return to_json


def observation_json(observation: Any) -> str:
    """The observation's fields as JSON text (pydantic serialises it once, NaN -> null)."""
    if isinstance(observation, BaseModel):
        cls = type(observation)
        to_json = _TO_JSON[cls] if cls in _TO_JSON else _to_json_of(cls)
        if to_json is not None:
            return to_json(observation).decode()
        return observation.model_dump_json()
    if isinstance(observation, dict):
        return dumps_jsonable(observation)
    raise TypeError(
        f"an env must return an Observation (a pydantic model), got "
        f"{type(observation).__name__}; wrap it in your Observation subclass"
    )


def _reward_json(reward: Any) -> str:
    if reward is None:
        return "null"
    value = float(reward)
    return repr(value) if math.isfinite(value) else "null"


def observation_frame_text(
    observation: Any,
    *,
    reward: float | None,
    done: bool,
    info: dict[str, Any] | None,
    truncated: bool,
    frame: bool = True,
) -> str:
    """JSON text of an ``observation`` frame (or, with ``frame=False``, of its ``data``).

    Same content as ``{"type": "observation", "data": observation_payload(...)}``.
    """
    parts = [
        '{"observation":',
        observation_json(observation),
        ',"reward":',
        _reward_json(reward),
        ',"done":true' if done else ',"done":false',
    ]
    if info or truncated:
        metadata = dict(info) if info else {}
        if truncated:
            metadata[TRUNCATED_KEY] = True
        parts.append(',"metadata":')
        parts.append(dumps_jsonable(metadata))
    parts.append("}")
    data = "".join(parts)
    return '{"type":"observation","data":' + data + "}" if frame else data


def error_frame_text(code: ErrorCode, message: str, **extra: Any) -> str:
    """JSON text of an ``error`` frame (see :func:`forge_env._wire.error_frame`)."""
    return dumps_jsonable(error_frame(code, message, **extra))
