"""ToolCallingAgent: tools derived from env schemas and MCP tools, Hermes tool-call parsing,
tool results as messages, and exact tokens (tiny model's tokenizer: a template with tools;
SmolLM2's: a template without, so the agent writes the tools into the system prompt)."""

from __future__ import annotations

import json
from typing import Any, Literal, Union

import pytest
from pydantic import Field

from agents import ActionParseError, ToolCallingAgent, hermes_tools_prompt, parse_tool_call
from agents._schema_tools import ToolDef, action_tool_name, build_tools
from envs import load_env_factory
from forge_env.env import Action, ToolSpec

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from forge_env.models._tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("agents_tools") / "tiny")
    return AutoTokenizer.from_pretrained(path)


def completion(tokenizer: Any, text: str, finish_reason: str = "stop") -> list[int]:
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    return ids + [tokenizer.eos_token_id] if finish_reason == "stop" else ids


def call(name: str, arguments: Any, *, close: bool = True) -> str:
    body = json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>\n{body}\n</tool_call>" if close else f"<tool_call>\n{body}"


async def tools_of(agent: ToolCallingAgent, env_name: str) -> list[ToolDef]:
    return await agent.tools(load_env_factory(env_name)())


# --- tools ---------------------------------------------------------------------------------------


async def test_tools_of_builtin_envs(tiny_tokenizer: Any) -> None:
    agent = ToolCallingAgent(tiny_tokenizer)
    found = {name: [(t.name, t.kind) for t in await tools_of(agent, name)]
             for name in ("guess_number", "echo", "countdown", "frozen_lake", "python_code")}
    assert found == {
        "guess_number": [("guess", "action")],
        "echo": [("echo", "action")],
        # countdown's `submit` is an MCP tool and a `type` value: the MCP tool is kept.
        "countdown": [("calculator", "mcp"), ("submit", "mcp")],
        "frozen_lake": [("frozen_lake", "action")],
        # list_tools/call_tool are not tools; `submit` takes the remaining field, required.
        "python_code": [("run_python", "mcp"), ("submit", "type")],
    }
    submit = (await tools_of(agent, "python_code"))[1]
    assert submit.parameters == {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "submit: the whole solution module"}},
        "required": ["code"],
    }
    guess = (await tools_of(agent, "guess_number"))[0]
    assert guess.parameters["required"] == ["guess"]
    assert guess.parameters["properties"]["guess"]["type"] == "integer"
    assert guess.description == "One guess."


def test_tool_names_from_action_titles() -> None:
    titles = ("GuessAction", "FrozenLakeAction", "CodeAction", "Move", "HTTPAction")
    assert [action_tool_name(t) for t in titles] == ["guess", "frozen_lake", "code", "move", "http"]
    assert action_tool_name("Action", fallback="my env") == "my_env"


class _Move(Action):
    type: Literal["move"] = "move"
    direction: str = Field(description="left or right")


class _Say(Action):
    type: Literal["say"] = "say"
    text: str
    loud: bool = False


class _Call(Action):
    type: Literal["call_tool"] = "call_tool"
    tool_name: str
    arguments: dict[str, Any] = {}


def test_union_schema_gives_one_tool_per_branch() -> None:
    from pydantic import TypeAdapter

    schema = TypeAdapter(Union[_Move, _Say, _Call]).json_schema()
    lookup = ToolSpec(name="lookup", description="Look a word up.")
    tools = build_tools(schema, [lookup], env_name="union")
    assert [(t.name, t.kind) for t in tools] == [("lookup", "mcp"), ("move", "type"), ("say", "type")]
    say = tools[2]
    assert set(say.parameters["properties"]) == {"text", "loud"} and say.parameters["required"] == ["text"]
    assert say.to_action({"text": "hi"}) == {"type": "say", "text": "hi"}
    assert tools[0].to_action({"q": 1}) == {"type": "call_tool", "tool_name": "lookup", "arguments": {"q": 1}}


def test_mcp_tools_need_an_action_that_carries_call_tool() -> None:
    lookup = ToolSpec(name="lookup")
    no_call = {"type": "object", "required": ["guess"], "properties": {"guess": {"type": "integer"}}}
    assert [t.name for t in build_tools(no_call, [lookup], env_name="g")] == ["g"]  # untitled: the env name
    assert [t.name for t in build_tools({}, [lookup], env_name="g")] == ["lookup"]


def test_openai_schema_and_hermes_prompt() -> None:
    tool = ToolDef(name="guess", description="One guess.", parameters={"type": "object"}, kind="action")
    assert tool.openai_schema() == {
        "type": "function",
        "function": {"name": "guess", "description": "One guess.", "parameters": {"type": "object"}},
    }
    text = hermes_tools_prompt([tool])
    assert "<tools>\n" + json.dumps(tool.openai_schema()) + "\n</tools>" in text
    assert text.endswith('<tool_call>\n{"name": <tool-name>, "arguments": <args-json-object>}\n</tool_call>')


# --- parsing -------------------------------------------------------------------------------------


async def parse(agent: ToolCallingAgent, env_name: str, text: str, finish: str = "stop") -> dict[str, Any]:
    episode = await agent.new_episode(load_env_factory(env_name)())
    return episode.parse_action(completion(agent.tokenizer, text, finish))


@pytest.mark.parametrize(
    ("env_name", "text", "finish", "action"),
    [
        ("guess_number", call("guess", {"guess": 8}), "stop", {"guess": 8}),
        ("guess_number", "I will guess.\n" + call("guess", {"guess": 8}) + "\nok", "stop", {"guess": 8}),
        ("guess_number", call("guess", {"guess": 8}, close=False), "stop", {"guess": 8}),
        ("guess_number", call("guess", {"guess": 8}, close=False), "length", {"guess": 8}),
        ("echo", call("echo", {"message": "hi there"}), "stop", {"message": "hi there"}),
        ("echo", '<tool_call>{"name": "echo", "arguments": "{\\"message\\": \\"x\\"}"}</tool_call>', "stop",
         {"message": "x"}),
        ("echo", '<tool_call>{"name": "echo", "parameters": {"message": "y"}}</tool_call>', "stop",
         {"message": "y"}),
        ("countdown", call("calculator", {"expression": "3*(4+2)"}), "stop",
         {"type": "call_tool", "tool_name": "calculator", "arguments": {"expression": "3*(4+2)"}}),
        ("countdown", call("submit", {"expression": "3*8"}), "stop",
         {"type": "call_tool", "tool_name": "submit", "arguments": {"expression": "3*8"}}),
        ("python_code", call("run_python", {"code": "print(1)"}), "stop",
         {"type": "call_tool", "tool_name": "run_python", "arguments": {"code": "print(1)"}}),
        ("python_code", call("submit", {"code": "def f():\n    return 1"}), "stop",
         {"type": "submit", "code": "def f():\n    return 1"}),
        # Two calls: the first is the action (one reply, one step).
        ("frozen_lake", call("frozen_lake", {"action": "down"}) + call("frozen_lake", {"action": "up"}),
         "stop", {"action": "down"}),
    ],
)
async def test_parse_good_calls(
    tiny_tokenizer: Any, env_name: str, text: str, finish: str, action: dict[str, Any]
) -> None:
    assert await parse(ToolCallingAgent(tiny_tokenizer), env_name, text, finish) == action


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("8", "No tool call found"),
        ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+\n</tool_call>',
         "not valid JSON"),
        ('<tool_call>\n{"name": "calculator", "arguments": {}} trailing\n</tool_call>',
         "text after its JSON"),
        (call("solve", {"expression": "1"}), 'There is no tool named "solve"'),
        (call("calculator", [1, 2]), '"arguments" must be a JSON object, got [1, 2]'),
        ('<tool_call>["calculator"]</tool_call>', 'with "name" and "arguments"'),
    ],
)
async def test_parse_bad_calls(tiny_tokenizer: Any, text: str, problem: str) -> None:
    with pytest.raises(ActionParseError) as caught:
        await parse(ToolCallingAgent(tiny_tokenizer), "countdown", text)
    message = str(caught.value)
    assert problem in message
    example = '{"name": "calculator", "arguments": {"expression": "example"}}'
    assert f"<tool_call>\n{example}\n</tool_call>" in message
    assert message.endswith("Tools: calculator, submit.")


def test_parse_tool_call_doc_example() -> None:
    tool = ToolDef(name="guess", description="", parameters={}, kind="action")
    reply = '<tool_call>{"name": "guess", "arguments": null}</tool_call>'
    assert parse_tool_call(reply, [tool]) == (tool, {})


# --- prompts and tokens ---------------------------------------------------------------------------


def rendered_ids(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return list(tokenizer.encode(text, add_special_tokens=False))


SCRIPT = [  # (reply, finish reason, observation)
    (call("calculator", {"expression": "3*(4+2)"}), "stop", "calculator: 3*(4+2) = 18. 7 turns left."),
    ("I think the answer is", "length", "No tool call found in your reply. Answer with a tool call."),
    (call("calculator", {"expression": "1+1"}, close=False), "length", "calculator: 1+1 = 2. 5 turns left."),
    (call("submit", {"expression": "3*(4+2)"}), "stop", "Correct! 3*(4+2) = 18."),
]


async def play(agent: ToolCallingAgent, env_name: str) -> tuple[list[int], list[ToolDef]]:
    episode = await agent.new_episode(load_env_factory(env_name)())
    ids = episode.first_prompt("Make 18 from 3, 4, 2.")
    for text, finish, observation in SCRIPT:
        sampled = completion(agent.tokenizer, text, finish)
        ids += sampled + episode.next_prompt(sampled, finish, observation)
    return ids, episode.tools


def script_messages(*, tool_role: bool) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Make 18 from 3, 4, 2."}]
    for text, _, observation in SCRIPT:
        messages.append({"role": "assistant", "content": text})
        if "<tool_call>" not in text:
            messages.append({"role": "user", "content": observation})
        elif tool_role:
            messages.append({"role": "tool", "content": observation})
        else:
            messages.append({"role": "user", "content": f"<tool_response>\n{observation}\n</tool_response>"})
    return messages


@pytest.mark.parametrize("use_tool_role", [None, False])
async def test_tokens_equal_full_rendering_with_template_tools(
    tiny_tokenizer: Any, use_tool_role: Any
) -> None:
    agent = ToolCallingAgent(tiny_tokenizer, system_prompt="Solve it.", use_tool_role=use_tool_role)
    assert agent.template_tools and agent.use_tool_role is (use_tool_role is None)
    ids, tools = await play(agent, "countdown")
    messages = [{"role": "system", "content": "Solve it."}, *script_messages(tool_role=agent.use_tool_role)]
    expected = rendered_ids(tiny_tokenizer, messages, tools=[t.openai_schema() for t in tools])
    assert ids == expected
    # The tiny template renders a tool message as a user turn in <tool_response> tags, so both
    # ways of sending a tool result give the same tokens.
    text = tiny_tokenizer.decode(ids)
    result = "calculator: 3*(4+2) = 18. 7 turns left."
    assert f"<|im_start|>user\n<tool_response>\n{result}\n</tool_response>" in text
    assert "<|im_start|>user\nNo tool call found" in text


@pytest.mark.slow
async def test_tokens_equal_full_rendering_smollm2_tools_in_system_prompt() -> None:
    try:
        from forge_env.models._smollm2 import smollm2_gguf_path

        gguf = smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"SmolLM2 GGUF not available: {e}")
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    agent = ToolCallingAgent(tok, system_prompt="Solve it.")
    assert not agent.template_tools and not agent.use_tool_role
    ids, tools = await play(agent, "countdown")
    system = "Solve it.\n\n" + hermes_tools_prompt(tools)
    messages = [{"role": "system", "content": system}, *script_messages(tool_role=False)]
    assert ids == rendered_ids(tok, messages)


async def test_default_system_prompt(tiny_tokenizer: Any) -> None:
    agent = ToolCallingAgent(tiny_tokenizer)
    episode = await agent.new_episode(load_env_factory("python_code")())
    text = episode.decode(episode.first_prompt("Task add"))
    assert text.startswith('<|im_start|>system\nYou are acting in the environment "python_code".')
    assert "Each reply calls exactly one tool" in text and '"name": "run_python"' in text
    assert '"name": "submit"' in text


async def test_tool_results_as_tool_messages_only_after_a_call(tiny_tokenizer: Any) -> None:
    agent = ToolCallingAgent(tiny_tokenizer, system_prompt="")
    episode = await agent.new_episode(load_env_factory("countdown")())
    good = completion(tiny_tokenizer, call("calculator", {"expression": "1+1"}))
    bad = completion(tiny_tokenizer, "no call")
    # next_prompt works with or without parse_action first (it re-reads the reply).
    assert "<tool_response>" in episode.decode(episode.next_prompt(good, "stop", "2"))
    episode.parse_action(good)
    assert "<tool_response>" in episode.decode(episode.next_prompt(good, "stop", "2"))
    with pytest.raises(ActionParseError):
        episode.parse_action(bad)
    assert episode.decode(episode.next_prompt(bad, "stop", "err")) == (
        "\n<|im_start|>user\nerr<|im_end|>\n<|im_start|>assistant\n"
    )


async def test_parsed_calls_step_local_countdown(tiny_tokenizer: Any) -> None:
    agent = ToolCallingAgent(tiny_tokenizer)
    env = load_env_factory("countdown")()
    episode = await agent.new_episode(env)
    await env.reset(options={"numbers": [3, 4, 2], "target": 18})
    action = episode.parse_action(completion(tiny_tokenizer, call("calculator", {"expression": "3*(4+2)"})))
    observation, reward, terminated, _, _ = await env.step(env.parse_action(action))
    assert (observation.result, reward, terminated) == ("18", 0.0, False)
    action = episode.parse_action(completion(tiny_tokenizer, call("submit", {"expression": "3*(4+2)"})))
    observation, reward, terminated, _, _ = await env.step(env.parse_action(action))
    assert (reward, terminated) == (1.0, True)


async def test_env_without_tools_is_refused(tiny_tokenizer: Any) -> None:
    from forge_env.env import AsyncEnv

    class Empty(AsyncEnv[Any, Any]):
        pass

    with pytest.raises(ValueError, match="use ChatAgent"):
        await ToolCallingAgent(tiny_tokenizer).new_episode(Empty())
