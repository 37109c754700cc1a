"""Tools from an env's action schema and MCP tools, and how a tool call becomes an action.

Three kinds of tool, by where they come from:

- ``mcp``: a tool of ``env.list_tools()``; a call is the OpenEnv MCP action
  ``{"type": "call_tool", "tool_name": name, "arguments": args}``.
- ``type``: one value of the action's ``type`` discriminator (e.g. ``submit``); a call is
  ``{"type": value, **args}``.
- ``action``: the whole action model as one tool (e.g. ``guess``); a call is ``args``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any, Literal

from forge_env.conformance import example_from_schema
from forge_env.env import ToolSpec

__all__ = [
    "ToolDef",
    "action_tool_name",
    "build_tools",
    "example_action",
    "field_is_string",
    "field_types",
    "property_schema",
    "type_values",
]

ToolKind = Literal["mcp", "type", "action"]

# Fields of OpenEnv MCP actions that a type-derived tool does not expose: the discriminator
# itself, call_tool's own fields, and OpenEnv's free-form metadata.
_HIDDEN_FIELDS = frozenset({"type", "tool_name", "arguments", "metadata"})
# Discriminator values that are not tools: call_tool is how MCP tools are called, and
# list_tools is discovery the agent has already done (the tools are in the prompt).
_NOT_TOOLS = frozenset({"call_tool", "list_tools"})
_MAX_DEPTH = 32


@dataclasses.dataclass(frozen=True)
class ToolDef:
    """One tool offered to the model, and how a call to it becomes an env action.

    >>> tool = ToolDef(name="submit", description="", parameters={}, kind="type", type_value="submit")
    >>> tool.to_action({"code": "x = 1"})
    {'type': 'submit', 'code': 'x = 1'}
    """

    name: str
    description: str
    parameters: dict[str, Any]
    kind: ToolKind
    type_value: str | None = None

    def to_action(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """The env action of a call to this tool with ``arguments``."""
        if self.kind == "mcp":
            return {"type": "call_tool", "tool_name": self.name, "arguments": dict(arguments)}
        if self.kind == "type":
            return {"type": self.type_value, **{k: v for k, v in arguments.items() if k != "type"}}
        return dict(arguments)

    def openai_schema(self) -> dict[str, Any]:
        """The OpenAI function-tool shape that chat templates take in ``tools=``."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def build_tools(
    action_schema: dict[str, Any], mcp_tools: Sequence[ToolSpec], *, env_name: str
) -> list[ToolDef]:
    """The tools for an env: its MCP tools, then tools derived from its action schema.

    MCP tools are offered when the action schema can carry a ``call_tool`` action. A derived
    tool whose name an MCP tool already has is dropped (countdown's ``submit`` is both).

    >>> schema = {"title": "GuessAction", "type": "object", "required": ["guess"],
    ...           "properties": {"guess": {"type": "integer", "title": "Guess"}}}
    >>> [(t.name, t.kind) for t in build_tools(schema, [], env_name="guess_number")]
    [('guess', 'action')]
    """
    root = action_schema if isinstance(action_schema, dict) else {}
    values = type_values(root)
    tools: list[ToolDef] = []
    if mcp_tools and _accepts_call_tool(root, values):
        for spec in mcp_tools:
            tools.append(
                ToolDef(
                    name=spec.name,
                    description=spec.description,
                    parameters=spec.input_schema or {"type": "object", "properties": {}},
                    kind="mcp",
                )
            )
    taken = {tool.name for tool in tools}
    if values:
        own = [value for value in values if value not in _NOT_TOOLS]
        for value in own:
            if value not in taken:
                tools.append(_type_tool(root, value, only=len(own) == 1))
                taken.add(value)
    elif _has_properties(root):
        name = action_tool_name(str(root.get("title") or ""), fallback=env_name)
        if name not in taken:
            tools.append(
                ToolDef(
                    name=name,
                    description=_summary(root.get("description")) or f"Take one action in {env_name}.",
                    parameters=_parameters(root, root, exclude=frozenset({"metadata"}), strip_null=False),
                    kind="action",
                )
            )
    return tools


def example_action(action_schema: dict[str, Any]) -> Any:
    """An example action for prompts and error messages.

    For an action with a ``type`` discriminator, an action of its first own type (not
    ``call_tool``) with that type's fields; otherwise ``example_from_schema``.

    >>> nullable = {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    >>> example_action({"type": "object", "required": ["type"], "properties": {
    ...     "type": {"enum": ["call_tool", "submit"]}, "code": nullable}})
    {'type': 'submit', 'code': 'example'}
    """
    root = action_schema if isinstance(action_schema, dict) else {}
    own = [value for value in type_values(root) if value not in _NOT_TOOLS]
    if not own:
        return example_from_schema(root) if root else {}
    tool = _type_tool(root, own[0], only=len(own) == 1)
    params = {**tool.parameters, "required": list(tool.parameters.get("properties", {}))}
    args = example_from_schema(params)
    return tool.to_action(args if isinstance(args, dict) else {})


def action_tool_name(title: str, *, fallback: str = "act") -> str:
    """snake_case of an action model's title, ``Action`` suffix dropped.

    >>> action_tool_name("GuessAction"), action_tool_name("FrozenLakeAction"), action_tool_name("Action")
    ('guess', 'frozen_lake', 'act')
    """
    base = title[: -len("Action")] if title.endswith("Action") else title
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", base)
    snake = re.sub(r"[^0-9a-zA-Z_]+", "_", snake).strip("_").lower()
    if not snake:
        snake = re.sub(r"[^0-9a-zA-Z_]+", "_", fallback).strip("_").lower() or "act"
    return snake


def type_values(schema: dict[str, Any]) -> list[str]:
    """The values of an action's ``type`` discriminator: enum/const of a ``type`` property,
    or the ``type`` consts of the branches of a top-level ``oneOf``/``anyOf``; [] if none."""
    values: list[str] = []
    for branch in _branches(schema):
        field = _resolve(_properties(branch, schema).get("type"), schema)
        for option in _alternatives(field, schema):
            if isinstance(option.get("const"), str):
                values.append(option["const"])
            enum = option.get("enum")
            if isinstance(enum, list):
                values.extend(v for v in enum if isinstance(v, str))
    return list(dict.fromkeys(values))


def property_schema(schema: dict[str, Any], field: str) -> dict[str, Any]:
    """The (``$ref``-resolved) schema of one property of an object schema; {} if absent."""
    found = _resolve(_properties(_resolve(schema, schema), schema).get(field), schema)
    return found if isinstance(found, dict) else {}


def field_types(schema: dict[str, Any], field: str) -> set[str]:
    """The JSON types a property takes (``any`` where a branch does not say).

    >>> sorted(field_types({"properties": {"a": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}}, "a"))
    ['integer', 'string']
    """
    kinds: set[str] = set()
    for option in _alternatives(property_schema(schema, field), schema):
        kind = option.get("type")
        if isinstance(kind, list):
            kinds.update(str(k) for k in kind)
        elif isinstance(kind, str):
            kinds.add(kind)
        elif "const" in option or "enum" in option:
            enum = option.get("enum")
            values: list[Any] = enum if isinstance(enum, list) else [option.get("const")]
            kinds.update("string" if isinstance(v, str) else "any" for v in values)
        else:
            kinds.add("any")
    return kinds or {"any"}


def field_is_string(schema: dict[str, Any], field: str) -> bool:
    """True when the property only takes strings (``null`` aside).

    >>> field_is_string({"properties": {"m": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}, "m")
    True
    """
    return field_types(schema, field) - {"null"} == {"string"}


# --- internals ------------------------------------------------------------------------------


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    for _ in range(_MAX_DEPTH):  # local refs only ("#/$defs/Name")
        if not isinstance(schema, dict) or not isinstance(schema.get("$ref"), str):
            return schema
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            return {}
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = target
    return schema


def _alternatives(schema: Any, root: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema's anyOf/oneOf branches (resolved), or the schema itself."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return []
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key)
        if isinstance(branches, list) and branches:
            found: list[dict[str, Any]] = []
            for branch in branches:
                found.extend(_alternatives(branch, root))
            return found
    return [schema]


def _branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """A union action schema's object branches, or [the schema]."""
    return [b for b in _alternatives(schema, schema) if isinstance(b, dict)]


def _properties(schema: Any, root: dict[str, Any]) -> dict[str, Any]:
    schema = _resolve(schema, root)
    props = schema.get("properties") if isinstance(schema, dict) else None
    return props if isinstance(props, dict) else {}


def _has_properties(schema: dict[str, Any]) -> bool:
    return any(_properties(branch, schema) for branch in _branches(schema))


def _accepts_call_tool(schema: dict[str, Any], values: list[str]) -> bool:
    # An action schema with a `type` discriminator must list call_tool; one with fields but
    # no discriminator cannot carry a call_tool action; an empty/permissive one may.
    if values:
        return "call_tool" in values
    return not _has_properties(schema)


def _type_tool(root: dict[str, Any], value: str, *, only: bool) -> ToolDef:
    """The tool of one ``type`` value. In a union schema it takes its branch's fields; in a
    flat schema the other fields. When it is the only such value (``submit`` beside
    ``call_tool``) every ``X | None = None`` field is its own, so those become required."""
    branch = _branch_for(root, value)
    field = _resolve(_properties(branch, root).get("type"), root)
    hint = field.get("description") if isinstance(field, dict) else None
    description = f"Send the env's '{value}' action."
    if isinstance(hint, str) and hint:
        description += f" ({hint})"
    return ToolDef(
        name=value,
        description=description,
        parameters=_parameters(branch, root, exclude=_HIDDEN_FIELDS, strip_null=True, require_nullable=only),
        kind="type",
        type_value=value,
    )


def _branch_for(root: dict[str, Any], value: str) -> dict[str, Any]:
    """The union branch whose ``type`` is ``value`` (a flat schema is its own branch)."""
    branches = _branches(root)
    for branch in branches:
        field = _properties(branch, root).get("type")
        for option in _alternatives(field, root):
            if option.get("const") == value and len(branches) > 1:
                return branch
    return _resolve(root, root)


def _parameters(
    schema: dict[str, Any],
    root: dict[str, Any],
    *,
    exclude: frozenset[str],
    strip_null: bool,
    require_nullable: bool = False,
) -> dict[str, Any]:
    """A tool's JSON-schema parameters from an action (branch) schema.

    Pydantic's per-property ``title`` is dropped (prompt tokens, no meaning). With
    ``strip_null``, an optional ``X | None = None`` field is shown as plain ``X``: the
    model omits it rather than sending null.
    """
    props: dict[str, Any] = {}
    nullable: list[str] = []
    for name, prop in _properties(schema, root).items():
        if name in exclude or not isinstance(prop, dict):
            continue
        prop = {k: v for k, v in prop.items() if k != "title"}
        if strip_null:
            stripped = _without_null(prop)
            if stripped is not prop:
                nullable.append(name)
            prop = stripped
        props[name] = prop
    resolved = _resolve(schema, root)
    listed = resolved.get("required") if isinstance(resolved, dict) else None
    required = [r for r in (listed or []) if r in props]
    if require_nullable:
        required += [name for name in nullable if name not in required]
    params: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        params["required"] = required
    defs = {key: root[key] for key in ("$defs", "definitions") if isinstance(root.get(key), dict)}
    if defs and "$ref" in json.dumps(props):
        params.update(defs)
    return params


def _without_null(prop: dict[str, Any]) -> dict[str, Any]:
    branches = prop.get("anyOf")
    if prop.get("default", 0) is not None or not isinstance(branches, list):
        return prop
    kept = [b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")]
    if not kept or len(kept) == len(branches):
        return prop
    out = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    if len(kept) == 1 and isinstance(kept[0], dict):
        return {**kept[0], **out}
    return {**out, "anyOf": kept}


def _summary(description: Any) -> str:
    """The first paragraph of a model docstring (pydantic puts the whole docstring there)."""
    if not isinstance(description, str):
        return ""
    return " ".join(description.strip().split("\n\n")[0].split())
