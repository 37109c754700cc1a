"""Built-in environments, and a registry that finds them by name.

Each environment is a small package in OpenEnv's shape::

    envs/<name>/
        __init__.py      public names
        models.py        pydantic Action / Observation / State
        env.py           the AsyncEnv
        server/app.py    ``app = create_app(TheEnv)``: the OpenEnv-compatible server
        Dockerfile       image serving it on port 8000 (build context: the repo root)
        openenv.yaml     OpenEnv manifest
        README.md        action / observation / reward spec

The registry maps a name to ``"module:attribute"`` and imports nothing until asked, so
``forge-env list`` works without gymnasium or datasets installed.

>>> sorted(BUILTIN_ENVS)
['countdown', 'echo', 'frozen_lake', 'guess_number', 'python_code']
>>> env = load_env_factory("guess_number")()
>>> env.name
'guess_number'
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from forge_env.env import AsyncEnv

__all__ = ["BUILTIN_ENVS", "describe", "load_env_factory"]

#: Built-in env name -> ``"module:attribute"`` of its AsyncEnv class.
BUILTIN_ENVS: dict[str, str] = {
    "echo": "envs.echo.env:EchoEnv",
    "guess_number": "envs.guess_number.env:GuessNumberEnv",
    "countdown": "envs.countdown.env:CountdownEnv",
    "frozen_lake": "envs.frozen_lake.env:FrozenLakeEnv",
    "python_code": "envs.python_code.env:PythonCodeEnv",
}

# One line per env, kept here (equal to each class's metadata.description, which a test
# checks) so listing envs imports none of them.
_DESCRIPTIONS: dict[str, str] = {
    "echo": "Echoes each message back; reward 0.1 per character. For protocol tests.",
    "guess_number": "Guess a hidden integer in a few turns from higher/lower hints.",
    "countdown": "Reach a target number from given numbers with + - * /, using a calculator tool.",
    "frozen_lake": "gymnasium FrozenLake-v1 (4x4, not slippery) played through text.",
    "python_code": "Write a Python function; run code in a sandbox; hidden unit tests score the submission.",
}


def describe() -> dict[str, str]:
    """Built-in env name -> one-line description (for ``forge-env list``).

    >>> describe()["echo"]
    'Echoes each message back; reward 0.1 per character. For protocol tests.'
    """
    return dict(_DESCRIPTIONS)


def load_env_factory(name: str, **kwargs: Any) -> Callable[[], AsyncEnv[Any, Any]]:
    """A zero-argument callable building the env called ``name``.

    ``name`` is a built-in name (see :data:`BUILTIN_ENVS`) or any ``"module:attribute"``
    import path of an AsyncEnv class or factory. ``kwargs`` are bound as constructor
    arguments (e.g. ``load_env_factory("guess_number", hi=32)``).

    Raises:
        KeyError: unknown name; the message lists the known names.
        ImportError: the env's module (or a dependency such as gymnasium) is missing.
    """
    target = BUILTIN_ENVS.get(name)
    if target is None:
        if ":" not in name:
            raise KeyError(
                f"unknown environment {name!r}; built-in environments: "
                f"{', '.join(sorted(BUILTIN_ENVS))} (or pass 'package.module:ClassName')"
            )
        target = name
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        factory = getattr(module, attribute)
    except AttributeError:
        raise KeyError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(factory):
        raise TypeError(f"{target} is not callable (expected an AsyncEnv class or factory)")
    return functools.partial(factory, **kwargs) if kwargs else factory
