"""What an agent needs to know about an env, fetched once per env and cached.

A local env describes itself through its classes (``action_type``, ``metadata``); a
:class:`~forge_env.client.RemoteEnv` has a permissive ``AnyAction`` type, so its action
schema comes from the server's ``GET /schema`` and its name from ``GET /metadata``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from forge_env._exceptions import ForgeEnvError
from forge_env.env import AnyAction, AsyncEnv, ToolSpec

__all__ = ["EnvInfo", "EnvInfoCache", "env_key", "fetch_env_info", "is_remote"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """An env's name, description, action JSON schema and MCP tools."""

    name: str
    description: str
    action_schema: dict[str, Any]
    tools: tuple[ToolSpec, ...] = ()
    remote: bool = False


def is_remote(env: AsyncEnv[Any, Any]) -> bool:
    """True for a RemoteEnv (or anything that serves its schema over a wire like one)."""
    base = env.unwrapped
    try:
        from forge_env.client import RemoteEnv
    except ImportError:  # pragma: no cover - the client's deps are core deps
        RemoteEnv = None  # type: ignore[assignment,misc]
    if RemoteEnv is not None and isinstance(base, RemoteEnv):
        return True
    return base.action_type is AnyAction and callable(getattr(base, "schema", None))


def env_key(env: AsyncEnv[Any, Any]) -> tuple[Any, ...]:
    """The cache key of an env: its URL when remote (its name is the URL until
    ``metadata()`` is fetched), else its name and action model."""
    base = env.unwrapped
    if is_remote(env):
        return ("remote", str(getattr(base, "url", base.name)))
    return ("local", env.name, env.action_type)


async def fetch_env_info(env: AsyncEnv[Any, Any], *, with_tools: bool) -> EnvInfo:
    """Read the env's action schema (and MCP tools when ``with_tools``)."""
    base = env.unwrapped
    tools: tuple[ToolSpec, ...] = ()
    if is_remote(env):
        schema = await base.schema()  # type: ignore[attr-defined]
        action = schema.get("action") if isinstance(schema, dict) else None
        action_schema: dict[str, Any] = action if isinstance(action, dict) else {}
        name, description = env.name, ""
        metadata = getattr(base, "metadata", None)
        if callable(metadata):
            try:
                meta = await metadata()
                name, description = meta.name, meta.description
            except ForgeEnvError as e:  # an OpenEnv server without /metadata still works
                logger.debug("no metadata from %s: %s", name, e)
        remote = True
    else:
        action_schema = env.action_type.model_json_schema()
        meta = env.metadata
        name = env.name
        description = meta.description if meta is not None else ""
        remote = False
    if with_tools:
        try:
            tools = tuple(await env.list_tools())
        except (ForgeEnvError, NotImplementedError) as e:
            # A server without MCP support offers no tools; the action schema still gives some.
            logger.debug("%s lists no tools: %s", name, e)
    return EnvInfo(
        name=name, description=description, action_schema=action_schema, tools=tools, remote=remote
    )


class EnvInfoCache(Generic[T]):
    """Per-env cache of an async computation; concurrent first calls share one fetch.

    Episodes of one agent start concurrently (a rollout starts hundreds at once); without
    sharing, each would fetch the same schema from the server.
    """

    def __init__(self) -> None:
        self._done: dict[tuple[Any, ...], T] = {}
        self._pending: dict[tuple[Any, ...], asyncio.Task[T]] = {}

    async def get(self, key: tuple[Any, ...], compute: Callable[[], Awaitable[T]]) -> T:
        if key in self._done:
            return self._done[key]
        loop = asyncio.get_running_loop()
        task = self._pending.get(key)
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(_run(compute))
            self._pending[key] = task
        try:
            value = await asyncio.shield(task)
        finally:
            if task.done() and self._pending.get(key) is task:
                del self._pending[key]
        self._done[key] = value
        return value


async def _run(compute: Callable[[], Awaitable[T]]) -> T:
    return await compute()
