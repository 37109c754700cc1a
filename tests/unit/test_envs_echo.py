"""echo: the protocol-test env behaves like OpenEnv's echo_env."""

from __future__ import annotations

import pytest

from envs.echo import READY_MESSAGE, EchoAction, EchoEnv
from forge_env import InvalidActionError


async def test_reset_step_reward_and_state():
    env = EchoEnv()
    obs, info = await env.reset(seed=4, options={"episode_id": "abc", "difficulty": "easy"})
    assert (obs.echoed_message, obs.message_length) == (READY_MESSAGE, 0)
    assert info == {"reset_options": {"difficulty": "easy"}, "seed": 4}
    for n, message in enumerate(["hello", "", "héllo wörld"], start=1):
        result = await env.step(EchoAction(message=message))
        assert (result.observation.echoed_message, result.observation.message_length) == (message, len(message))
        assert result.reward == pytest.approx(0.1 * len(message))
        assert not result.terminated and not result.truncated and result.info == {"step": n}
    state = await env.state()
    assert (state.episode_id, state.step_count) == ("abc", 3)


async def test_step_without_reset_works_and_bad_actions_raise():
    env = EchoEnv()
    assert (await env.step({"message": "hi"})).reward == pytest.approx(0.2)
    for bad in [{}, {"message": 3}, {"message": "x", "extra": 1}]:
        with pytest.raises(InvalidActionError, match="message"):
            await env.step(bad)


async def test_mcp_tool():
    env = EchoEnv()
    (tool,) = await env.list_tools()
    assert tool.name == "echo_message" and tool.input_schema["required"] == ["message"]
    assert await env.call_tool("echo_message", {"message": "ping"}) == "ping"
    assert (await env.state()).step_count == 0  # tools are not steps
    with pytest.raises(InvalidActionError, match="exactly one string argument"):
        await env.call_tool("echo_message", {"text": "ping"})
    with pytest.raises(NotImplementedError, match="no tool named 'nope'"):
        await env.call_tool("nope", {})


def test_render_text_and_metadata():
    env = EchoEnv()
    assert env.render_text(env.observation_type(echoed_message="yo", message_length=2)) == "yo"
    assert env.name == "echo" and EchoEnv.supports_concurrent_sessions
