"""Turn whatever the user passed to ``create_app`` into one async way of making envs.

``create_app`` accepts an :class:`AsyncEnv` subclass, or a zero-argument callable (sync or
async) returning an instance. The server also needs the env's *types* (for ``/schema``) and
its metadata (for ``/metadata``) without holding a session open; this module works them out
from the class when it can, and from one probe instance when it cannot.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any, Union

from forge_env.env._core import AsyncEnv, EnvMetadata

__all__ = ["EnvFactory", "EnvFactoryLike", "default_metadata"]

EnvFactoryLike = Union[
    type[AsyncEnv[Any, Any]],
    Callable[[], AsyncEnv[Any, Any]],
    Callable[[], Awaitable[AsyncEnv[Any, Any]]],
]


class EnvFactory:
    """Makes one env per session, whatever form the user's factory has.

    Args:
        factory: an ``AsyncEnv`` subclass, or a zero-arg callable (plain or ``async def``)
            returning an ``AsyncEnv``.

    Raises:
        TypeError: when ``factory`` is an env *instance* or not callable.
    """

    def __init__(self, factory: EnvFactoryLike) -> None:
        if isinstance(factory, AsyncEnv):
            raise TypeError(
                f"create_app() needs a factory, got an env instance {factory!r}: pass the "
                f"class ({type(factory).__name__}) or a zero-arg function returning a new "
                "instance, so that every session gets its own env"
            )
        if not callable(factory):
            raise TypeError(
                f"create_app() needs an AsyncEnv subclass or a zero-arg callable, got "
                f"{type(factory).__name__}"
            )
        self._factory = factory
        self._is_async = _is_async_callable(factory)
        self.env_type: type[AsyncEnv[Any, Any]] | None = _static_env_type(factory)
        self.name = _factory_name(factory)

    async def create(self) -> AsyncEnv[Any, Any]:
        """A new env instance (awaits the factory if it is async).

        Raises:
            TypeError: when the factory returned something that is not an ``AsyncEnv``.
        """
        env = self._factory()
        if self._is_async or inspect.isawaitable(env):
            env = await env  # type: ignore[misc]
        if not isinstance(env, AsyncEnv):
            raise TypeError(
                f"env factory {self.name} returned {type(env).__name__}, not an AsyncEnv; "
                "wrap gymnasium envs with forge_env.from_gymnasium(...)"
            )
        if self.env_type is None:
            self.env_type = type(env)
        return env

    async def resolve_type(self) -> type[AsyncEnv[Any, Any]]:
        """The env class, creating (and closing) one probe instance if it is not known yet."""
        if self.env_type is None:
            env = await self.create()
            await env.close()
        assert self.env_type is not None
        return self.env_type


def default_metadata(env_type: type[AsyncEnv[Any, Any]]) -> EnvMetadata:
    """``GET /metadata`` for an env that declares none: its name and docstring summary."""
    if env_type.metadata is not None:
        return env_type.metadata
    name = env_type.__name__
    # A class's own __doc__ (None when it has none); inspect.getdoc would inherit
    # AsyncEnv's docstring, which describes the interface, not this env.
    doc = inspect.cleandoc(env_type.__doc__) if env_type.__doc__ else ""
    summary = doc.split("\n\n")[0].replace("\n", " ").strip()
    return EnvMetadata(name=name, description=summary or f"{name} environment")


def _unwrap(factory: Any) -> Any:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


def _is_async_callable(factory: Any) -> bool:
    target = _unwrap(factory)
    if inspect.isclass(target):
        return False
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)
    )


def _static_env_type(factory: Any) -> type[AsyncEnv[Any, Any]] | None:
    """The env class when it is knowable without calling the factory."""
    target = _unwrap(factory)
    if inspect.isclass(target):
        if not issubclass(target, AsyncEnv):
            raise TypeError(
                f"create_app() got class {target.__name__}, which is not an AsyncEnv "
                "subclass; wrap gymnasium envs with forge_env.from_gymnasium(...)"
            )
        return target
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to probing
        return None
    ret = hints.get("return")
    ret = typing.get_origin(ret) or ret
    if inspect.isclass(ret) and issubclass(ret, AsyncEnv) and ret is not AsyncEnv:
        return ret
    return None


def _factory_name(factory: Any) -> str:
    target = _unwrap(factory)
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
