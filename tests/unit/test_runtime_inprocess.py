"""InProcessRuntime: sessions are fresh env instances; lifecycle guard; Protocol conformance."""

from __future__ import annotations

import pytest

from forge_env import Action, AsyncEnv, Observation, ResetResult, StepResult
from forge_env.runtime import EnvRuntime, EnvSpecError, InProcessRuntime, RuntimeState


class Inc(Action):
    by: int = 1


class Count(Observation):
    n: int


class CounterEnv(AsyncEnv[Count, Inc]):
    action_type = Inc
    observation_type = Count
    closed = 0

    async def reset(self, *, seed=None, options=None):
        self.n = seed or 0
        return ResetResult(Count(n=self.n), {"seed": seed})

    async def step(self, action):
        self.n += action.by
        return StepResult(Count(n=self.n), float(action.by), self.n >= 5, False, {})

    async def close(self):
        type(self).closed += 1


async def test_episode_runs_to_termination():
    async with InProcessRuntime(CounterEnv) as runtime:
        assert runtime.state is RuntimeState.RUNNING
        assert runtime.url is None and await runtime.health()
        async with await runtime.session() as env:
            obs, info = await env.reset(seed=1)
            assert (obs.n, info) == (1, {"seed": 1})
            rewards, terminated = [], False
            for _ in range(10):
                _, reward, terminated, truncated, _ = await env.step(Inc(by=2))
                rewards.append(reward)
                if terminated:
                    break
            assert terminated and rewards == [2.0, 2.0]
    assert runtime.state is RuntimeState.STOPPED and not await runtime.health()


async def test_each_session_is_a_fresh_isolated_instance():
    CounterEnv.closed = 0
    async with InProcessRuntime(CounterEnv) as runtime:
        a, b = await runtime.session(), await runtime.session()
        assert a is not b
        await a.reset(seed=0)
        await b.reset(seed=3)
        assert (await a.step(Inc())).observation.n == 1
        assert (await b.step(Inc())).observation.n == 4
        await a.close()
        await b.close()
        assert runtime.sessions_opened == 2 and CounterEnv.closed == 2


async def test_async_factory_and_spec_string():
    async def make() -> CounterEnv:
        return CounterEnv()

    async with InProcessRuntime(make) as runtime:
        assert isinstance(await runtime.session(), CounterEnv)
    async with InProcessRuntime(f"{__name__}:CounterEnv") as runtime:
        assert isinstance(await runtime.session(), CounterEnv)


async def test_factory_returning_non_env_is_a_clear_type_error():
    async with InProcessRuntime(lambda: object()) as runtime:
        with pytest.raises(TypeError, match="returned object, not an AsyncEnv"):
            await runtime.session()


async def test_session_before_start_says_what_to_do():
    runtime = InProcessRuntime(CounterEnv)
    with pytest.raises(RuntimeError, match=r"is new: call `await runtime.start\(\)`"):
        await runtime.session()


async def test_bad_spec_fails_at_start_not_construction():
    runtime = InProcessRuntime("rt_no_such_module_anywhere:Env")
    with pytest.raises(EnvSpecError, match="no module named"):
        await runtime.start()
    assert runtime.state is RuntimeState.NEW


async def test_restart_counts_and_start_stop_are_idempotent():
    runtime = InProcessRuntime(CounterEnv)
    await runtime.start()
    await runtime.start()
    await runtime.restart()
    await runtime.restart()
    assert runtime.restarts == 2 and runtime.running
    await runtime.stop()
    await runtime.stop()
    assert runtime.state is RuntimeState.STOPPED
    await runtime.start()  # a stopped runtime starts again
    assert runtime.running


def test_satisfies_the_runtime_protocol():
    assert isinstance(InProcessRuntime(CounterEnv), EnvRuntime)
    assert not isinstance(object(), EnvRuntime)
