"""Env pools as Monarch actors (MonarchEnvPool): the same trajectories as in-process, killed
env processes counted as failed episodes and respawned, a clear error when every env
process is gone, invalid actions kept as error observations, no process left behind.

Real Monarch processes on this host, a real TorchGenerator on the tiny model."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import pytest_asyncio

from conftest import descendant_processes, running_server
from runtime_test_env import alive

pytestmark = [pytest.mark.monarch, pytest.mark.usefixtures("monarch_processes_reaped"),
              pytest.mark.asyncio(loop_scope="module")]

GUESS_KWARGS = {"max_turns": 4}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def generator(tiny_model_path: str) -> Any:
    from forge_env.generator import TorchGenerator, TorchGeneratorConfig

    # One request per batch: a completion does not depend on which requests share its batch,
    # so trajectories compare exactly across runs.
    gen = TorchGenerator(TorchGeneratorConfig(model=tiny_model_path, max_model_len=1024, seed=0,
                                              max_batch_size=1))
    await gen.start()
    yield gen
    await gen.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def batched_generator(tiny_model_path: str) -> Any:
    """Faster (batched) sampling, for the tests that do not compare trajectories exactly."""
    from forge_env.generator import TorchGenerator, TorchGeneratorConfig

    gen = TorchGenerator(TorchGeneratorConfig(model=tiny_model_path, max_model_len=1024, seed=0))
    await gen.start()
    yield gen
    await gen.close()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_path)


def _collector(agent: Any, generator: Any, envs: Any, *, group_size: int = 2, max_turns: int = 4,
               concurrency: int = 8) -> Any:
    from forge_env.generator import SamplingParams
    from forge_env.rollout import CollectorConfig, RolloutCollector, RolloutConfig

    config = CollectorConfig(
        group_size=group_size, max_concurrent_episodes=concurrency,
        rollout=RolloutConfig(max_turns=max_turns, sampling=SamplingParams(max_tokens=8, temperature=0.0)),
    )
    return RolloutCollector(agent, generator, envs, config)


def _tasks(seeds: Sequence[int]) -> list[Any]:
    from forge_env.rollout import Task

    return [Task(seed=s) for s in seeds]


def _summary(groups: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [
        (t.task.seed, t.group_index, tuple(t.token_ids), tuple(t.loss_mask), tuple(t.rewards),
         t.termination, t.env_name, t.invalid_actions, tuple(u.observation_text for u in t.turns))
        for g in groups for t in g.trajectories
    ]


@pytest.mark.slow
async def test_trajectories_equal_the_in_process_ones(generator: Any, tokenizer: Any) -> None:
    from agents import make_agent
    from forge_env.monarch import MonarchEnvPool
    from forge_env.runtime import EnvPool, InProcessRuntime

    seeds = list(range(4))
    local_pool = EnvPool([InProcessRuntime("envs.guess_number.env:GuessNumberEnv")])
    async with local_pool:
        async with local_pool.lease() as env:
            agent = await make_agent("auto", tokenizer, env)
        local = await _collector(agent, generator, local_pool).collect(_tasks(seeds))

    async with MonarchEnvPool("guess_number", procs=2, sessions_per_proc=4) as pool:
        async with pool.lease() as env:
            assert type(await make_agent("auto", tokenizer, env)) is type(agent)
            assert env.name == "guess_number" and env.pid != os.getpid()
        collector = _collector(agent, generator, pool)
        remote = await collector.collect(_tasks(seeds))
        stats = pool.stats()
        pids = await pool.pids()

    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert _summary(remote) == _summary(local)
    for g_remote, g_local in zip(remote, local):
        for a, b in zip(g_remote.trajectories, g_local.trajectories):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-6)
    assert collector.stats.episodes == 8 and collector.stats.failed == 0
    assert stats["leases_total"] == 1 + 8 and stats["sessions_lost"] == 0 and stats["sessions_open"] == 0
    assert all(not alive(pid) for pid in pids)


@pytest.mark.slow
async def test_killed_env_process_fails_its_episodes_and_the_pool_recovers(
    batched_generator: Any, tokenizer: Any
) -> None:
    from agents import ChatAgent
    from forge_env.monarch import MonarchEnvPool

    agent = ChatAgent(tokenizer)
    async with MonarchEnvPool("guess_number", env_kwargs={"max_turns": 8}, procs=2,
                              sessions_per_proc=8) as pool:
        first_pids = await pool.pids()
        collector = _collector(agent, batched_generator, pool, group_size=4, max_turns=8, concurrency=16)
        run = asyncio.ensure_future(collector.collect(_tasks(range(6))))
        victim = None
        for _ in range(2000):  # wait until one process holds a few running episodes
            by_pid = pool.sessions_by_pid()
            victim = next((pid for pid, n in by_pid.items() if n >= 2), None)
            if victim is not None:
                break
            await asyncio.sleep(0.005)
        assert victim is not None, "no env process ever held two sessions"
        os.kill(victim, signal.SIGKILL)
        groups = await run

        trajs = [t for g in groups for t in g.trajectories]
        assert len(trajs) == 24 and collector.stats.episodes == 24  # none lost
        failed = [t for t in trajs if t.failed]
        assert failed, "killing a process holding sessions failed no episode"
        assert {t.termination for t in failed} == {"env_error"}
        assert all("died" in (t.error or "") for t in failed), failed[0].error
        assert collector.stats.failed == len(failed) == pool.stats()["sessions_lost"]

        # The dead process is respawned; later episodes all succeed on two live processes.
        for _ in range(200):
            if pool.stats()["respawns"] >= 1:
                break
            await asyncio.sleep(0.05)
        assert pool.stats()["respawns"] >= 1
        later = _collector(agent, batched_generator, pool, group_size=2, concurrency=8)
        again = await later.collect(_tasks(range(6)))
        assert later.stats.episodes == 12 and later.stats.failed == 0
        assert all(t.termination in ("terminated", "max_turns") for g in again for t in g.trajectories)
        new_pids = await pool.pids()
        assert victim not in new_pids and len(set(new_pids)) == 2
        assert set(first_pids) - {victim} <= set(new_pids)
    assert not any(alive(pid) for pid in new_pids)


async def test_every_env_process_gone_without_respawn_is_a_clear_error(
    batched_generator: Any, tokenizer: Any
) -> None:
    from agents import ChatAgent
    from forge_env.monarch import MonarchEnvPool, ServiceUnavailableError

    async with MonarchEnvPool("guess_number", procs=2, respawn=False, name="guess-envs") as pool:
        pids = await pool.pids()
        async with pool.lease() as env:
            await env.reset(seed=1)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            from forge_env import ConnectionClosedError

            with pytest.raises(ConnectionClosedError, match="died"):
                await env.step({"guess": 3})
        for _ in range(200):  # supervision notices dead processes within ~1 s
            if pool.stats()["healthy"] == 0:
                break
            await asyncio.sleep(0.05)
        collector = _collector(ChatAgent(tokenizer), batched_generator, pool)
        with pytest.raises(ServiceUnavailableError) as caught:
            await collector.collect(_tasks([1]))
    message = str(caught.value)
    assert "guess-envs" in message  # names the role
    assert "respawn" in message  # and the fix


async def test_invalid_actions_stay_error_observations(generator: Any, tokenizer: Any) -> None:
    from agents import ChatAgent
    from agents._base import ActionParseError
    from forge_env import InvalidActionError
    from forge_env.monarch import MonarchEnvPool
    from forge_env.rollout import run_episode
    from forge_env.rollout._trajectory import Task

    class Scripted(ChatAgent):
        """A chat agent whose replies are replaced by a script of actions (bad one first)."""

        async def new_episode(self, env: Any) -> Any:
            episode = await super().new_episode(env)
            script: Iterator[dict[str, Any]] = iter([{"bogus": 1}, {"message": "hello"}])

            def parse_action(ids: Any) -> dict[str, Any]:
                try:
                    return next(script)
                except StopIteration:
                    raise ActionParseError("no more actions") from None

            episode.parse_action = parse_action  # type: ignore[method-assign,assignment]
            return episode

    async with MonarchEnvPool("echo", procs=1) as pool:
        async with pool.lease() as env:
            await env.reset(seed=0)
            with pytest.raises(InvalidActionError) as caught:
                await env.step({"bogus": 1})
            assert type(caught.value) is InvalidActionError
            assert caught.value.errors and caught.value.env_name == "echo"
            assert any("env process" in note for note in getattr(caught.value, "__notes__", []))
            result = await env.step({"message": "still usable"})  # the session survives
            assert result.observation.echoed_message == "still usable"
            assert (await env.state()).step_count == 1
            assert [t.name for t in await env.list_tools()] == ["echo_message"]
            assert await env.call_tool("echo_message", {"message": "x"}) == "x"
            with pytest.raises(InvalidActionError):
                await env.call_tool("echo_message", {"wrong": "x"})

        async with pool.lease() as env:
            from forge_env.rollout import RolloutConfig

            traj = await run_episode(Scripted(tokenizer), env, generator, Task(seed=0),
                                     config=RolloutConfig(max_turns=3))
    assert not traj.failed and traj.termination == "max_turns"
    assert traj.invalid_actions == 2  # the env's InvalidActionError and the parse error
    assert traj.turns[0].error and "invalid action" in traj.turns[0].error
    assert traj.turns[0].observation_text.startswith("Error:")
    assert traj.turns[1].reward == pytest.approx(0.5) and traj.turns[1].observation_text == "hello"
    assert pool.stats()["sessions_lost"] == 0


async def test_a_bad_spec_fails_before_any_process_starts() -> None:
    from forge_env.monarch import MonarchEnvPool
    from forge_env.runtime import EnvSpecError

    before = set(descendant_processes())
    with pytest.raises(EnvSpecError, match="no_such_env"):
        async with MonarchEnvPool("no_such_env", procs=1):
            pass
    assert set(descendant_processes()) <= before


async def test_an_openenv_url_is_proxied_like_a_remote_env(tokenizer: Any) -> None:
    from agents import ChatAgent
    from agents._env_info import fetch_env_info
    from envs.guess_number.server.app import app
    from forge_env.client import RemoteEnv
    from forge_env.monarch import MonarchEnvPool

    with running_server(app) as url:
        direct: Any = RemoteEnv(url)
        try:
            expected = await fetch_env_info(direct, with_tools=False)
        finally:
            await direct.close()
        async with MonarchEnvPool(url, procs=1) as pool:
            async with pool.lease() as env:
                assert await fetch_env_info(env, with_tools=False) == expected
                assert env.name == "guess_number"
                obs, _ = await env.reset(seed=3)
                result = await env.step({"guess": 8})
                assert result.observation.feedback in ("higher", "lower", "correct")
                episode = await ChatAgent(tokenizer).new_episode(env)
                assert episode.info.name == "guess_number"
