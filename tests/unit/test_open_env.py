"""forge_env.rollout.open_env: one env from each kind of env source, closed (or returned) after."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from envs import load_env_factory
from forge_env.rollout import open_env


class _Closing:
    """A guess_number env that records its close."""

    def __init__(self, log: list[str]) -> None:
        self.env = load_env_factory("guess_number")()
        self.log = log

    async def reset(self, **kwargs: Any) -> Any:
        return await self.env.reset(**kwargs)

    async def close(self) -> None:
        self.log.append("closed")


class _Pool:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[Any]:
        self.log.append("leased")
        yield _Closing(self.log)
        self.log.append("returned")


class _Runtime:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def session(self) -> Any:
        self.log.append("session")
        return _Closing(self.log)


async def test_each_source_gives_an_env_and_takes_it_back() -> None:
    log: list[str] = []

    async def async_factory() -> Any:
        return _Closing(log)

    for source, expected in [
        (lambda: _Closing(log), ["closed"]),
        (async_factory, ["closed"]),
        (_Runtime(log), ["session", "closed"]),
        (_Pool(log), ["leased", "returned"]),   # a pool's env goes back to the pool, not closed
    ]:
        log.clear()
        async with open_env(source) as env:
            first = await env.reset(seed=3)
            assert "integer from 1 to 16" in first.observation.text
        assert log == expected


def _factory(make: Callable[[list[str]], Any], log: list[str]) -> Callable[[], Any]:
    return lambda: make(log)


async def test_the_env_is_closed_when_the_block_raises_and_a_failing_close_is_not_raised() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="episode bug"):
        async with open_env(_factory(_Closing, log)):
            raise RuntimeError("episode bug")
    assert log == ["closed"]

    class _DeadOnClose(_Closing):
        async def close(self) -> None:
            raise ConnectionError("the server is gone")

    async with open_env(_factory(_DeadOnClose, log)) as env:
        assert env is not None


async def test_something_that_is_no_env_source_is_named() -> None:
    with pytest.raises(TypeError, match="envs must be an EnvPool, a runtime or a callable returning an env, got 42"):
        async with open_env(42):
            pass
