"""resolve_env_factory / resolve_app: every spec form, and the errors for bad ones."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest

from forge_env import AsyncEnv
from forge_env.runtime import EnvSpecError, builtin_envs, resolve_app, resolve_env_factory

ENV_SOURCE = textwrap.dedent(
    """
    from forge_env import Action, AsyncEnv, Observation, ResetResult, StepResult

    class Inc(Action):
        by: int = 1

    class Count(Observation):
        n: int

    class {cls}(AsyncEnv[Count, Inc]):
        action_type = Inc
        observation_type = Count

        async def reset(self, *, seed=None, options=None):
            self.n = seed or 0
            return ResetResult(Count(n=self.n), {{}})

        async def step(self, action):
            self.n += action.by
            return StepResult(Count(n=self.n), 1.0, self.n >= 3, False, {{}})

    def make():
        return {cls}()
    """
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def pkg_root(tmp_path, monkeypatch):
    """A temp dir on sys.path; modules imported from it are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


async def _play(factory) -> int:
    env = factory()
    obs, _ = await env.reset(seed=1)
    result = await env.step(env.parse_action({"by": 2}))
    await env.close()
    return result.observation.n


async def test_module_colon_class(pkg_root):
    _write(pkg_root / "rt_mod_a.py", ENV_SOURCE.format(cls="AEnv"))
    factory = resolve_env_factory("rt_mod_a:AEnv")
    assert factory.__name__ == "AEnv"
    assert await _play(factory) == 3


async def test_module_colon_factory_function(pkg_root):
    _write(pkg_root / "rt_mod_b.py", ENV_SOURCE.format(cls="BEnv"))
    factory = resolve_env_factory("rt_mod_b:make")
    assert factory.__name__ == "make"
    assert await _play(factory) == 3


async def test_file_path_colon_class(tmp_path):
    path = _write(tmp_path / "my_file_env.py", ENV_SOURCE.format(cls="FileEnv"))
    factory = resolve_env_factory(f"{path}:FileEnv")
    assert await _play(factory) == 3


async def test_dotted_module_with_one_env_class(pkg_root):
    _write(pkg_root / "rt_mod_c.py", ENV_SOURCE.format(cls="CEnv"))
    assert resolve_env_factory("rt_mod_c").__name__ == "CEnv"


async def test_folder_package_finds_the_env_class(pkg_root):
    # OpenEnv layout: package/__init__.py exports the env, server/app.py serves it.
    folder = pkg_root / "rt_pkg_env"
    _write(folder / "models.py", ENV_SOURCE.format(cls="PkgEnv"))
    _write(folder / "__init__.py", "from .models import PkgEnv\n")
    _write(folder / "openenv.yaml", "spec_version: 1\nname: rt_pkg_env\napp: server.app:app\n")
    _write(folder / "server" / "__init__.py", "")
    _write(folder / "server" / "app.py", "raise RuntimeError('app must not be imported')\n")
    factory = resolve_env_factory(str(folder))
    assert factory.__name__ == "PkgEnv" and factory.__module__ == "rt_pkg_env.models"
    assert await _play(factory) == 3


async def test_folder_manifest_names_the_class(pkg_root):
    folder = pkg_root / "rt_manifest_env"
    _write(folder / "__init__.py", "")
    _write(folder / "envs_here.py", ENV_SOURCE.format(cls="One") + ENV_SOURCE.format(cls="Two"))
    _write(folder / "openenv.yaml", "name: x\nenv: envs_here:Two\n")
    assert resolve_env_factory(str(folder)).__name__ == "Two"


async def test_folder_without_package_uses_server_app_module(tmp_path, monkeypatch):
    # A plain folder (no __init__.py) as in OpenEnv's Docker image: server.app imports
    # the env; the folder goes on sys.path like PYTHONPATH=/app/env.
    folder = tmp_path / "plain-env"
    _write(folder / "rt_plain_models.py", ENV_SOURCE.format(cls="PlainEnv"))
    _write(folder / "server" / "__init__.py", "")
    _write(folder / "server" / "app.py", "from rt_plain_models import PlainEnv\napp = None\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("server", "server.app", "rt_plain_models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    factory = resolve_env_factory(str(folder))
    assert factory.__name__ == "PlainEnv"
    assert await _play(factory) == 3
    for name in ("server", "server.app", "rt_plain_models"):
        sys.modules.pop(name, None)


async def test_builtin_name_via_envs_table(pkg_root, monkeypatch):
    _write(pkg_root / "rt_builtin_impl.py", ENV_SOURCE.format(cls="BuiltinEnv"))
    fake = types.ModuleType("envs")
    fake.BUILTIN_ENVS = {"counter": "rt_builtin_impl:BuiltinEnv"}
    monkeypatch.setitem(sys.modules, "envs", fake)
    assert builtin_envs() == {"counter": "rt_builtin_impl:BuiltinEnv"}
    assert resolve_env_factory("counter").__name__ == "BuiltinEnv"


def test_callable_passes_through():
    class Local(AsyncEnv):
        async def reset(self, *, seed=None, options=None): ...
        async def step(self, action): ...

    assert resolve_env_factory(Local) is Local


def test_module_colon_app_serves_but_does_not_run_in_process(pkg_root):
    _write(pkg_root / "rt_app_only.py", "from fastapi import FastAPI\napp = FastAPI()\n")
    app = resolve_app("rt_app_only:app")
    assert app is sys.modules["rt_app_only"].app
    with pytest.raises(EnvSpecError, match="server app .*not an env class"):
        resolve_env_factory("rt_app_only:app")


async def test_module_colon_app_built_by_create_app_runs_in_process(pkg_root):
    _write(
        pkg_root / "rt_app_served.py",
        ENV_SOURCE.format(cls="ServedEnv")
        + "\nfrom forge_env.server import create_app\napp = create_app(ServedEnv)\n",
    )
    factory = resolve_env_factory("rt_app_served:app")
    env = await factory()
    assert type(env).__name__ == "ServedEnv"


def test_resolve_app_wraps_env_class_with_create_app(pkg_root):
    _write(pkg_root / "rt_mod_d.py", ENV_SOURCE.format(cls="DEnv"))
    app = resolve_app("rt_mod_d:DEnv", max_sessions=7)
    assert app.state.stats.max_sessions == 7


def test_resolve_app_clamps_non_concurrent_env_to_one_session(pkg_root, caplog):
    _write(
        pkg_root / "rt_mod_e.py",
        ENV_SOURCE.format(cls="EEnv") + "\nEEnv.supports_concurrent_sessions = False\n",
    )
    app = resolve_app("rt_mod_e:EEnv", max_sessions=16)
    assert app.state.stats.max_sessions == 1
    assert "supports_concurrent_sessions = False" in caplog.text


# --- errors ---------------------------------------------------------------------------------


def test_unknown_name_lists_what_was_tried_and_the_valid_forms():
    with pytest.raises(EnvSpecError) as info:
        resolve_env_factory("no_such_env_xyz")
    text = str(info.value)
    assert "cannot resolve ENV spec 'no_such_env_xyz'" in text
    assert "built-in name: not one of" in text
    assert "env folder: no_such_env_xyz is not a directory" in text
    assert "module: no module named 'no_such_env_xyz'" in text
    assert "valid ENV specs:" in text and "module:attr" in text
    assert len(info.value.tried) == 3
    assert isinstance(info.value, ValueError)


def test_missing_module_in_module_attr():
    with pytest.raises(EnvSpecError, match="no module named 'rt_missing_mod'"):
        resolve_env_factory("rt_missing_mod:Env")


def test_missing_attribute_names_public_names(pkg_root):
    _write(pkg_root / "rt_mod_f.py", ENV_SOURCE.format(cls="FEnv"))
    with pytest.raises(EnvSpecError, match=r"has no attribute 'Nope'.*'FEnv'"):
        resolve_env_factory("rt_mod_f:Nope")


def test_import_error_inside_module_keeps_the_cause(pkg_root):
    _write(pkg_root / "rt_mod_broken.py", "import rt_dependency_that_is_missing\n")
    with pytest.raises(EnvSpecError, match="importing 'rt_mod_broken' failed") as info:
        resolve_env_factory("rt_mod_broken:Env")
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_exception_raised_at_import_propagates(pkg_root):
    _write(pkg_root / "rt_mod_raises.py", "raise RuntimeError('boom at import')\n")
    with pytest.raises(RuntimeError, match="boom at import"):
        resolve_env_factory("rt_mod_raises:Env")


def test_non_env_class_instance_and_value_are_rejected(pkg_root):
    _write(
        pkg_root / "rt_mod_g.py",
        ENV_SOURCE.format(cls="GEnv") + "\nclass NotEnv: pass\ninstance = GEnv()\nNUMBER = 3\n",
    )
    with pytest.raises(EnvSpecError, match="not a forge_env AsyncEnv subclass"):
        resolve_env_factory("rt_mod_g:NotEnv")
    with pytest.raises(EnvSpecError, match=r"env instance.*rt_mod_g:GEnv"):
        resolve_env_factory("rt_mod_g:instance")
    with pytest.raises(EnvSpecError, match="is a int, not an AsyncEnv class or factory"):
        resolve_env_factory("rt_mod_g:NUMBER")


def test_module_with_two_env_classes_asks_to_pick_one(pkg_root):
    _write(pkg_root / "rt_mod_h.py", ENV_SOURCE.format(cls="One") + ENV_SOURCE.format(cls="Two"))
    with pytest.raises(EnvSpecError, match=r"several AsyncEnv subclasses \(rt_mod_h:One, rt_mod_h:Two\)"):
        resolve_env_factory("rt_mod_h")


def test_folder_that_is_not_an_env_folder(tmp_path):
    with pytest.raises(EnvSpecError, match="no openenv.yaml and no server/app.py"):
        resolve_env_factory(str(tmp_path))


def test_bad_manifest(tmp_path):
    _write(tmp_path / "openenv.yaml", "- just\n- a list\n")
    with pytest.raises(EnvSpecError, match="must be a YAML mapping"):
        resolve_env_factory(str(tmp_path))


def test_folder_with_app_but_no_env_class(pkg_root):
    folder = pkg_root / "rt_app_folder"
    _write(folder / "__init__.py", "")
    _write(folder / "server" / "__init__.py", "")
    _write(folder / "server" / "app.py", "from fastapi import FastAPI\napp = FastAPI()\n")
    app = resolve_app(str(folder))
    assert app is sys.modules["rt_app_folder.server.app"].app
    with pytest.raises(EnvSpecError, match="resolves to a server app"):
        resolve_env_factory(str(folder))


def test_empty_spec():
    with pytest.raises(EnvSpecError, match="empty"):
        resolve_env_factory("  ")
