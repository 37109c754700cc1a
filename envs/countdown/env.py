"""Countdown: reach a target from a few numbers with + - * /, using a calculator tool.

Rules (all documented choices):

- A task is numbers and a target (:mod:`envs.countdown.tasks`): generated from the reset
  seed, or picked from ``tasks`` (any sequence of ``{"numbers", "target"}`` rows, e.g. a
  ``datasets.Dataset``) by ``reset(options={"index": i})`` or by the seed, or given
  directly with ``reset(options={"numbers": [...], "target": n})``.
- A submission is correct when it uses only integers from the numbers, **each at most
  once** (classic Countdown; generated targets are reachable using all of them), only
  ``+ - * /`` and parentheses (no unary minus), and evaluates exactly (fractions) to the
  target. Reward 1 for a correct submission, 0 for everything else.
- Every ``call_tool`` and ``submit`` takes one of ``max_turns`` turns (default 8);
  ``list_tools`` is free. Any submission ends the episode (terminated), right or wrong;
  running out of turns without one also ends it (terminated, reward 0): the turn limit is a
  rule of the game, shown in every observation.
- Bad model output is never an exception: a malformed expression, an unknown tool or bad
  tool arguments give an observation with ``error`` (and take a turn). Only an action that
  does not match the :class:`CountdownAction` schema raises ``InvalidActionError``.
- The calculator never uses ``eval`` (see :mod:`envs.countdown.calculator`).
"""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from forge_env._exceptions import EpisodeNotStartedError
from forge_env.env import AsyncEnv, EnvMetadata, ResetResult, StepResult, ToolSpec

from envs.countdown.calculator import CalculatorError, evaluate_detailed, format_value
from envs.countdown.models import (
    CountdownAction,
    CountdownObservation,
    CountdownState,
    ToolCallError,
    ToolErrorType,
)
from envs.countdown.tasks import CountdownTask, generate_task

__all__ = ["CountdownEnv", "CountdownConfig", "TOOLS", "Verdict", "check_submission"]

_EXPRESSION_SCHEMA = {
    "type": "object",
    "properties": {
        "expression": {
            "type": "string",
            "description": "Arithmetic with integers, + - * / and parentheses, e.g. '3*(4+2)'",
            "maxLength": 200,
        }
    },
    "required": ["expression"],
    "additionalProperties": False,
}

#: The tools offered through MCP ``tools/list`` and ``call_tool`` actions.
TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="calculator",
        description="Evaluate an arithmetic expression exactly (integers, + - * /, parentheses).",
        inputSchema=_EXPRESSION_SCHEMA,
    ),
    ToolSpec(
        name="submit",
        description="Submit the final expression; it must reach the target using each given "
        "number at most once. Ends the episode.",
        inputSchema=_EXPRESSION_SCHEMA,
    ),
)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CountdownConfig:
    """Settings: constructor arguments, overridable per episode by reset options."""

    n_numbers: int = 4
    """How many numbers a generated task has."""
    max_number: int = 10
    """Generated numbers are drawn from 1..max_number."""
    max_turns: int = 8
    """Tool calls plus the submission allowed per episode."""

    def __post_init__(self) -> None:
        for field in ("n_numbers", "max_number", "max_turns"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{field} must be an integer, got {value!r}")
        if not 2 <= self.n_numbers <= 8:
            raise ValueError(f"n_numbers must be between 2 and 8, got {self.n_numbers}")
        if not 2 <= self.max_number <= 1000:
            raise ValueError(f"max_number must be between 2 and 1000, got {self.max_number}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {self.max_turns}")


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one submission."""

    correct: bool
    """Reaches the target under the rules."""
    value: str | None
    """The exact value of the expression, when it could be evaluated."""
    reason: str | None = None
    """Why it is not correct."""
    valid: bool = True
    """False when the expression breaks the rules (bad syntax, numbers not given, ...);
    True for a well-formed submission that is merely wrong."""


def check_submission(expression: str, task: CountdownTask) -> Verdict:
    """Judge a submission against a task.

    >>> check_submission("(3 + 5) * 3", CountdownTask((3, 5, 3), 24)).correct
    True
    >>> check_submission("5 * 5", CountdownTask((3, 5, 3), 25)).reason
    'uses 5 more times than given (each number at most once)'
    """
    try:
        evaluation = evaluate_detailed(expression)
    except CalculatorError as e:
        return Verdict(False, None, str(e), valid=False)
    value = format_value(evaluation.value)
    if evaluation.uses_unary:
        reason = "uses unary plus/minus, which a submission may not; use subtraction"
        return Verdict(False, value, reason, valid=False)
    available, used = Counter(task.numbers), Counter(evaluation.literals)
    for number, count in sorted(used.items()):
        if number not in available:
            reason = f"uses {number}, which is not one of the numbers {list(task.numbers)}"
            return Verdict(False, value, reason, valid=False)
        if count > available[number]:
            reason = f"uses {number} more times than given (each number at most once)"
            return Verdict(False, value, reason, valid=False)
    if evaluation.value != task.target:
        return Verdict(False, value, f"equals {value}, not {task.target}")
    return Verdict(True, value)


class CountdownEnv(AsyncEnv[CountdownObservation, CountdownAction]):
    """Reach the target from the numbers using a ``calculator`` tool, then ``submit``.

    Constructor and reset options: ``n_numbers``, ``max_number``, ``max_turns``; reset
    options also ``index`` (a row of ``tasks``), ``numbers`` + ``target`` (a task given
    directly) and ``episode_id``. See the module docstring for the rules.

    >>> env = CountdownEnv().sync()
    >>> obs, info = env.reset(options={"numbers": [3, 4, 2], "target": 18})
    >>> env.step({"type": "call_tool", "tool_name": "calculator",
    ...           "arguments": {"expression": "3*(4+2)"}}).observation.result
    '18'
    >>> env.step({"type": "submit", "expression": "3*(4+2)"}).reward
    1.0
    """

    action_type = CountdownAction
    observation_type = CountdownObservation
    state_type = CountdownState
    supports_concurrent_sessions = True  # all state is per instance; `tasks` is only read
    metadata = EnvMetadata(
        name="countdown",
        description="Reach a target number from given numbers with + - * /, using a calculator tool.",
        version="0.1.0",
    )

    def __init__(
        self,
        *,
        n_numbers: int = 4,
        max_number: int = 10,
        max_turns: int = 8,
        tasks: Sequence[Any] | None = None,
    ) -> None:
        self.config = CountdownConfig(n_numbers=n_numbers, max_number=max_number, max_turns=max_turns)
        self.tasks = tasks
        self._rng: random.Random | None = None
        self._game = self.config
        self._task: CountdownTask | None = None
        self._turns_used = 0
        self._started = False
        self._done = False
        self._solved = False
        self._episode_id: str | None = None

    # --- the contract ----------------------------------------------------------------------

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> ResetResult[CountdownObservation]:
        options = dict(options or {})
        episode_id = options.pop("episode_id", None)
        index = options.pop("index", None)
        numbers = options.pop("numbers", None)
        target = options.pop("target", None)
        unknown = set(options) - {f.name for f in dataclasses.fields(CountdownConfig)}
        if unknown:
            raise ValueError(
                f"unknown reset options {sorted(unknown)}; countdown accepts n_numbers, "
                "max_number, max_turns, index, numbers, target and episode_id"
            )
        game = dataclasses.replace(self.config, **options)
        if seed is not None or self._rng is None:
            self._rng = random.Random(seed)
        task = self._pick_task(game, index=index, numbers=numbers, target=target)
        self._task, self._game = task, game
        self._turns_used = 0
        self._started, self._done, self._solved = True, False, False
        self._episode_id = str(episode_id) if episode_id is not None else uuid.uuid4().hex
        numbers_text = ", ".join(str(n) for n in task.numbers)
        text = (
            f"Make {task.target} from the numbers {numbers_text}. Use each number at most "
            f"once, with + - * / and parentheses. Tools: calculator(expression) evaluates "
            f"arithmetic exactly; submit(expression) gives your final answer and ends the "
            f"episode. {game.max_turns} turns left."
        )
        return ResetResult(self._observation(text), {})

    async def step(self, action: CountdownAction | dict[str, Any]) -> StepResult[CountdownObservation]:
        parsed = self.parse_action(action)
        if parsed.type == "list_tools":  # discovery: no episode needed, no turn taken
            tools = [spec.model_dump(by_alias=True) for spec in TOOLS]
            obs = self._observation("Tools: " + ", ".join(t.name for t in TOOLS) + ".", tools=tools)
            return StepResult(obs, 0.0, False, False, {})
        self._require_running()
        if parsed.type == "submit":
            assert parsed.expression is not None  # the model validator guarantees it
            return self._submit(parsed.expression, tool_name=None)
        assert parsed.tool_name is not None
        return self._call(parsed.tool_name, parsed.arguments or {})

    async def state(self) -> CountdownState:
        return CountdownState(
            episode_id=self._episode_id,
            step_count=self._turns_used,
            numbers=list(self._task.numbers) if self._task is not None else None,
            target=self._task.target if self._task is not None else None,
            turns_used=self._turns_used,
            max_turns=self._game.max_turns if self._started else None,
            done=self._done,
            solved=self._solved,
        )

    # --- MCP -------------------------------------------------------------------------------

    async def list_tools(self) -> list[ToolSpec]:
        return list(TOOLS)

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        """MCP ``tools/call``: the same as a ``call_tool`` step on the running episode.

        It takes a turn, and ``submit`` ends the episode. Returns the calculator's value as
        ``{"value": "18"}``, a submission's verdict as ``{"correct", "value", "reward"}``, or
        ``{"error": ...}``. With no episode running, ``calculator`` still evaluates (a pure
        function, no turn) and ``submit`` raises ``EpisodeNotStartedError``.
        """
        if name not in {spec.name for spec in TOOLS}:
            return await super().call_tool(name, arguments)
        if not self._started or self._done:
            if name == "submit":
                self._require_running()
            try:
                return {"value": format_value(evaluate_detailed(_expression_argument(arguments)).value)}
            except (CalculatorError, _BadArguments) as e:
                return {"error": str(e)}
        observation, reward, *_ = self._call(name, arguments)
        if observation.error is not None:
            return {"error": observation.error.message}
        if name == "submit":
            return {**observation.result, "reward": reward}
        return {"value": observation.result}

    # --- internals ---------------------------------------------------------------------------

    def _pick_task(
        self, game: CountdownConfig, *, index: Any, numbers: Any, target: Any
    ) -> CountdownTask:
        assert self._rng is not None
        if numbers is not None or target is not None:
            if numbers is None or target is None or index is not None:
                raise ValueError("give both 'numbers' and 'target' (and no 'index') to set the task")
            if not isinstance(numbers, (list, tuple)):
                raise ValueError(f"'numbers' must be a list of integers, got {numbers!r}")
            return CountdownTask.from_mapping({"numbers": numbers, "target": target})
        if index is not None:
            if self.tasks is None:
                raise ValueError("reset option 'index' needs tasks: CountdownEnv(tasks=...)")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.tasks):
                raise ValueError(f"index must be an integer in 0..{len(self.tasks) - 1}, got {index!r}")
            return CountdownTask.from_mapping(self.tasks[index])
        if self.tasks is not None:
            return CountdownTask.from_mapping(self.tasks[self._rng.randrange(len(self.tasks))])
        return generate_task(self._rng, n_numbers=game.n_numbers, max_number=game.max_number)

    @property
    def _running_task(self) -> CountdownTask:
        assert self._task is not None, "no task before reset()"
        return self._task

    def _require_running(self) -> None:
        if not self._started:
            raise EpisodeNotStartedError("step() before reset(): call reset() first", env_name=self.name)
        if self._done:
            raise EpisodeNotStartedError(
                "the episode is over: call reset() to start a new one", env_name=self.name
            )

    def _call(self, tool_name: str, arguments: dict[str, Any]) -> StepResult[CountdownObservation]:
        if tool_name == "submit":
            try:
                return self._submit(_expression_argument(arguments), tool_name="submit")
            except _BadArguments as e:
                return self._turn(f"submit: {e}.", tool_name=tool_name, error=("invalid_args", str(e)))
        if tool_name != "calculator":
            known = ", ".join(spec.name for spec in TOOLS)
            message = f"there is no tool named {tool_name!r}; tools: {known}"
            return self._turn(f"Error: {message}.", tool_name=tool_name, error=("tool_not_found", message))
        try:
            expression = _expression_argument(arguments)
            value = format_value(evaluate_detailed(expression).value)
        except _BadArguments as e:
            return self._turn(f"calculator: {e}.", tool_name=tool_name, error=("invalid_args", str(e)))
        except CalculatorError as e:
            return self._turn(
                f"calculator error: {e}.", tool_name=tool_name, error=("execution_error", str(e))
            )
        return self._turn(f"calculator: {expression} = {value}.", tool_name=tool_name, result=value)

    def _submit(self, expression: str, *, tool_name: str | None) -> StepResult[CountdownObservation]:
        verdict = check_submission(expression, self._running_task)
        self._solved = verdict.correct
        self._done = True
        if verdict.correct:
            text = f"Correct! {expression} = {self._running_task.target}."
        else:
            solution = self._running_task.solution or "not recorded"
            text = f"Wrong: {expression} {verdict.reason}. One solution: {solution}."
        return self._turn(
            text,
            tool_name=tool_name,
            result={"correct": verdict.correct, "value": verdict.value},
            error=None if verdict.valid else ("invalid_args", verdict.reason or ""),
            reward=1.0 if verdict.correct else 0.0,
        )

    def _turn(
        self,
        text: str,
        *,
        tool_name: str | None,
        result: Any = None,
        error: tuple[ToolErrorType, str] | None = None,
        reward: float = 0.0,
    ) -> StepResult[CountdownObservation]:
        """Take one turn; end the episode when turns run out."""
        self._turns_used += 1
        turns_left = self._game.max_turns - self._turns_used
        if not self._done and turns_left == 0:
            self._done = True
            text += f" No turns left. One solution: {self._running_task.solution or 'not recorded'}."
        elif not self._done:
            text += f" {turns_left} turn{'s' if turns_left != 1 else ''} left."
        info: dict[str, Any] = {}
        if self._done:
            info = {"solved": self._solved, "solution": self._running_task.solution}
        observation = self._observation(
            text,
            tool_name=tool_name,
            result=result,
            error=ToolCallError(error_type=error[0], message=error[1]) if error else None,
        )
        return StepResult(observation, reward, self._done, False, info)

    def _observation(self, text: str, **fields: Any) -> CountdownObservation:
        task = self._task
        return CountdownObservation(
            text=text,
            numbers=list(task.numbers) if task is not None else [],
            target=task.target if task is not None else 0,
            turns_left=self._game.max_turns - self._turns_used,
            **fields,
        )


class _BadArguments(ValueError):
    pass


def _expression_argument(arguments: Any) -> str:
    if not isinstance(arguments, dict) or set(arguments) != {"expression"}:
        raise _BadArguments(f"expected arguments {{'expression': '<arithmetic>'}}, got {arguments!r}")
    expression = arguments["expression"]
    if not isinstance(expression, str):
        raise _BadArguments(f"'expression' must be a string, got {type(expression).__name__}")
    return expression
