"""Actions, observations and state of the python_code environment.

Actions follow OpenEnv's MCP action shapes, like countdown's::

    {"type": "call_tool", "tool_name": "run_python", "arguments": {"code": "print(1 + 1)"}}
    {"type": "submit", "code": "def add(a, b):\\n    return a + b"}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from forge_env.env import Action, Observation, State

__all__ = ["CodeAction", "CodeObservation", "CodeState"]


class CodeAction(Action):
    """Run code with the ``run_python`` tool, or submit the final solution.

    >>> CodeAction(type="submit", code="x = 1").code
    'x = 1'
    """

    type: Literal["call_tool", "submit"] = Field(
        description="'call_tool' runs code in the sandbox; 'submit' ends the episode with a solution"
    )
    tool_name: Literal["run_python"] | None = Field(default=None, description="call_tool: 'run_python'")
    arguments: dict[str, Any] | None = Field(
        default=None, description="call_tool: {'code': '...'}"
    )
    code: str | None = Field(default=None, description="submit: the whole solution module")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Ignored; accepted because OpenEnv actions carry it"
    )

    @model_validator(mode="after")
    def _fields_match_type(self) -> "CodeAction":
        if self.type == "call_tool":
            if self.tool_name is None or not isinstance((self.arguments or {}).get("code"), str):
                raise ValueError(
                    "type 'call_tool' needs tool_name 'run_python' and arguments {'code': str}"
                )
            if self.code is not None:
                raise ValueError("type 'call_tool' takes its code in arguments.code, not 'code'")
        elif self.code is None:
            raise ValueError("type 'submit' needs 'code', e.g. {'type': 'submit', 'code': 'def f(): ...'}")
        elif self.tool_name is not None or self.arguments is not None:
            raise ValueError("type 'submit' takes only 'code'")
        return self


class CodeObservation(Observation):
    """The task, and what the last run or submission did.

    >>> CodeObservation(text="t", task_id="add", prompt="p", turns_left=3).turns_left
    3
    """

    text: str = Field(description="Readable summary: the task, or the last run's output")
    task_id: str = Field(description="Which task this episode is")
    prompt: str = Field(description="What the function must do")
    turns_left: int = Field(ge=0, description="Actions left (runs and the submit count)")
    stdout: str | None = Field(default=None, description="Output of the last run")
    stderr: str | None = Field(default=None, description="Errors of the last run")
    exit_code: int | None = Field(default=None, description="Exit status of the last run")
    limit_hit: str | None = Field(
        default=None, description="Which sandbox limit stopped the last run (cpu, wall, memory, ...)"
    )
    tests_passed: int | None = Field(default=None, description="submit: hidden tests passed")
    tests_total: int | None = Field(default=None, description="submit: hidden tests in all")


class CodeState(State):
    """Episode bookkeeping; the hidden tests are not part of it."""

    task_id: str | None = None
    turns_used: int = 0
    max_turns: int | None = None
    done: bool = False
    solved: bool = False
