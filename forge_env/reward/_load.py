"""Load a reward function named by a ``"module:function"`` (or ``"file.py:function"``) spec.

The same loader runs in the caller (to fail a bad spec before anything starts) and in every
reward worker process (each imports the function itself): a spec is a string, never a pickled
function. File specs go through :mod:`forge_env.runtime._resolve`'s file importer, which names
the module by a digest of its path so that every process gives it the same module name.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from forge_env._exceptions import ForgeEnvError

__all__ = ["RewardFn", "RewardSpecError", "load_reward_fn", "normalize_spec", "import_root"]

RewardFn = Callable[..., Any]
"""``fn(trajectory, **kwargs) -> float`` (or an awaitable of one)."""

_EXAMPLE = "e.g. 'my_rewards:exact_match', 'path/to/rewards.py:judge' or 'forge_env.reward:length_penalty'"


class RewardSpecError(ForgeEnvError, ValueError):
    """A reward ``fn`` spec names nothing usable; the message says what is wrong and the fix."""


def normalize_spec(spec: str) -> str:
    """``spec`` stripped, with a ``file.py`` part made absolute (worker processes may run elsewhere).

    >>> normalize_spec(" forge_env.reward:length_penalty ")
    'forge_env.reward:length_penalty'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"reward fn spec must be a non-empty 'module:function' string, got {spec!r} ({_EXAMPLE})")
    spec = spec.strip()
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        hint = ""
        if not sep and "." in spec and all(p.isidentifier() for p in spec.split(".")):
            head, _, tail = spec.rpartition(".")
            hint = f" Did you mean {head + ':' + tail!r}?"
        raise RewardSpecError(
            f"reward fn spec {spec!r} is not 'module:function': put a colon between the module (or "
            f".py file) and the function's name ({_EXAMPLE}).{hint}"
        )
    if module_part.endswith(".py"):
        module_part = str(Path(module_part).expanduser().resolve())
    return f"{module_part}:{attr}"


def load_reward_fn(spec: str, *, kwargs: Mapping[str, Any] | None = None) -> RewardFn:
    """Import the reward function ``spec`` names and check it can be called as ``fn(trajectory, **kwargs)``.

    >>> fn = load_reward_fn("forge_env.reward:length_penalty", kwargs={"budget": 8})
    >>> fn.__name__
    'length_penalty'

    Raises:
        RewardSpecError: the spec is malformed, its module is not found or fails to import, the
            attribute is missing or not callable, or it does not take ``(trajectory, **kwargs)``;
            the message names the spec and the fix.
    """
    spec = normalize_spec(spec)
    module_part, _, attr = spec.rpartition(":")
    module = _import_module(module_part, spec)
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise RewardSpecError(_missing_attr_message(spec, module, attr))
        value = getattr(value, part)
    _check_callable(value, spec, dict(kwargs or {}))
    return value


def import_root(spec: str) -> str | None:
    """The ``sys.path`` entry the spec's (already imported) module came from, when worker
    processes may lack it: None for a ``.py`` file spec (each process imports it by path), a
    module that is not a file, or one installed in this interpreter (every process has those).

    Worker processes get it on ``PYTHONPATH`` so they import ``module:function`` the way this
    process did (a script's folder or a test folder is on ``sys.path`` here but not there).
    """
    module_part = normalize_spec(spec).rpartition(":")[0]
    if module_part.endswith(".py"):
        return None
    module = sys.modules.get(module_part)
    path = getattr(module, "__file__", None)
    if not path:
        return None
    root = Path(path).resolve().parent
    depth = module_part.count(".") + (1 if Path(path).name == "__init__.py" else 0)
    for _ in range(depth):
        root = root.parent
    installed = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if any(root == p or p in root.parents for p in installed):
        return None
    return str(root)


def _import_module(module_part: str, spec: str) -> Any:
    if module_part.endswith(".py"):
        from forge_env.runtime._resolve import _import_file

        path = Path(module_part)
        if not path.is_file():
            raise RewardSpecError(f"reward fn {spec!r}: file {path} does not exist (check the path; "
                                  f"relative paths are taken from the current directory {os.getcwd()})")
        try:
            return _import_file(path, spec)
        except Exception as e:
            raise RewardSpecError(f"reward fn {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
    if not all(p.isidentifier() for p in module_part.split(".")):
        raise RewardSpecError(
            f"reward fn {spec!r}: {module_part!r} is neither a dotted module name nor a .py file ({_EXAMPLE})"
        )
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_part == e.name or module_part.startswith(e.name + ".")):
            raise RewardSpecError(
                f"reward fn {spec!r}: no module named {module_part!r}. Install the package that holds "
                "it, put its folder on PYTHONPATH (or run from that folder), or give the file instead: "
                f"'path/to/{module_part.rpartition('.')[2]}.py:{spec.rpartition(':')[2]}'"
            ) from e
        raise RewardSpecError(
            f"reward fn {spec!r}: importing {module_part!r} failed because it imports a missing "
            f"module ({e}); install that dependency"
        ) from e
    except Exception as e:
        raise RewardSpecError(
            f"reward fn {spec!r}: importing {module_part!r} raised {type(e).__name__}: {e}"
        ) from e


def _missing_attr_message(spec: str, module: Any, attr: str) -> str:
    names = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v))
    close = difflib.get_close_matches(attr, names, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(names[:20]) or "(none)"
    return (f"reward fn {spec!r}: module {module.__name__!r} has no attribute {attr!r}.{hint} "
            f"Its public callables: {shown}")


def _check_callable(value: Any, spec: str, kwargs: dict[str, Any]) -> None:
    if inspect.isclass(value):
        raise RewardSpecError(
            f"reward fn {spec!r} is the class {value.__qualname__}: point at a function, or at an "
            f"instance made at module level (e.g. `judge = {value.__qualname__}(...)` and "
            f"'{spec.rpartition(':')[0]}:judge') whose __call__ takes the trajectory"
        )
    if not callable(value):
        raise RewardSpecError(
            f"reward fn {spec!r} is a {type(value).__name__} ({value!r:.60}), not a function: point at "
            "a function `def reward(trajectory) -> float`"
        )
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # some builtins have no signature: trust them
        return
    try:
        signature.bind(object(), **kwargs)
    except TypeError as e:
        extra = f" with keyword arguments {sorted(kwargs)} (RewardConfig.kwargs)" if kwargs else ""
        raise RewardSpecError(
            f"reward fn {spec!r} cannot be called as fn(trajectory){extra}: {e}. Its signature is "
            f"{value.__name__ if hasattr(value, '__name__') else 'fn'}{signature}; it must take the "
            "Trajectory as its one positional argument and return a float"
        ) from e
