"""python_code through the real sandbox: every task is solvable, wrong code fails, hostile
code is stopped with the limit named, and the env keeps serving."""

from __future__ import annotations

import pytest

from envs.python_code import TASKS, PythonCodeEnv, make_task_dataset
from forge_env import EpisodeNotStartedError, InvalidActionError, RemoteEnv
from forge_env.sandbox import SandboxLimits
from forge_env.server import create_app

pytestmark = pytest.mark.sandbox

TIGHT = SandboxLimits(cpu_seconds=1, wall_seconds=3, memory_mb=256)


def run(code: str) -> dict:
    return {"type": "call_tool", "tool_name": "run_python", "arguments": {"code": code}}


def submit(code: str) -> dict:
    return {"type": "submit", "code": code}


async def test_every_reference_solution_solves_its_task():
    env = PythonCodeEnv()
    for index, task in enumerate(TASKS):
        obs, info = await env.reset(options={"index": index})
        assert obs.task_id == task.task_id and info["task_index"] == index
        obs, reward, terminated, truncated, info = await env.step(env.parse_action(submit(task.solution)))
        assert (reward, terminated, truncated, info["solved"]) == (1.0, True, False, True), (task.task_id, obs.text)
        assert obs.tests_passed == obs.tests_total == len(task.tests)


async def test_wrong_and_forged_solutions_do_not_pass():
    env = PythonCodeEnv()
    await env.reset(options={"index": 0})  # add(a, b)
    obs, reward, *_ = await env.step(env.parse_action(submit("def add(a, b):\n    return a - b")))
    assert reward < 1.0 and obs.tests_passed < obs.tests_total
    # printing something that looks like a verdict earns nothing: the marker is per run
    await env.reset(options={"index": 0})
    forged = 'print("@@forge-env-verdict-0000000000000000@@{\\"passed\\": 99}")\nraise SystemExit(0)'
    obs, reward, *_ = await env.step(env.parse_action(submit(forged)))
    assert reward == 0.0 and obs.tests_passed == 0


async def test_runs_show_output_and_turns_run_out():
    env = PythonCodeEnv(max_turns=2)
    obs, _ = await env.reset(seed=1)
    assert obs.turns_left == 2 and obs.task_id == TASKS[1].task_id
    obs, reward, terminated, *_ = await env.step(env.parse_action(run("print(6 * 7)")))
    assert obs.stdout.strip() == "42" and obs.exit_code == 0 and reward == 0.0 and not terminated
    obs, reward, terminated, *_ = await env.step(env.parse_action(run("raise ValueError('x')")))
    assert obs.exit_code != 0 and "ValueError" in obs.stderr
    assert terminated and reward == 0.0 and obs.turns_left == 0
    with pytest.raises(EpisodeNotStartedError):
        await env.step(env.parse_action(run("print(1)")))


@pytest.mark.parametrize(
    "code, limits",
    [
        ("while True:\n    pass", ("cpu", "wall")),
        ("import time\ntime.sleep(60)", ("wall",)),
        ("x = bytearray(2 * 1024 ** 3)", ("memory",)),
    ],
)
async def test_hostile_runs_are_stopped_and_named(code, limits):
    env = PythonCodeEnv(limits=TIGHT)
    await env.reset(options={"index": 0})
    obs, reward, terminated, _, info = await env.step(env.parse_action(run(code)))
    assert obs.limit_hit in limits and info["limit_hit"] == obs.limit_hit, obs.text
    assert not terminated and reward == 0.0
    obs, *_ = await env.step(env.parse_action(run("print('still here')")))
    assert obs.stdout.strip() == "still here"


async def test_bad_actions_are_refused_with_the_fix():
    env = PythonCodeEnv()
    await env.reset(seed=0)
    with pytest.raises(InvalidActionError, match="arguments"):
        env.parse_action({"type": "call_tool", "tool_name": "run_python", "arguments": {}})
    with pytest.raises(InvalidActionError, match="needs 'code'"):
        env.parse_action({"type": "submit"})


def test_task_set_as_a_dataset_round_trips():
    dataset = make_task_dataset()
    assert len(dataset) == len(TASKS) >= 30
    env = PythonCodeEnv(tasks=dataset)
    assert [t.task_id for t in env.tasks] == [t.task_id for t in TASKS]


async def test_an_episode_over_the_wire_with_the_mcp_tool(serve_app):
    url = serve_app(create_app(PythonCodeEnv, max_sessions=4))
    async with RemoteEnv(url) as env:
        tools = await env.list_tools()
        assert [t.name for t in tools] == ["run_python"]
        obs, _ = await env.reset(options={"index": 0})
        assert obs.task_id == "add"
        result = await env.call_tool("run_python", {"code": "print(sum([1, 2]))"})
        assert result["stdout"].strip() == "3" and result["exit_code"] == 0
        obs, reward, terminated, _, info = await env.step(submit(TASKS[0].solution))
        assert reward == 1.0 and terminated and info["solved"] is True
