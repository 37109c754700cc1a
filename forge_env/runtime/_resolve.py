"""Turn an ENV spec string into something we can run: an env factory or an ASGI app.

A spec is what a user types after ``forge-env serve`` or passes to a runtime:

- a built-in env name: ``guess_number`` (see ``envs.BUILTIN_ENVS``);
- a path to an env folder: ``./envs/guess_number``, or any folder holding ``openenv.yaml``
  and/or ``server/app.py`` (OpenEnv's layout);
- ``module:attr`` (or ``path/to/file.py:attr``), where ``attr`` is an :class:`AsyncEnv`
  subclass, a zero-argument factory returning one, or — for serving only — an ASGI app;
- a dotted module or package holding exactly one :class:`AsyncEnv` subclass.

Resolution imports user code in this process. A subprocess runtime therefore resolves
inside its child (``_serve_main``) so a crashing import lands in the child's log.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forge_env._exceptions import ForgeEnvError
from forge_env.env import AsyncEnv, EnvMetadata

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

__all__ = ["EnvFactory", "EnvSpecError", "new_env", "resolve_env_factory", "resolve_app", "builtin_envs"]

logger = logging.getLogger(__name__)

EnvFactory = Callable[[], AsyncEnv[Any, Any]]
"""A zero-argument callable returning a fresh env: an AsyncEnv subclass or a function."""



async def new_env(factory: Callable[[], Any], spec: Any) -> AsyncEnv[Any, Any]:
    """Call ``factory`` (sync or async) and check it made an AsyncEnv; ``spec`` names it in the error."""
    env = factory()
    if inspect.isawaitable(env):
        env = await env
    if not isinstance(env, AsyncEnv):
        raise TypeError(
            f"env factory {spec!r} returned {type(env).__name__}, not an AsyncEnv; "
            "it must return a fresh forge_env.AsyncEnv instance"
        )
    return env


_MANIFEST = "openenv.yaml"
_DEFAULT_APP = "server.app:app"
# Manifest keys naming the env class (a forge-env extension of OpenEnv's manifest).
_MANIFEST_ENV_KEYS = ("env", "env_class")


class EnvSpecError(ForgeEnvError, ValueError):
    """An ENV spec names nothing we can run; the message lists what was tried.

    ``tried`` holds one line per resolution attempt (``"form: why it failed"``).
    """

    def __init__(self, message: str, *, tried: list[str] | None = None, **ctx: Any) -> None:
        self.tried = list(tried or [])
        lines = [message]
        if self.tried:
            lines.append("tried:")
            lines.extend(f"  - {t}" for t in self.tried)
        lines.append(_valid_forms())
        super().__init__("\n".join(lines), **ctx)


def builtin_envs() -> dict[str, str]:
    """The built-in envs as ``{name: "module:attr"}`` (empty when ``envs`` is not installed).

    >>> isinstance(builtin_envs(), dict)
    True
    """
    try:
        envs = importlib.import_module("envs")
    except ImportError:
        return {}
    table = getattr(envs, "BUILTIN_ENVS", None)
    return dict(table) if isinstance(table, dict) else {}


def _valid_forms() -> str:
    names = ", ".join(sorted(builtin_envs())) or "(none installed)"
    return (
        "valid ENV specs:\n"
        f"  - a built-in env name: {names}\n"
        "  - a path to an env folder holding openenv.yaml and/or server/app.py, "
        "e.g. ./envs/guess_number\n"
        "  - module:attr where attr is an AsyncEnv subclass or a zero-argument factory "
        "returning one (or, to serve only, an ASGI app), e.g. envs.echo:EchoEnv or my_env.py:MyEnv\n"
        "  - a dotted module or package defining exactly one AsyncEnv subclass"
    )


# --- public entry points --------------------------------------------------------------------


def resolve_env_factory(spec: str | EnvFactory) -> EnvFactory:
    """Resolve ``spec`` to a zero-argument callable returning a fresh :class:`AsyncEnv`.

    >>> factory = resolve_env_factory("guess_number")      # a built-in
    >>> factory = resolve_env_factory("./envs/guess_number")  # an env folder
    >>> env = resolve_env_factory("my_env.py:MyEnv")()  # doctest: +SKIP

    Args:
        spec: a built-in env name, a path to an env folder, ``module:attr`` /
            ``file.py:attr``, or a dotted module; a callable is returned as is.

    Raises:
        EnvSpecError: nothing runnable found; the message lists each form tried and why
            it failed, then the valid forms.
    """
    if callable(spec) and not isinstance(spec, str):
        return _check_factory(spec, origin=repr(spec))
    target = _resolve(spec, want_app=False)
    if isinstance(target, _AppOnly):
        raise EnvSpecError(
            f"{spec!r} resolves to a server app ({target.origin}), not an env class: an app "
            "can be served (resolve_app, LocalProcessRuntime, `forge-env serve`) but not "
            "run in-process. Point at the AsyncEnv subclass instead (module:Class).",
            tried=target.tried,
        )
    return target


def resolve_app(
    spec: str | EnvFactory,
    *,
    max_sessions: int = 256,
    session_idle_timeout: float | None = 300.0,
    metadata: EnvMetadata | None = None,
) -> "FastAPI":
    """Resolve ``spec`` to an ASGI app serving it over the OpenEnv wire.

    ``module:attr`` naming an existing app returns that app unchanged (the keyword
    arguments then do not apply). Otherwise the env factory is wrapped with
    :func:`forge_env.server.create_app`; for an env folder with no findable env class,
    its ``server/app.py`` app (``app:`` in ``openenv.yaml``) is served as is.

    >>> app = resolve_app("guess_number", max_sessions=64)
    >>> app = resolve_app("envs.echo.server.app:app")  # an existing app, served as is

    Raises:
        EnvSpecError: as :func:`resolve_env_factory`.
    """
    target = spec if callable(spec) and not isinstance(spec, str) else _resolve(spec, want_app=True)
    if isinstance(target, _AppOnly):
        if (max_sessions, session_idle_timeout, metadata) != (256, 300.0, None):
            logger.warning(
                "%s is an existing app: max_sessions/session_idle_timeout/metadata do not apply",
                target.origin,
            )
        return target.app
    if _is_asgi_app(target):
        return target  # type: ignore[return-value]
    from forge_env.server import create_app

    factory = _check_factory(target, origin=repr(spec))
    if (
        inspect.isclass(factory)
        and not getattr(factory, "supports_concurrent_sessions", True)
        and max_sessions > 1
    ):
        logger.warning(
            "%s declares supports_concurrent_sessions = False: serving it with max_sessions=1 "
            "instead of %d (run more servers, e.g. an EnvPool, for more sessions)",
            factory.__qualname__, max_sessions,
        )
        max_sessions = 1
    return create_app(
        factory,
        max_sessions=max_sessions,
        session_idle_timeout=session_idle_timeout,
        metadata=metadata,
    )


# --- resolution -----------------------------------------------------------------------------


class _AppOnly:
    """A spec that resolved to an ASGI app and no env factory."""

    def __init__(self, app: Any, origin: str, tried: list[str]) -> None:
        self.app = app
        self.origin = origin
        self.tried = tried


def _resolve(spec: str, *, want_app: bool) -> Any:
    """Return an env factory, or an _AppOnly; raise EnvSpecError listing what was tried."""
    if not isinstance(spec, str) or not spec.strip():
        raise EnvSpecError(f"empty or non-string ENV spec: {spec!r}")
    spec = spec.strip()
    tried: list[str] = []
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or "/" in spec or "\\" in spec

    if ":" in spec and not (looks_like_path and path.is_dir()):
        module_part, _, attr = spec.rpartition(":")
        obj = _import_attr(module_part, attr, spec)
        if _is_asgi_app(obj):
            return _AppOnly(obj, spec, tried) if want_app else _app_as_factory(obj, spec)
        return _check_factory(obj, origin=spec)

    builtins = builtin_envs()
    if not looks_like_path:
        if spec in builtins:
            target = builtins[spec]
            module_part, _, attr = target.rpartition(":")
            if not module_part:
                raise EnvSpecError(f"built-in {spec!r} maps to {target!r}, not module:attr")
            return _check_factory(_import_attr(module_part, attr, target), origin=f"built-in {spec}")
        tried.append(f"built-in name: not one of {sorted(builtins) or '(none installed)'}")

    if path.is_dir():
        return _resolve_folder(path.resolve(), want_app=want_app, tried=tried)
    tried.append(f"env folder: {path} is not a directory")

    if not looks_like_path and all(p.isidentifier() for p in spec.split(".")):
        module = _try_import(spec, tried, form="module")
        if module is not None:
            classes = _env_classes_in(module, within=module.__name__)
            if len(classes) == 1:
                return classes[0]
            tried.append(_describe_classes(f"module {spec}", classes))
    raise EnvSpecError(f"cannot resolve ENV spec {spec!r}", tried=tried)


def _resolve_folder(folder: Path, *, want_app: bool, tried: list[str]) -> Any:
    manifest = _read_manifest(folder)
    has_app_file = (folder / "server" / "app.py").is_file()
    if manifest is None and not has_app_file and not (folder / "__init__.py").is_file():
        raise EnvSpecError(
            f"{folder} is not an env folder: it has no {_MANIFEST} and no server/app.py",
            tried=tried,
        )
    root, package = _import_root(folder)
    if str(root) not in sys.path:
        # Same as OpenEnv's Dockerfile (PYTHONPATH=/app/env): the folder's modules import
        # each other by their package (or top-level) names.
        sys.path.insert(0, str(root))
    prefix = f"{package}." if package else ""
    where = f"env folder {folder}"

    # 1. The manifest names the class (forge-env extension: `env: module:Class`).
    for key in _MANIFEST_ENV_KEYS:
        value = (manifest or {}).get(key)
        if isinstance(value, str) and ":" in value:
            module_part, _, attr = value.rpartition(":")
            if package and not module_part.startswith(package) and _has_module(prefix + module_part):
                module_part = prefix + module_part
            return _check_factory(_import_attr(module_part, attr, value), origin=f"{where} ({key}:)")

    # 2. A built-in env living in this folder.
    if package:
        for name, target in builtin_envs().items():
            if target.partition(":")[0] == package or target.startswith(package + "."):
                module_part, _, attr = target.rpartition(":")
                return _check_factory(_import_attr(module_part, attr, target), origin=f"built-in {name}")

    # 3. The one AsyncEnv subclass exported by the package.
    if package:
        module = _try_import(package, tried, form=f"{where}: package")
        if module is not None:
            classes = _env_classes_in(module, within=package)
            if len(classes) == 1:
                return classes[0]
            tried.append(_describe_classes(f"{where}: package {package}", classes))

    # 4. The server app module: the class it serves, else the app itself.
    app_ref = str((manifest or {}).get("app") or _DEFAULT_APP)
    app_module_name, _, app_attr = app_ref.rpartition(":")
    module = _try_import(prefix + app_module_name, tried, form=f"{where}: app module")
    if module is None and prefix:
        module = _try_import(app_module_name, tried, form=f"{where}: app module")
    if module is None:
        raise EnvSpecError(f"cannot resolve env folder {folder}", tried=tried)
    classes = _env_classes_in(module, within=package or None)
    if len(classes) == 1:
        return classes[0]
    tried.append(_describe_classes(f"{where}: {module.__name__}", classes))
    app = getattr(module, app_attr or "app", None)
    if _is_asgi_app(app):
        return _AppOnly(app, f"{module.__name__}:{app_attr or 'app'}", tried) if want_app else (
            _app_as_factory(app, f"{module.__name__}:{app_attr}", tried=tried)
        )
    tried.append(f"{where}: {module.__name__} has no ASGI app named {app_attr or 'app'!r}")
    raise EnvSpecError(f"cannot resolve env folder {folder}", tried=tried)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / _MANIFEST
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise EnvSpecError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise EnvSpecError(f"{path} must be a YAML mapping (name, app, ...), got {type(data).__name__}")
    return data


def _import_root(folder: Path) -> tuple[Path, str | None]:
    """Where to put on sys.path, and the folder's dotted package name (None: not a package).

    A folder with ``__init__.py`` is imported as a package under its topmost package
    parent (``envs/guess_number`` -> ``envs.guess_number``), so relative imports work.
    """
    if not (folder / "__init__.py").is_file() or not folder.name.isidentifier():
        return folder, None
    parts = [folder.name]
    parent = folder.parent
    while (parent / "__init__.py").is_file() and parent.name.isidentifier() and parent != parent.parent:
        parts.insert(0, parent.name)
        parent = parent.parent
    return parent, ".".join(parts)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _try_import(name: str, tried: list[str], *, form: str) -> Any:
    """Import ``name``; None (noted in ``tried``) when that module itself does not exist.

    Errors raised *inside* the module propagate: the traceback is what the user needs.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            tried.append(f"{form}: no module named {name!r}")
            return None
        raise EnvSpecError(f"importing {name!r} failed: {e}", tried=tried) from e


def _import_attr(module_part: str, attr: str, spec: str) -> Any:
    if not module_part or not attr:
        raise EnvSpecError(f"{spec!r}: expected module:attr with both parts non-empty")
    if module_part.endswith(".py"):
        module = _import_file(Path(module_part).expanduser(), spec)
    else:
        tried: list[str] = []
        module = _try_import(module_part, tried, form="module:attr")
        if module is None:
            raise EnvSpecError(
                f"{spec!r}: no module named {module_part!r} (is it installed, or on "
                "PYTHONPATH / in the current directory?)",
                tried=tried,
            )
    value: Any = module
    for part in attr.split("."):
        if not hasattr(value, part):
            public = sorted(n for n in vars(module) if not n.startswith("_"))[:20]
            raise EnvSpecError(
                f"{spec!r}: module {module.__name__!r} has no attribute {attr!r}; "
                f"its public names include {public}"
            )
        value = getattr(value, part)
    return value


def _import_file(path: Path, spec: str) -> Any:
    if not path.is_file():
        raise EnvSpecError(f"{spec!r}: file {path} does not exist")
    path = path.resolve()
    # A digest, not hash(): str hashes differ between processes (PYTHONHASHSEED), and env
    # processes (Monarch env pools) must name the module as the trainer does to unpickle.
    name = f"_forge_env_spec_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:  # pragma: no cover - .py always loads
        raise EnvSpecError(f"{spec!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Register before executing so classes defined in the file pickle and introspect normally.
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _env_classes_in(module: Any, *, within: str | None) -> list[type[AsyncEnv[Any, Any]]]:
    """Concrete AsyncEnv subclasses visible in ``module`` (defined under ``within`` if given)."""
    found: list[type[AsyncEnv[Any, Any]]] = []
    for value in vars(module).values():
        if not (inspect.isclass(value) and issubclass(value, AsyncEnv)) or value in found:
            continue
        owner = value.__module__ or ""
        if owner.startswith("forge_env.") or inspect.isabstract(value):
            continue  # forge-env's own classes (RemoteEnv, wrappers) are not user envs
        if within is not None and owner != within and not owner.startswith(within + "."):
            continue
        if value.reset is AsyncEnv.reset or value.step is AsyncEnv.step:
            continue  # an abstract base the user subclasses, not an env
        found.append(value)
    return found


def _describe_classes(where: str, classes: list[type]) -> str:
    if not classes:
        return f"{where}: defines no AsyncEnv subclass"
    names = ", ".join(f"{c.__module__}:{c.__qualname__}" for c in classes)
    return f"{where}: several AsyncEnv subclasses ({names}); name one as module:Class"


def _is_asgi_app(obj: Any) -> bool:
    if inspect.isclass(obj) or obj is None:
        return False
    try:
        from starlette.applications import Starlette
    except ImportError:  # pragma: no cover - fastapi depends on starlette
        Starlette = ()  # type: ignore[assignment,misc]
    if isinstance(obj, Starlette):
        return True
    call = getattr(obj, "__call__", None)
    if call is None or not inspect.iscoroutinefunction(call):
        return False
    params = list(inspect.signature(call).parameters)
    return params[:3] == ["scope", "receive", "send"]


def _app_as_factory(app: Any, origin: str, *, tried: list[str] | None = None) -> EnvFactory:
    """An app built by ``forge_env.server.create_app`` knows its env: run that in-process."""
    state = getattr(app, "state", None)
    server = getattr(state, "env_server", None) if state is not None else None
    factory = getattr(getattr(server, "factory", None), "create", None)
    if callable(factory):
        return factory
    return _AppOnly(app, origin, list(tried or []))  # type: ignore[return-value]


def _check_factory(obj: Any, *, origin: str) -> EnvFactory:
    if inspect.isclass(obj):
        if issubclass(obj, AsyncEnv):
            return obj
        raise EnvSpecError(
            f"{origin} is the class {obj.__module__}.{obj.__qualname__}, which is not a "
            "forge_env AsyncEnv subclass. Subclass forge_env.AsyncEnv (an OpenEnv "
            "Environment can be served through its own server/app.py: point at its folder)."
        )
    if isinstance(obj, AsyncEnv):
        raise EnvSpecError(
            f"{origin} is an env instance; sessions need a fresh env each, so point at its "
            f"class ({type(obj).__module__}:{type(obj).__qualname__}) or a factory function"
        )
    if not callable(obj):
        raise EnvSpecError(f"{origin} is a {type(obj).__name__}, not an AsyncEnv class or factory")
    return obj

