"""Agents against built-in envs served over the wire (RemoteEnv on a real loopback port).

The agent reads the action schema from ``GET /schema`` and the tools from MCP
``tools/list``; scripted completions (tokenized with the tiny model's tokenizer, no
generator) become actions that step the remote env to the end of an episode, and the
episode's ids equal the chat template's rendering of the whole conversation.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agents import ActionParseError, ChatAgent, ToolCallingAgent
from envs import load_env_factory
from forge_env.client import RemoteEnv
from forge_env.server import create_app

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from forge_env.models._tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("agents_envs") / "tiny")
    return AutoTokenizer.from_pretrained(path)


def served(serve_app: Any, name: str) -> str:
    factory = load_env_factory(name)
    return serve_app(create_app(factory))


def remote(url: str) -> RemoteEnv[Any, Any]:
    return RemoteEnv(url)


def completion(tokenizer: Any, text: str) -> list[int]:
    return [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]


def call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


async def test_chat_agent_wins_remote_guess_number(serve_app: Any, tiny_tokenizer: Any) -> None:
    url = served(serve_app, "guess_number")
    agent = ChatAgent(tiny_tokenizer, system_prompt="Guess.")
    async with remote(url) as env:
        episode = await agent.new_episode(env)
        assert episode.info.remote and episode.info.name == "guess_number"
        assert episode.info.action_schema["required"] == ["guess"]
        observation, _ = await env.reset(seed=11)
        first_text = agent.observation_text(env, observation)
        assert first_text.startswith("I am thinking of an integer from 1 to 16")
        ids = episode.first_prompt(first_text)
        messages = [{"role": "system", "content": "Guess."}, {"role": "user", "content": first_text}]
        lo, hi = observation.lo, observation.hi
        formats = ["{}", "My guess is {}.", '{{"guess": {}}}', "{}"]
        reward, terminated, turns = 0.0, False, 0
        while not terminated:
            reply = formats[turns % len(formats)].format((lo + hi) // 2)
            sampled = completion(tiny_tokenizer, reply)
            action = episode.parse_action(sampled)
            assert action == {"guess": (lo + hi) // 2}
            observation, reward, terminated, _, _ = await env.step(action)
            text = agent.observation_text(env, observation)
            ids += sampled + episode.next_prompt(sampled, "stop", text)
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": text}]
            lo, hi = observation.lo, observation.hi
            turns += 1
    assert reward == 1.0 and observation.feedback == "correct" and turns <= 5
    expected = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids == tiny_tokenizer.encode(expected, add_special_tokens=False)


async def test_chat_agent_parse_error_goes_back_to_the_model(serve_app: Any, tiny_tokenizer: Any) -> None:
    url = served(serve_app, "guess_number")
    agent = ChatAgent(tiny_tokenizer)
    async with remote(url) as env:
        episode = await agent.new_episode(env)
        await env.reset(seed=1)
        with pytest.raises(ActionParseError) as caught:
            episode.parse_action(completion(tiny_tokenizer, "   "))
        later = episode.next_prompt(completion(tiny_tokenizer, "   "), "stop", str(caught.value))
        assert 'Your reply is empty. Answer with one action as a JSON object, e.g. {"guess": 0}' in (
            episode.decode(later)
        )


async def test_tool_calling_agent_solves_remote_countdown(serve_app: Any, tiny_tokenizer: Any) -> None:
    url = served(serve_app, "countdown")
    agent = ToolCallingAgent(tiny_tokenizer)
    async with remote(url) as env:
        episode = await agent.new_episode(env)
        assert [(t.name, t.kind) for t in episode.tools] == [("calculator", "mcp"), ("submit", "mcp")]
        observation, _ = await env.reset(options={"numbers": [3, 4, 2], "target": 18})
        ids = episode.first_prompt(agent.observation_text(env, observation))
        assert "Make 18 from the numbers 3, 4, 2." in episode.decode(ids)
        script: list[tuple[str, str | None, float | None]] = [
            (call("calculator", {"expression": "3*(4+2)"}), "calculator: 3*(4+2) = 18.", 0.0),
            ("the answer", None, None),  # no tool call: an error for the model, no step
            (call("submit", {"expression": "3*(4+2)"}), "Correct! 3*(4+2) = 18.", 1.0),
        ]
        for reply, result_text, reward_expected in script:
            sampled = completion(tiny_tokenizer, reply)
            try:
                action = episode.parse_action(sampled)
            except ActionParseError as e:
                assert result_text is None and "Tools: calculator, submit." in str(e)
                ids += sampled + episode.next_prompt(sampled, "stop", str(e))
                continue
            observation, reward, terminated, _, _ = await env.step(action)
            text = agent.observation_text(env, observation)
            assert result_text is not None and text.startswith(result_text) and reward == reward_expected
            ids += sampled + episode.next_prompt(sampled, "stop", text)
        assert terminated
    transcript = episode.decode(ids)
    assert "<|im_start|>user\n<tool_response>\ncalculator: 3*(4+2) = 18." in transcript
    assert "<|im_start|>user\nNo tool call found in your reply." in transcript


@pytest.mark.sandbox
async def test_tool_calling_agent_runs_and_submits_remote_python_code(
    serve_app: Any, tiny_tokenizer: Any
) -> None:
    from envs.python_code import TASKS

    url = served(serve_app, "python_code")
    agent = ToolCallingAgent(tiny_tokenizer)
    async with remote(url) as env:
        episode = await agent.new_episode(env)
        assert [(t.name, t.kind) for t in episode.tools] == [("run_python", "mcp"), ("submit", "type")]
        observation, _ = await env.reset(seed=0)
        assert agent.observation_text(env, observation).startswith(f"Task {TASKS[0].task_id}:")
        run = episode.parse_action(completion(tiny_tokenizer, call("run_python", {"code": "print(6 * 7)"})))
        observation, reward, terminated, _, _ = await env.step(run)
        assert "stdout:\n42" in agent.observation_text(env, observation) and not terminated
        submit = episode.parse_action(completion(tiny_tokenizer, call("submit", {"code": TASKS[0].solution})))
        assert submit == {"type": "submit", "code": TASKS[0].solution}
        observation, reward, terminated, _, _ = await env.step(submit)
    assert (reward, terminated) == (1.0, True)
    assert agent.observation_text(env, observation).startswith("Submitted: 3/3 hidden tests passed (solved)")


async def test_remote_observations_render_as_text(serve_app: Any, tiny_tokenizer: Any) -> None:
    agent = ChatAgent(tiny_tokenizer)
    for name, expected in [
        ("echo", "Echo environment ready!"),
        ("frozen_lake", "SFFF\nFHFH\nFFFH\nHFFG\nYou are at row 0, column 0"),
    ]:
        async with remote(served(serve_app, name)) as env:
            episode = await agent.new_episode(env)
            observation, _ = await env.reset(seed=0)
            assert agent.observation_text(env, observation).startswith(expected), name
            reply = "hello" if name == "echo" else "down"
            action = episode.parse_action(completion(tiny_tokenizer, reply))
            observation, *_ = await env.step(action)
            text = agent.observation_text(env, observation)
            if name == "echo":
                assert text == "hello"
            else:
                assert "You are at row 1, column 0" in text


async def test_tool_calling_agent_on_remote_env_without_mcp_tools(
    serve_app: Any, tiny_tokenizer: Any
) -> None:
    agent = ToolCallingAgent(tiny_tokenizer)
    async with remote(served(serve_app, "guess_number")) as env:
        episode = await agent.new_episode(env)
        assert [(t.name, t.kind) for t in episode.tools] == [("guess", "action")]
        await env.reset(seed=2)
        action = episode.parse_action(completion(tiny_tokenizer, call("guess", {"guess": 8})))
        observation, *_ = await env.step(action)
        assert observation.last_guess == 8


async def test_concurrent_episodes_fetch_the_schema_once(serve_app: Any, tiny_tokenizer: Any) -> None:
    url = served(serve_app, "countdown")
    agent = ToolCallingAgent(tiny_tokenizer)
    fetches = 0
    envs = [remote(url) for _ in range(8)]
    for env in envs:
        original = env.schema

        async def counted(original: Any = original) -> dict[str, Any]:
            nonlocal fetches
            fetches += 1
            return await original()

        env.schema = counted  # type: ignore[method-assign]
    try:
        episodes = await asyncio.gather(*(agent.new_episode(env) for env in envs))
        assert fetches == 1 and len({id(e.setup) for e in episodes}) == 1
        await agent.new_episode(envs[0])
        assert fetches == 1
    finally:
        for env in envs:
            await env.close()
