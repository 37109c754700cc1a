"""Each env's ``server/app.py`` serves it, and OpenEnv's own clients can play it.

The env logic is tested in-process elsewhere; this checks the packaging: the module-level
``app`` is a working server, and the action/observation shapes suit OpenEnv clients.
"""

from __future__ import annotations

import importlib

import httpx
import pytest

from envs import BUILTIN_ENVS

pytest.importorskip("forge_env.server", reason="forge_env.server is not written yet")


@pytest.mark.parametrize("name", sorted(BUILTIN_ENVS))
def test_app_module_serves_the_env(name, serve_app):
    app = importlib.import_module(f"envs.{name}.server.app").app
    url = serve_app(app)
    assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "healthy"
    assert httpx.get(f"{url}/metadata", timeout=5).json()["name"] == name
    schema = httpx.get(f"{url}/schema", timeout=5).json()
    assert set(schema) >= {"action", "observation", "state"}


@pytest.mark.openenv
async def test_openenv_generic_client_plays_countdown_with_mcp_action_shapes(serve_app):
    from openenv.core.generic_client import GenericEnvClient

    from envs.countdown.server.app import app

    client = GenericEnvClient(base_url=serve_app(app))
    try:
        reset = await client.reset(numbers=[6, 4, 1], target=24)  # extra reset kwargs = options
        assert reset.observation["numbers"] == [6, 4, 1] and reset.observation["target"] == 24
        listed = await client.step({"type": "list_tools"})
        assert [t["name"] for t in listed.observation["tools"]] == ["calculator", "submit"]
        calc = await client.step(
            {"type": "call_tool", "tool_name": "calculator", "arguments": {"expression": "6*4*1"}}
        )
        assert calc.observation["result"] == "24" and calc.observation["tool_name"] == "calculator"
        bad = await client.step(
            {"type": "call_tool", "tool_name": "calculator", "arguments": {"expression": "__import__('os')"}}
        )
        assert bad.observation["error"]["error_type"] == "execution_error" and not bad.done
        final = await client.step({"type": "submit", "expression": "6*4*1"})
        assert (final.reward, final.done) == (1.0, True)
    finally:
        await client.close()


@pytest.mark.openenv
async def test_openenv_mcp_tool_client_uses_countdown_tools(serve_app):
    from openenv.core.mcp_client import MCPToolClient

    from envs.countdown.server.app import app

    async with MCPToolClient(base_url=serve_app(app)) as client:
        await client.reset(seed=1)
        assert [t.name for t in await client.list_tools()] == ["calculator", "submit"]
        assert await client.call_tool("calculator", expression="7/2") == {"value": "7/2"}


@pytest.mark.openenv
async def test_malformed_guess_over_the_wire_is_an_observation_not_an_error(serve_app):
    from openenv.core.generic_client import GenericEnvClient

    from envs.guess_number.server.app import app

    client = GenericEnvClient(base_url=serve_app(app))
    try:
        await client.reset(seed=0)
        result = await client.step({"guess": "seven"})
        assert result.observation["feedback"] == "invalid" and result.observation["turns_left"] == 5
        assert not result.done
    finally:
        await client.close()
