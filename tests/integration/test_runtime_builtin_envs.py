"""The runtimes with the real built-in envs: every spec form, in-process and as a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_env.runtime import (
    EnvPool,
    InProcessRuntime,
    LocalProcessRuntime,
    builtin_envs,
    resolve_app,
    resolve_env_factory,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_every_builtin_resolves_by_name_and_by_folder():
    names = builtin_envs()
    assert {"echo", "guess_number", "countdown", "frozen_lake"} <= set(names)
    for name, target in names.items():
        by_name = resolve_env_factory(name)
        assert f"{by_name.__module__}:{by_name.__qualname__}" == target
        assert resolve_env_factory(str(REPO_ROOT / "envs" / name)) is by_name
    assert resolve_env_factory("./envs/guess_number") is resolve_env_factory("guess_number")


def test_builtin_server_app_module_serves_as_is():
    import envs.echo.server.app as echo_app

    assert resolve_app("envs.echo.server.app:app") is echo_app.app
    # The app's env runs in-process too (create_app recorded the factory).
    assert callable(resolve_env_factory("envs.echo.server.app:app"))


async def test_echo_in_process_episode():
    async with InProcessRuntime("echo") as runtime:
        async with await runtime.session() as env:
            await env.reset(seed=0)
            result = await env.step(env.parse_action({"message": "hello"}))
            assert result.observation.echoed_message == "hello"
            assert result.reward == pytest.approx(0.5)


@pytest.mark.slow
async def test_echo_local_process_by_name_and_in_a_pool():
    async with LocalProcessRuntime("echo") as runtime:
        async with await runtime.session() as env:
            await env.reset(seed=0)
            result = await env.step({"message": "hey"})
            assert result.observation.echoed_message == "hey" and result.reward == pytest.approx(0.3)
    pool = EnvPool(lambda: LocalProcessRuntime(str(REPO_ROOT / "envs" / "echo")), size=2)
    async with pool:
        for word in ("a", "bb", "ccc"):
            async with pool.lease() as env:
                await env.reset()
                assert (await env.step({"message": word})).observation.message_length == len(word)
        assert pool.stats()["leases_total"] == 3 and pool.stats()["healthy"] == 2
