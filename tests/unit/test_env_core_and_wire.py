"""The AsyncEnv contract, the SyncEnv view, the OpenEnv wire codec and the exception tree."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

import forge_env
from forge_env import (
    Action,
    AnyObservation,
    AsyncEnv,
    CapacityReachedError,
    InvalidActionError,
    Observation,
    RemoteExecutionError,
    ResetResult,
    ServerError,
    State,
    StepResult,
    ValidationFailedError,
)
from forge_env._exceptions import server_error_from_envelope
from forge_env._wire import (
    observation_payload,
    reset_result_from_payload,
    step_result_from_payload,
)


class Inc(Action):
    by: int


class Count(Observation):
    n: int


class Counter(AsyncEnv[Count, Inc]):
    action_type = Inc
    observation_type = Count

    def __init__(self) -> None:
        self.n = 0
        self.closed = 0

    async def reset(self, *, seed=None, options=None):
        self.n = seed or 0
        return ResetResult(Count(n=self.n), {"seed": seed})

    async def step(self, action: Inc):
        self.n += action.by
        return StepResult(Count(n=self.n), float(action.by), self.n >= 3, False, {})

    async def close(self) -> None:
        self.closed += 1


def test_step_result_unpacks_like_gymnasium():
    r = StepResult(Count(n=1), 0.5, False, True, {"k": 1})
    obs, reward, terminated, truncated, info = r
    assert (obs.n, reward, terminated, truncated, info) == (1, 0.5, False, True, {"k": 1})
    assert r.done and not StepResult(Count(n=1), 0.0, False, False, {}).done


def test_parse_action_validates_dicts_and_names_the_fields():
    env = Counter()
    assert env.parse_action({"by": 2}) == Inc(by=2)
    same = Inc(by=1)
    assert env.parse_action(same) is same
    with pytest.raises(InvalidActionError) as e:
        env.parse_action({"by": "x", "extra": 1})
    assert "by" in str(e.value) and "Counter" in str(e.value)
    assert {tuple(err["loc"]) for err in e.value.errors} == {("by",), ("extra",)}


def test_sync_view_accepts_dicts_and_closes_once():
    env = Counter()
    with env.sync() as sync:
        obs, info = sync.reset(seed=1)
        assert obs.n == 1 and info == {"seed": 1}
        obs, reward, terminated, truncated, _ = sync.step({"by": 2})
        assert (obs.n, reward, terminated, truncated) == (3, 2.0, True, False)
        assert isinstance(sync.state(), State)
    assert env.closed == 1
    with pytest.raises(RuntimeError, match="closed"):
        sync.reset()


def test_plain_with_on_an_async_env_says_how_to_fix_it():
    with pytest.raises(TypeError, match="async with"):
        with Counter():
            pass


async def test_async_with_closes_and_default_tools_are_empty():
    env = Counter()
    async with env:
        assert await env.list_tools() == []
        with pytest.raises(NotImplementedError, match="no tool named 'x'"):
            await env.call_tool("x", {})
    assert env.closed == 1


def test_payload_round_trip_keeps_truncation_and_info():
    payload = observation_payload(Count(n=4), reward=1.5, done=True, info={"why": "limit"}, truncated=True)
    assert payload == {
        "observation": {"n": 4},
        "reward": 1.5,
        "done": True,
        "metadata": {"why": "limit", "truncated": True},
    }
    r = step_result_from_payload(payload, Count)
    assert (r.observation, r.reward, r.terminated, r.truncated) == (Count(n=4), 1.5, False, True)
    assert r.info["why"] == "limit"
    # no info, not done: metadata is left out as OpenEnv does
    assert "metadata" not in observation_payload(Count(n=0), reward=None, done=False)


def test_decoding_tolerates_what_openenv_servers_send():
    # reward null, metadata nested in the observation, reward/done echoed inside it
    data = {
        "observation": {"n": 2, "reward": None, "done": False, "metadata": {"a": 1}},
        "reward": None,
        "done": False,
    }
    r = step_result_from_payload(data, Count)
    assert r.observation == Count(n=2) and r.reward == 0.0 and r.info == {"a": 1}
    # top-level metadata wins over nested
    data = {"observation": {"n": 1, "metadata": {"a": 1}}, "reward": 1, "done": True, "metadata": {"a": 2}}
    r = step_result_from_payload(data, Count)
    assert r.info == {"a": 2} and r.terminated and not r.truncated
    # untyped: every field survives
    r = step_result_from_payload({"observation": {"x": 1, "y": "z"}, "done": False}, AnyObservation)
    assert r.observation.x == 1 and r.observation.y == "z"


def test_reset_decoding_reports_done_and_reward_only_when_present():
    assert reset_result_from_payload({"observation": {"n": 0}, "reward": None, "done": False}, Count).info == {}
    info = reset_result_from_payload({"observation": {"n": 0}, "reward": 2.0, "done": True}, Count).info
    assert info == {"reward": 2.0, "done": True}


def test_payload_is_json_safe():
    class Odd(Observation):
        x: float

    payload = observation_payload(Odd(x=math.nan), reward=math.inf, done=False, info={"t": (1, 2), "s": {3}})
    assert payload["observation"]["x"] is None and payload["reward"] is None
    assert payload["metadata"] == {"t": [1, 2], "s": [3]}


@pytest.mark.parametrize(
    "code, cls",
    [
        ("VALIDATION_ERROR", ValidationFailedError),
        ("EXECUTION_ERROR", RemoteExecutionError),
        ("CAPACITY_REACHED", CapacityReachedError),
        ("SOMETHING_NEW", ServerError),
    ],
)
def test_error_envelopes_map_to_one_exception_type_per_code(code, cls):
    err = server_error_from_envelope(
        {"code": code, "message": "boom", "errors": [{"loc": ["guess"]}], "active_sessions": 2, "max_sessions": 2},
        url="http://127.0.0.1:1",
    )
    assert type(err) is cls and err.code == code
    assert "boom" in str(err) and "url=http://127.0.0.1:1" in str(err)
    if cls is ValidationFailedError:
        assert isinstance(err, InvalidActionError) and err.errors == [{"loc": ["guess"]}]
    if cls is CapacityReachedError:
        assert (err.active_sessions, err.max_sessions) == (2, 2)


def test_env_side_imports_without_torch_numpy_or_gymnasium():
    code = (
        "import sys, forge_env, forge_env.server, forge_env.client, envs.guess_number\n"
        "heavy = [m for m in ('torch', 'numpy', 'gymnasium', 'vllm') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_public_api_is_reexported():
    for name in forge_env.__all__:
        assert getattr(forge_env, name) is not None
    with pytest.raises(AttributeError):
        forge_env.not_a_thing  # noqa: B018
