"""Run environments in this process: no server, no sockets, no serialisation."""

from __future__ import annotations

from typing import Any

from forge_env.env import AsyncEnv
from forge_env.runtime._base import BaseRuntime
from forge_env.runtime._resolve import EnvFactory, new_env, resolve_env_factory

__all__ = ["InProcessRuntime"]


class InProcessRuntime(BaseRuntime):
    """Sessions are fresh env instances built by a factory in this process.

    The cheapest runtime: for tests, debugging and single-process training. Sessions
    are the env objects themselves, so ``step`` takes instances of the env's
    ``action_type`` (use ``env.parse_action(d)`` for a dict), exactly as the server would
    pass them.

    >>> import asyncio
    >>> async def main():
    ...     async with InProcessRuntime("guess_number") as runtime:
    ...         async with await runtime.session() as env:
    ...             obs, info = await env.reset(seed=1)
    >>> asyncio.run(main())  # doctest: +SKIP

    Args:
        env_factory_or_spec: an AsyncEnv subclass, a zero-argument factory (sync or
            async) returning a fresh env, or an ENV spec string (see
            :func:`~forge_env.runtime.resolve_env_factory`).
    """

    def __init__(self, env_factory_or_spec: EnvFactory | str) -> None:
        super().__init__()
        self.spec = env_factory_or_spec
        self._factory: EnvFactory | None = None
        self.sessions_opened = 0

    def __repr__(self) -> str:
        return f"InProcessRuntime({self.spec!r}, state={self.state.value})"

    async def _start(self) -> None:
        # Resolve at start, not in __init__: a bad spec fails where users expect errors
        # (start / `async with`), and constructing a runtime stays free of imports.
        self._factory = resolve_env_factory(self.spec)

    async def _stop(self) -> None:
        """Nothing to stop: sessions belong to their callers, who close them."""

    async def health(self) -> bool:
        return self.running

    async def _session(self) -> AsyncEnv[Any, Any]:
        assert self._factory is not None
        env = await new_env(self._factory, self.spec)
        self.sessions_opened += 1
        return env
