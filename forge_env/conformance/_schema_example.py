"""Type-correct example values generated from a JSON schema (pydantic's dialect).

The validator needs *some* action to send to an environment it knows nothing about, and
``forge-env play`` needs to show a person what an action looks like. Both read the
``action`` JSON schema served at ``GET /schema`` and fill every required field with a value
of the right type (respecting ``enum``/``const``/bounds where the schema gives them).
"""

from __future__ import annotations

from typing import Any

__all__ = ["example_from_schema", "required_fields"]

# Nested schemas can reference themselves (a tree of nodes): stop descending past this depth.
_MAX_DEPTH = 8


def example_from_schema(schema: dict[str, Any], *, root: dict[str, Any] | None = None) -> Any:
    """Return an example value that validates against ``schema``.

    Objects get their *required* properties only (optional ones keep the server's
    defaults); ``$ref`` into ``$defs``/``definitions`` is followed; ``anyOf``/``oneOf``
    take the first non-null branch; numbers respect ``minimum``/``maximum``.

    >>> example_from_schema({"type": "object", "required": ["guess"],
    ...                      "properties": {"guess": {"type": "integer", "minimum": 1,
    ...                                                "maximum": 100}}})
    {'guess': 50}
    >>> example_from_schema({"enum": ["left", "right"]})
    'left'

    Args:
        schema: a JSON schema (as produced by ``Model.model_json_schema()``).
        root: the document that ``$ref`` pointers resolve against (defaults to ``schema``).
    """
    return _example(schema, root if root is not None else schema, 0)


def required_fields(schema: dict[str, Any]) -> list[str]:
    """The names of the required properties of an object schema (``$ref`` followed).

    >>> required_fields({"type": "object", "required": ["guess"], "properties": {}})
    ['guess']
    """
    resolved = _resolve(schema, schema)
    required = resolved.get("required") if isinstance(resolved, dict) else None
    return [str(name) for name in required] if isinstance(required, list) else []


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    # Follow local refs only ("#/$defs/Name"); a remote ref cannot be fetched offline.
    for _ in range(_MAX_DEPTH):
        if not isinstance(schema, dict) or "$ref" not in schema:
            return schema
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return {}
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = target
    return schema


def _example(schema: Any, root: dict[str, Any], depth: int) -> Any:
    schema = _resolve(schema, root)
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            non_null = [b for b in branches if _resolve(b, root).get("type") != "null"]
            return _example((non_null or branches)[0], root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part, root) or {})
        return _example(merged, root, depth + 1)

    kind = schema.get("type")
    if isinstance(kind, list):  # ["integer", "null"]
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else None

    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        return {name: _example(props.get(name, {}), root, depth + 1) for name in required}
    if kind == "array":
        count = int(schema.get("minItems") or 0)
        items = schema.get("items", {})
        return [_example(items, root, depth + 1) for _ in range(min(count, 4))]
    if kind == "string":
        text = "example"
        min_len = int(schema.get("minLength") or 0)
        max_len = schema.get("maxLength")
        if min_len > len(text):
            text = text + "x" * (min_len - len(text))
        if isinstance(max_len, int) and len(text) > max_len:
            text = text[:max_len]
        return text
    if kind == "integer":
        return int(_number_in_bounds(schema, integer=True))
    if kind == "number":
        return float(_number_in_bounds(schema, integer=False))
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return None


def _number_in_bounds(schema: dict[str, Any], *, integer: bool) -> float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    if isinstance(schema.get("exclusiveMinimum"), (int, float)):
        low = schema["exclusiveMinimum"] + (1 if integer else 1e-6)
    if isinstance(schema.get("exclusiveMaximum"), (int, float)):
        high = schema["exclusiveMaximum"] - (1 if integer else 1e-6)
    # The middle of a bounded range is the most "ordinary" value (e.g. guess 50 of 1..100).
    if low is not None and high is not None:
        mid = (low + high) / 2
        return (low + high) // 2 if integer else mid
    if low is not None:
        return low
    if high is not None:
        return min(0, high)
    return 0
