"""countdown: the safe calculator, submissions, turns, tools, tasks and seeds."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from fractions import Fraction

import pytest

from envs.countdown import (
    TOOLS,
    CalculatorError,
    CountdownAction,
    CountdownEnv,
    CountdownTask,
    check_submission,
    evaluate,
    generate_task,
    make_task_dataset,
)
from forge_env import EpisodeNotStartedError, InvalidActionError

# --- calculator -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, value",
    [("3*(4+2)", 18), ("7/2", Fraction(7, 2)), ("1/3 + 1/6", Fraction(1, 2)), ("-(2-5)", 3),
     ("10 - 2*3", 4), ("6 ÷ 4 × 2", 3), ("((((1))))", 1), (" 8 ", 8),
     ("(" * 99 + "1" + ")" * 99, 1)],
)
def test_calculator_is_exact_arithmetic(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    "expression, message",
    [
        ("__import__('os').system('true')", "function calls are not allowed"),
        ("os", "names are not allowed"),
        ("(1).__class__", "attribute access is not allowed"),
        ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
        ("[1][0]", "not allowed"),
        ("lambda: 1", "lambdas are not allowed"),
        ("2 ** 10", "'**' is not allowed"),
        ("9**9**9**9", "'**' is not allowed"),
        ("7 // 2", "'//' is not allowed"),
        ("7 % 2", "'%' is not allowed"),
        ("1 ^ 2", "'^' is not allowed"),
        ("1 < 2", "comparisons are not allowed"),
        ("2.5 * 2", "decimal numbers are not allowed"),
        ("'a' * 3", "str values are not allowed"),
        ("1/0", "division by zero"),
        ("5 / (3 - 3)", "division by zero"),
        ("3 * 8 = 24", "without '='"),
        ("3 +", "cannot parse"),
        ("", "empty"),
        ("1" * 11, "too large"),
        ("*".join(["999999999"] * 3), "exceeds"),
        ("1+" * 150 + "1", "limit is 200"),
        ("+".join(["1"] * 60), "syntax nodes"),
        ("(" * 150 + "1" + ")" * 150, "limit is 200"),
    ],
)
def test_calculator_refuses_anything_else_quickly(expression, message):
    started = time.perf_counter()
    with pytest.raises(CalculatorError, match=message.replace("(", "\\(").replace("*", "\\*").replace("^", "\\^")):
        evaluate(expression)
    assert time.perf_counter() - started < 0.05


def test_calculator_never_calls_eval(tmp_path):
    # If the text were ever executed, this would create a file.
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    with pytest.raises(CalculatorError):
        evaluate(payload)
    assert not marker.exists()


# --- submissions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, correct, valid, reason",
    [
        ("(3 + 5) * 3", True, True, None),
        ("3 * (5 + 3)", True, True, None),
        ("3 * 8", False, False, "uses 8, which is not one of the numbers"),
        ("5 * 5 - 1", False, False, "uses 1, which is not one"),
        ("5 * 5", False, False, "uses 5 more times than given"),
        ("3 + 5 + 3", False, True, "equals 11, not 24"),
        ("-3 + 3 * 5", False, False, "unary"),
        ("3 / (5 - 5)", False, False, "division by zero"),
        ("3 / 0", False, False, "division by zero"),
        ("3 * x", False, False, "names are not allowed"),
    ],
)
def test_check_submission(expression, correct, valid, reason):
    verdict = check_submission(expression, CountdownTask((3, 5, 3), 24))
    assert (verdict.correct, verdict.valid) == (correct, valid)
    if reason is None:
        assert verdict.reason is None and verdict.value == "24"
    else:
        assert reason in verdict.reason


def test_fraction_intermediates_can_reach_the_target():
    assert check_submission("8 / (3 - 8 / 3)", CountdownTask((8, 3, 8, 3), 24)).correct


# --- the environment --------------------------------------------------------------------

CALC = {"type": "call_tool", "tool_name": "calculator"}


async def test_reset_describes_a_solvable_task():
    env = CountdownEnv()
    obs, info = await env.reset(seed=5)
    task = generate_task(random.Random(5))
    assert (obs.numbers, obs.target, obs.turns_left) == (list(task.numbers), task.target, 8)
    assert f"Make {task.target} from the numbers" in obs.text
    assert info == {}
    assert set(obs.model_dump()) == {"text", "numbers", "target", "turns_left"}  # MCP fields omitted


async def test_calculator_then_correct_submit_scores_one():
    env = CountdownEnv()
    await env.reset(options={"numbers": [3, 4, 2], "target": 18, "episode_id": "e"})
    result = await env.step({**CALC, "arguments": {"expression": "3*(4+2)"}})
    obs = result.observation
    assert (obs.tool_name, obs.result, obs.error, obs.turns_left) == ("calculator", "18", None, 7)
    assert (result.reward, result.done) == (0.0, False)
    result = await env.step({"type": "submit", "expression": "3*(4+2)"})
    assert (result.reward, result.terminated, result.truncated) == (1.0, True, False)
    assert result.observation.result == {"correct": True, "value": "18"}
    assert result.info["solved"] is True
    state = await env.state()
    assert state.episode_id == "e" and state.solved and state.done and state.step_count == 2
    with pytest.raises(EpisodeNotStartedError, match="over"):
        await env.step({"type": "submit", "expression": "1"})


async def test_submit_as_a_tool_call_and_wrong_answers():
    env = CountdownEnv()
    await env.reset(options={"numbers": [3, 4, 2], "target": 18})
    result = await env.step({"type": "call_tool", "tool_name": "submit", "arguments": {"expression": "3*4+2"}})
    assert (result.reward, result.terminated) == (0.0, True)
    assert result.observation.tool_name == "submit" and result.observation.error is None
    assert result.observation.result == {"correct": False, "value": "14"}
    assert "equals 14, not 18" in result.observation.text

    await env.reset(options={"numbers": [3, 4, 2], "target": 18})
    result = await env.step({"type": "submit", "expression": "3*(4+2"})  # a broken submission also ends it
    assert (result.reward, result.terminated) == (0.0, True)
    assert result.observation.error.error_type == "invalid_args" and "cannot parse" in result.observation.error.message


@pytest.mark.parametrize(
    "action, error_type, message",
    [
        ({**CALC, "arguments": {"expression": "1/0"}}, "execution_error", "division by zero"),
        ({**CALC, "arguments": {"expression": "__import__('os')"}}, "execution_error", "function calls"),
        ({**CALC, "arguments": {"expression": "9**9**9"}}, "execution_error", "'**'"),
        ({**CALC, "arguments": {"expr": "1+1"}}, "invalid_args", "expected arguments"),
        ({**CALC, "arguments": {"expression": 5}}, "invalid_args", "must be a string"),
        ({**CALC}, "invalid_args", "expected arguments"),
        ({"type": "call_tool", "tool_name": "python", "arguments": {"code": "1"}}, "tool_not_found", "no tool"),
    ],
)
async def test_bad_tool_calls_are_error_observations_that_take_a_turn(action, error_type, message):
    env = CountdownEnv()
    await env.reset(seed=0)
    result = await env.step(action)
    obs = result.observation
    assert obs.error.error_type == error_type and message in obs.error.message
    assert (result.reward, result.done, obs.turns_left) == (0.0, False, 7)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"type": "submit"}, "needs 'expression'"),
        ({"type": "call_tool", "arguments": {}}, "needs 'tool_name'"),
        ({"type": "submit", "expression": "1", "tool_name": "x"}, "does not take ['tool_name']"),
        ({"type": "list_tools", "expression": "1"}, "does not take"),
        ({"type": "answer", "expression": "1"}, "type"),
        ({"expression": "1"}, "type"),
        ({"type": "submit", "expression": "1", "bogus": 1}, "Extra inputs"),
    ],
)
def test_actions_off_the_schema_are_refused_with_clear_errors(payload, message):
    with pytest.raises(InvalidActionError) as caught:
        CountdownEnv().parse_action(payload)
    assert message in str(caught.value)


async def test_out_of_turns_terminates_with_zero_and_shows_a_solution():
    env = CountdownEnv(max_turns=3)
    await env.reset(seed=2)
    results = [await env.step({**CALC, "arguments": {"expression": "1+1"}}) for _ in range(3)]
    assert [r.terminated for r in results] == [False, False, True]
    assert sum(r.reward for r in results) == 0.0
    assert "No turns left" in results[-1].observation.text
    assert results[-1].info == {"solved": False, "solution": generate_task(random.Random(2)).solution}


async def test_list_tools_via_step_and_mcp():
    env = CountdownEnv()
    result = await env.step({"type": "list_tools"})  # discovery works before reset, takes no turn
    assert [t["name"] for t in result.observation.tools] == ["calculator", "submit"]
    assert result.observation.tools[0]["inputSchema"]["required"] == ["expression"]
    assert [t.name for t in await env.list_tools()] == [t.name for t in TOOLS]


async def test_mcp_call_tool_follows_the_episode_rules():
    env = CountdownEnv(max_turns=4)
    # No episode: the calculator is a pure function; submit needs an episode.
    assert await env.call_tool("calculator", {"expression": "7/2"}) == {"value": "7/2"}
    assert await env.call_tool("calculator", {"expression": "1/0"}) == {"error": "division by zero"}
    with pytest.raises(EpisodeNotStartedError):
        await env.call_tool("submit", {"expression": "1"})
    with pytest.raises(NotImplementedError, match="no tool named 'shell'"):
        await env.call_tool("shell", {})
    await env.reset(options={"numbers": [6, 4], "target": 24})
    assert await env.call_tool("calculator", {"expression": "6*4"}) == {"value": "24"}
    assert (await env.state()).turns_used == 1  # a tool call in an episode takes a turn
    assert await env.call_tool("submit", {"expression": "6*4"}) == {"correct": True, "value": "24", "reward": 1.0}
    assert (await env.state()).done


async def test_same_seed_same_episode():
    async def play(seed):
        env = CountdownEnv()
        obs, _ = await env.reset(seed=seed)
        trace = [obs.model_dump()]
        for expression in ("1+2", "3*4", obs.numbers and str(obs.numbers[0])):
            r = await env.step({**CALC, "arguments": {"expression": expression}})
            trace.append((r.observation.model_dump(), r.reward))
        r = await env.step({"type": "submit", "expression": "+".join(map(str, obs.numbers))})
        trace.append((r.observation.model_dump(), r.reward, r.info))
        return trace

    assert await play(11) == await play(11)
    assert (await play(11))[0] != (await play(12))[0]


def test_generated_tasks_are_solvable_and_nontrivial():
    rng = random.Random(0)
    for _ in range(500):
        task = generate_task(rng)
        assert len(task.numbers) == 4 and all(1 <= n <= 10 for n in task.numbers)
        assert 0 < task.target <= 1000 and task.target not in task.numbers
        assert check_submission(task.solution, task).correct, task


@pytest.mark.slow  # importing datasets (pyarrow, pandas) takes ~3 s on a cold 2-core machine
async def test_tasks_from_a_local_dataset_by_index_and_by_seed():
    dataset = make_task_dataset(20, seed=3)
    assert dataset.column_names == ["index", "numbers", "target", "solution"]
    assert len(dataset) == 20 and make_task_dataset(20, seed=3)["target"] == dataset["target"]
    env = CountdownEnv(tasks=dataset)
    obs, _ = await env.reset(options={"index": 7})
    assert (obs.numbers, obs.target) == (dataset[7]["numbers"], dataset[7]["target"])
    result = await env.step({"type": "submit", "expression": dataset[7]["solution"]})
    assert result.reward == 1.0
    by_seed = [(await env.reset(seed=s))[0].target for s in range(5)]
    assert by_seed == [(await env.reset(seed=s))[0].target for s in range(5)]
    assert set(by_seed) <= set(dataset["target"])
    with pytest.raises(ValueError, match="index must be an integer in 0..19"):
        await env.reset(options={"index": 20})
    with pytest.raises(ValueError, match="needs tasks"):
        await CountdownEnv().reset(options={"index": 0})
    with pytest.raises(ValueError, match="both 'numbers' and 'target'"):
        await env.reset(options={"numbers": [1, 2]})
    with pytest.raises(ValueError, match="unknown reset options"):
        await env.reset(options={"level": 3})


def test_env_imports_without_datasets():
    code = (
        "import sys; sys.modules['datasets'] = None; sys.modules['gymnasium'] = None\n"
        "from envs.countdown import CountdownEnv\n"
        "env = CountdownEnv().sync(); obs, _ = env.reset(seed=0); print(obs.target)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_action_model_schema_names_the_types():
    schema = CountdownAction.model_json_schema()
    assert schema["properties"]["type"]["enum"] == ["call_tool", "submit", "list_tools"]
    assert schema["required"] == ["type"]
