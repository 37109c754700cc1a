"""Actions, observations and state of the countdown environment.

Actions follow OpenEnv's MCP action shapes, so tool-calling agents and OpenEnv's
``MCPToolClient`` both work::

    {"type": "call_tool", "tool_name": "calculator", "arguments": {"expression": "3*(4+2)"}}
    {"type": "call_tool", "tool_name": "submit", "arguments": {"expression": "3*8"}}
    {"type": "submit", "expression": "3*8"}
    {"type": "list_tools"}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from forge_env.env import Action, Observation, State

__all__ = [
    "CountdownAction",
    "CountdownObservation",
    "CountdownState",
    "ToolCallError",
    "ToolErrorType",
]

ToolErrorType = Literal["execution_error", "invalid_args", "tool_not_found"]


class CountdownAction(Action):
    """One action, discriminated by ``type``; the validator enforces each type's fields.

    >>> CountdownAction(type="submit", expression="3*8").expression
    '3*8'
    >>> CountdownAction(type="submit")
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for CountdownAction
    ...
    """

    type: Literal["call_tool", "submit", "list_tools"] = Field(
        description="'call_tool' runs a tool, 'submit' gives the final answer, 'list_tools' lists tools"
    )
    tool_name: str | None = Field(default=None, description="call_tool: 'calculator' or 'submit'")
    arguments: dict[str, Any] | None = Field(
        default=None, description="call_tool: the tool's arguments, e.g. {'expression': '3*(4+2)'}"
    )
    expression: str | None = Field(default=None, description="submit: the final arithmetic expression")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Ignored; accepted because OpenEnv actions carry it"
    )

    @model_validator(mode="after")
    def _fields_match_type(self) -> CountdownAction:
        present = {k for k in ("tool_name", "arguments", "expression") if getattr(self, k) is not None}
        allowed = {"call_tool": {"tool_name", "arguments"}, "submit": {"expression"}, "list_tools": set()}[
            self.type
        ]
        if present - allowed:
            raise ValueError(
                f"type {self.type!r} does not take {sorted(present - allowed)}; "
                f"it takes {sorted(allowed) or 'no other fields'}"
            )
        if self.type == "call_tool" and self.tool_name is None:
            raise ValueError("type 'call_tool' needs 'tool_name' (and 'arguments')")
        if self.type == "submit" and self.expression is None:
            raise ValueError("type 'submit' needs 'expression', e.g. {'type': 'submit', 'expression': '3*8'}")
        return self


class ToolCallError(BaseModel):
    """Why a tool call or submission failed (the shape of OpenEnv's/MCP's ``ToolError``)."""

    model_config = ConfigDict(extra="forbid")

    error_type: ToolErrorType
    message: str


# Omitted from the JSON when None: OpenEnv's MCPToolClient decides how to parse an
# observation by the presence of "tools" / "tool_name", so they appear only when meant.
_OMIT_WHEN_NONE = ("tool_name", "result", "error", "tools")


class CountdownObservation(Observation):
    """What the agent sees: the task, the turn's outcome, and (for tool calls) MCP fields.

    >>> CountdownObservation(text="t", numbers=[1, 2], target=3, turns_left=8).model_dump()
    {'text': 't', 'numbers': [1, 2], 'target': 3, 'turns_left': 8}
    """

    text: str = Field(description="Readable summary of the task and the last turn")
    numbers: list[int] = Field(description="The numbers to use, each at most once")
    target: int = Field(description="The value to reach")
    turns_left: int = Field(ge=0, description="Actions left (tool calls and submit count)")
    tool_name: str | None = Field(default=None, description="The tool this observation answers")
    result: Any = Field(default=None, description="The tool's result (calculator: the exact value)")
    error: ToolCallError | None = Field(default=None, description="Why the call/submission failed")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Answer to list_tools")

    @model_serializer(mode="wrap")
    def _omit_empty_mcp_fields(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in _OMIT_WHEN_NONE:
            if data.get(key, 0) is None:
                del data[key]
        return data


class CountdownState(State):
    """Episode bookkeeping; the reference solution is not part of it."""

    numbers: list[int] | None = None
    target: int | None = None
    turns_used: int = 0
    max_turns: int | None = None
    done: bool = False
    solved: bool = False
