"""python_code: write a Python function; run code in a sandbox; submit; hidden tests score it.

Every piece of model-written code runs in :mod:`forge_env.sandbox` (no network, read-only
filesystem but a scratch dir, CPU/wall/memory/process limits), never in the env's process.

>>> import asyncio
>>> env = PythonCodeEnv()
>>> obs, info = asyncio.run(env.reset(seed=0))
>>> obs.task_id == TASKS[0].task_id
True
"""

from __future__ import annotations

import json
import random
import secrets
import uuid
from collections.abc import Sequence
from typing import Any

from forge_env._exceptions import EpisodeNotStartedError
from forge_env.env import AsyncEnv, EnvMetadata, ResetResult, StepResult, ToolSpec
from forge_env.sandbox import SandboxLimits, SandboxResult, arun_code

from envs.python_code.models import CodeAction, CodeObservation, CodeState
from envs.python_code.tasks import TASKS, CodeTask, task_from_row

__all__ = ["PythonCodeEnv"]

_RUN_TOOL = ToolSpec(
    name="run_python",
    description="Run Python code in a sandbox (no network, 5 s CPU); returns stdout, stderr, exit code.",
    inputSchema={
        "type": "object",
        "properties": {"code": {"type": "string", "description": "a Python program"}},
        "required": ["code"],
    },
)

# Appended to a submission: runs each hidden test, then prints how many passed after a
# marker drawn fresh for every run, so ordinary output cannot be mistaken for a verdict.
_HARNESS = """

def __forge_env_run_tests(__tests, __marker):
    import json as __json, sys as __sys
    __passed = 0
    for __source in __tests:
        try:
            exec(__source, globals())
            __passed += 1
        except BaseException:
            pass
    __sys.stdout.write("\\n" + __marker + __json.dumps({{"passed": __passed}}) + "\\n")

__forge_env_run_tests({tests!r}, {marker!r})
"""


class PythonCodeEnv(AsyncEnv[CodeObservation, CodeAction]):
    """Solve one programming task per episode.

    Args:
        max_turns: actions per episode (each ``run_python`` call and the submit count).
        limits: sandbox limits for every run.
        sandbox_backend: force a sandbox backend (default: the best available one).
        tasks: the task set (default: the built-in 32 tasks); a ``datasets.Dataset`` or a
            sequence of rows with the fields of :class:`~envs.python_code.tasks.CodeTask`.

    ``reset(seed=s)`` picks task ``s % len(tasks)`` (``options={"index": i}`` picks one
    directly). The reward of the submit is the fraction of hidden tests passed; 1.0 means
    solved. Runs out of turns -> terminated with reward 0.
    """

    action_type = CodeAction
    observation_type = CodeObservation
    state_type = CodeState
    supports_concurrent_sessions = True
    metadata = EnvMetadata(
        name="python_code",
        description="Write a Python function; run code in a sandbox; hidden unit tests score the submission.",
        version="0.1.0",
    )

    def __init__(
        self,
        *,
        max_turns: int = 4,
        limits: SandboxLimits | None = None,
        sandbox_backend: str | None = None,
        tasks: Sequence[Any] | None = None,
    ) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self.limits = limits or SandboxLimits()
        self.sandbox_backend = sandbox_backend
        self.tasks: tuple[CodeTask, ...] = (
            TASKS if tasks is None else tuple(t if isinstance(t, CodeTask) else task_from_row(t) for t in tasks)
        )
        if not self.tasks:
            raise ValueError("tasks is empty: give at least one task")
        self._rng = random.Random()
        self._task: CodeTask | None = None
        self._state = CodeState(max_turns=max_turns)

    async def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        if "index" in options:
            index = int(options["index"]) % len(self.tasks)
        elif seed is not None:
            index = seed % len(self.tasks)
        else:
            index = self._rng.randrange(len(self.tasks))
        self._task = self.tasks[index]
        self._state = CodeState(
            episode_id=str(options.get("episode_id") or uuid.uuid4().hex),
            task_id=self._task.task_id,
            max_turns=self.max_turns,
        )
        text = (
            f"Task {self._task.task_id}: {self._task.prompt}\n"
            f"Test code with the run_python tool, then submit the solution "
            f"({self.max_turns} actions in all)."
        )
        return ResetResult(self._observation(text), {"task_index": index})

    async def step(self, action: CodeAction):
        task = self._require_task()
        self._state.turns_used += 1
        self._state.step_count += 1
        if action.type == "call_tool":
            result = await self._run(action.arguments["code"])  # type: ignore[index]
            out_of_turns = self._turns_left() == 0
            self._state.done = out_of_turns
            obs = self._observation(_describe_run(result, out_of_turns), run=result)
            return StepResult(obs, 0.0, out_of_turns, False, {"limit_hit": result.limit_hit})
        passed, total, result = await self._grade(task, action.code or "")
        self._state.done = True
        self._state.solved = passed == total
        verdict = "solved" if self._state.solved else "not solved"
        text = f"Submitted: {passed}/{total} hidden tests passed ({verdict})."
        if result.limit_hit:
            text += f" The run hit the {result.limit_hit} limit."
        obs = self._observation(text, run=result, passed=passed, total=total)
        return StepResult(obs, passed / total, True, False, {"solved": self._state.solved})

    async def state(self) -> CodeState:
        return self._state

    async def list_tools(self) -> list[ToolSpec]:
        return [_RUN_TOOL]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        if name != _RUN_TOOL.name or not isinstance(arguments.get("code"), str):
            raise NotImplementedError(f"python_code offers run_python(code: str), not {name}({arguments})")
        result = await self._run(arguments["code"])
        return {"stdout": result.stdout, "stderr": result.stderr, "exit_code": result.exit_code,
                "limit_hit": result.limit_hit}

    # --- internals ------------------------------------------------------------------------

    def _require_task(self) -> CodeTask:
        if self._task is None:
            raise EpisodeNotStartedError("step() before reset(): call reset() first", env_name=self.name)
        if self._state.done:
            raise EpisodeNotStartedError("the episode is over: call reset() for a new one", env_name=self.name)
        return self._task

    def _turns_left(self) -> int:
        return max(0, self.max_turns - self._state.turns_used)

    async def _run(self, code: str) -> SandboxResult:
        return await arun_code(code, limits=self.limits, backend=self.sandbox_backend)

    async def _grade(self, task: CodeTask, code: str) -> tuple[int, int, SandboxResult]:
        marker = f"@@forge-env-verdict-{secrets.token_hex(8)}@@"
        program = code + _HARNESS.format(tests=list(task.tests), marker=marker)
        result = await self._run(program)
        passed = 0
        for line in result.stdout.splitlines():
            if line.startswith(marker):
                try:
                    passed = int(json.loads(line[len(marker):])["passed"])
                except (ValueError, KeyError, TypeError):
                    passed = 0
        total = len(task.tests)
        return min(passed, total), total, result

    def _observation(
        self, text: str, *, run: SandboxResult | None = None, passed: int | None = None, total: int | None = None
    ) -> CodeObservation:
        task = self._task
        assert task is not None
        return CodeObservation(
            text=text,
            task_id=task.task_id,
            prompt=task.prompt,
            turns_left=self._turns_left(),
            stdout=None if run is None or passed is not None else run.stdout,
            stderr=None if run is None else run.stderr,
            exit_code=None if run is None else run.exit_code,
            limit_hit=None if run is None else run.limit_hit,
            tests_passed=passed,
            tests_total=total,
        )


def _describe_run(result: SandboxResult, out_of_turns: bool) -> str:
    parts = [f"exit code {result.exit_code}"]
    if result.limit_hit:
        parts.append(f"stopped by the {result.limit_hit} limit")
    text = "Ran your code: " + ", ".join(parts) + "."
    if result.stdout:
        text += f"\nstdout:\n{result.stdout[-2000:]}"
    if result.stderr:
        text += f"\nstderr:\n{result.stderr[-2000:]}"
    if out_of_turns:
        text += "\nNo turns left: the episode is over (reward 0)."
    return text
