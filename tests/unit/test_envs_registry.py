"""The built-in env registry, the package shape of every env, and its manifest."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import envs
from envs import BUILTIN_ENVS, describe, load_env_factory
from forge_env import AsyncEnv

ENVS_DIR = Path(envs.__file__).parent
NAMES = sorted(BUILTIN_ENVS)


def test_registry_lists_the_builtin_envs():
    assert NAMES == ["countdown", "echo", "frozen_lake", "guess_number", "python_code"]
    assert sorted(describe()) == NAMES


@pytest.mark.parametrize("name", NAMES)
async def test_every_env_loads_resets_and_steps(name):
    factory = load_env_factory(name)
    env = factory()
    assert isinstance(env, AsyncEnv)
    assert env.name == name
    assert env.metadata.description == describe()[name]
    obs, info = await env.reset(seed=0)
    assert isinstance(obs, env.observation_type) and isinstance(info, dict)
    assert env.render_text(obs).strip()
    example = {
        "echo": {"message": "hi"},
        "guess_number": {"guess": 8},
        "countdown": {"type": "call_tool", "tool_name": "calculator", "arguments": {"expression": "1+1"}},
        "frozen_lake": {"action": "right"},
        "python_code": {"type": "call_tool", "tool_name": "run_python", "arguments": {"code": "print(1)"}},
    }[name]
    result = await env.step(env.parse_action(example))
    assert isinstance(result.observation, env.observation_type)
    assert isinstance(result.reward, float) and isinstance(result.info, dict)
    assert (await env.state()).step_count == 1
    # JSON schemas for GET /schema.
    for model in (env.action_type, env.observation_type, env.state_type):
        assert model.model_json_schema()["type"] == "object"
    await env.close()
    await env.close()  # idempotent


def test_unknown_names_list_the_known_ones_and_import_paths_work():
    with pytest.raises(KeyError, match="unknown environment 'chess'; built-in environments: countdown, echo"):
        load_env_factory("chess")
    assert load_env_factory("envs.echo.env:EchoEnv") is load_env_factory("echo")
    with pytest.raises(KeyError, match="has no attribute 'Nope'"):
        load_env_factory("envs.echo.env:Nope")
    env = load_env_factory("guess_number", hi=32, max_turns=7)()
    assert (env.config.hi, env.config.max_turns) == (32, 7)


def test_registry_and_light_envs_import_without_gymnasium_or_datasets():
    code = (
        "import sys; sys.modules['gymnasium'] = None; sys.modules['datasets'] = None\n"
        "import envs\n"
        "print(len(envs.describe()))\n"
        "for name in ('echo', 'guess_number', 'countdown'):\n"
        "    env = envs.load_env_factory(name)(); env.sync().reset(seed=0)\n"
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == str(len(BUILTIN_ENVS)), done.stderr


@pytest.mark.parametrize("name", NAMES)
def test_package_shape(name):
    folder = ENVS_DIR / name
    for part in ("__init__.py", "models.py", "env.py", "server/app.py", "Dockerfile", "openenv.yaml", "README.md"):
        assert (folder / part).is_file(), f"envs/{name}/{part} is missing"
    app_source = (folder / "server" / "app.py").read_text()
    assert f"from envs.{name}.env import" in app_source and "app = create_app(" in app_source
    assert 'if __name__ == "__main__":' in app_source  # OpenEnv's multi-mode check wants main()
    dockerfile = (folder / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    assert "FROM ${BASE_IMAGE}" in dockerfile and "EXPOSE 8000" in dockerfile
    assert re.search(r"^USER \d+", dockerfile, re.M)  # not root
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert f'"-m", "envs.{name}.server.app", "--host", "0.0.0.0", "--port", "8000"' in dockerfile
    readme = (folder / "README.md").read_text()
    assert readme.startswith(f"# {name}") and "Reward" in readme


@pytest.mark.openenv
@pytest.mark.parametrize("name", NAMES)
def test_manifest_is_valid_for_openenv(name):
    from openenv.validation.parsers.openenv_yaml import OpenEnvYamlParser

    import yaml

    raw = yaml.safe_load((ENVS_DIR / name / "openenv.yaml").read_text())
    assert raw["name"] == name and raw["app"] == f"envs.{name}.server.app:app" and raw["port"] == 8000
    manifest = OpenEnvYamlParser().parse(ENVS_DIR / name)
    assert manifest.name == name
    assert manifest.capabilities.verifier.kind == "reward_channel"
    module = importlib.import_module(f"envs.{name}.env")
    env = load_env_factory(name)()
    assert module is not None and env.metadata.version == manifest.version


@pytest.mark.parametrize("name", NAMES)
async def test_declared_tools_match_list_tools(name):
    import yaml

    raw = yaml.safe_load((ENVS_DIR / name / "openenv.yaml").read_text())
    declared = raw["validation"]["capabilities"].get("declared_tools", [])
    tools = await load_env_factory(name)().list_tools()
    assert [t.name for t in tools] == declared
