"""Unit tests of forge_env.server's building blocks: the fast frame encoder (which must
decode to exactly what forge_env._wire defines), env factories, and create_app's checks."""

from __future__ import annotations

import enum
import functools
import json
import math

import pytest

from forge_env import Action, AsyncEnv, EnvMetadata, Observation, ResetResult, StepResult
from forge_env._wire import ErrorCode, error_frame, observation_payload
from forge_env.server import ServerStats, create_app
from forge_env.server._factory import EnvFactory, default_metadata
from forge_env.server._frames import dumps_jsonable, error_frame_text, observation_frame_text
from forge_env.server._server import EnvServer, FrameError


class Color(enum.Enum):
    RED = "red"


class Obs(Observation):
    text: str
    score: float = 0.0
    items: list[int] = []


class Act(Action):
    x: int


class Env(AsyncEnv[Obs, Act]):
    """A tiny env.

    Second paragraph."""

    action_type = Act
    observation_type = Obs

    async def reset(self, *, seed=None, options=None):
        return ResetResult(Obs(text="start"), {})

    async def step(self, action):
        return StepResult(Obs(text=str(action.x)), 1.0, False, False, {})


class Undocumented(Env):
    pass


CASES = [
    dict(observation=Obs(text="hi"), reward=None, done=False, info={}, truncated=False),
    dict(observation=Obs(text="é ✓ \"q\"\n", score=2.5, items=[1, 2]), reward=1.0, done=True, info={}, truncated=False),
    dict(observation=Obs(text="t", score=float("nan")), reward=float("inf"), done=True, info={"k": (1, 2)}, truncated=True),
    dict(observation=Obs(text="x"), reward=-3, done=False, info={1: {2, }, "m": Obs(text="nested"), "c": Color.RED, "nan": math.nan}, truncated=False),
    dict(observation=Obs(text="x"), reward=0.1 + 0.2, done=False, info=None, truncated=True),
]


@pytest.mark.parametrize("case", CASES)
def test_observation_frame_matches_wire_definition(case):
    expected = {"type": "observation", "data": observation_payload(**case)}
    fast = observation_frame_text(**case)
    assert json.loads(fast) == expected
    assert json.loads(observation_frame_text(**case, frame=False)) == expected["data"]


def test_observation_frame_rejects_non_models():
    with pytest.raises(TypeError, match="must return an Observation"):
        observation_frame_text("text", reward=0, done=False, info={}, truncated=False)


def test_error_frame_text_matches_wire():
    text = error_frame_text(ErrorCode.CAPACITY_REACHED, "full", active_sessions=3, max_sessions=3)
    assert json.loads(text) == error_frame(ErrorCode.CAPACITY_REACHED, "full", active_sessions=3, max_sessions=3)


def test_dumps_jsonable_fast_and_fallback():
    assert dumps_jsonable({"a": [1, 2.5, None, True]}) == '{"a":[1,2.5,null,true]}'
    assert json.loads(dumps_jsonable({"a": float("nan"), "s": {3}})) == {"a": None, "s": [3]}


def test_split_reset_data():
    assert EnvServer.split_reset_data({}) == (None, None)
    assert EnvServer.split_reset_data({"seed": 3}) == (3, None)
    assert EnvServer.split_reset_data({"seed": 3, "episode_id": "e", "level": 2}) == (3, {"episode_id": "e", "level": 2})
    for bad in ("3", 1.5, True):
        with pytest.raises(FrameError) as info:
            EnvServer.split_reset_data({"seed": bad})
        assert info.value.errors[0]["loc"] == ["data", "seed"]


# --- factories -----------------------------------------------------------------------


async def test_factory_forms():
    async def make_async() -> Env:
        return Env()

    def make_unannotated():
        return Undocumented()

    cases = [
        (Env, Env),
        (functools.partial(Env), Env),
        (lambda: Env(), None),
        (make_async, Env),
        (make_unannotated, None),
    ]
    for raw, static_type in cases:
        factory = EnvFactory(raw)
        assert factory.env_type is static_type
        env = await factory.create()
        assert isinstance(env, Env)
        assert await factory.resolve_type() is type(env)


async def test_factory_errors():
    with pytest.raises(TypeError, match="got an env instance"):
        EnvFactory(Env())
    with pytest.raises(TypeError, match="not an AsyncEnv subclass"):
        EnvFactory(dict)
    with pytest.raises(TypeError, match="zero-arg callable"):
        EnvFactory(42)
    with pytest.raises(TypeError, match="returned str, not an AsyncEnv"):
        await EnvFactory(lambda: "nope").create()


def test_default_metadata():
    assert default_metadata(Env) == EnvMetadata(name="Env", description="A tiny env.")
    assert default_metadata(Undocumented).description == "Undocumented environment"

    class Declared(Env):
        metadata = EnvMetadata(name="declared", description="d")

    assert default_metadata(Declared).name == "declared"


# --- create_app checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_sessions=0), "max_sessions"),
        (dict(max_sessions=2.5), "max_sessions"),
        (dict(session_idle_timeout=0), "session_idle_timeout"),
        (dict(step_timeout=-1), "step_timeout"),
    ],
)
def test_create_app_rejects_bad_limits(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_app(Env, **kwargs)


def test_create_app_refuses_shared_state_envs_with_many_sessions():
    class Shared(Env):
        supports_concurrent_sessions = False

    with pytest.raises(ValueError, match="max_sessions=1"):
        create_app(Shared)
    app = create_app(Shared, max_sessions=1)
    assert app.state.stats.max_sessions == 1


def test_stats_snapshot():
    stats = ServerStats(max_sessions=3)
    stats.count_error("INVALID_JSON")
    stats.count_error("INVALID_JSON")
    snap = stats.snapshot()
    assert snap["errors"] == {"INVALID_JSON": 2}
    snap["errors"]["X"] = 1  # a copy: the live counters are untouched
    assert stats.errors == {"INVALID_JSON": 2}


def test_server_imports_without_heavy_dependencies():
    import subprocess
    import sys

    code = (
        "import sys, forge_env.server; "
        "print([m for m in ('torch', 'gymnasium', 'numpy', 'openenv') if m in sys.modules])"
    )
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
