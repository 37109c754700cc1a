"""ChatAgent: observations as user messages, the model's reply text as the action.

The default parser reads a JSON object anywhere in the reply as the action, or, for an
env whose action has one required field (``guess``, ``message``, ``action``), the bare
value: ``8`` is ``{"guess": 8}`` for guess_number, ``hello`` is ``{"message": "hello"}`` for
echo. Anything else is an :class:`~agents.ActionParseError` whose message (shown to the
model as the next observation) gives an example action.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from forge_env.cli._play import ActionInputError, parse_action_line
from forge_env.conformance import required_fields
from forge_env.env import AsyncEnv

from agents._base import ActionParseError
from agents._chat_tokens import ChatTokens
from agents._env_info import EnvInfo, env_key
from agents._schema_tools import example_action, field_is_string, field_types, property_schema
from agents._template_agent import (
    TemplateAgent,
    TemplateEpisode,
    first_paragraph,
    json_compact,
    strip_code_fence,
)

__all__ = ["ActionParser", "ChatAgent", "parse_chat_action"]

ActionParser = Callable[[str, dict[str, Any]], dict[str, Any]]
"""``parser(reply_text, action_schema) -> action``; raises ActionParseError for the model."""

# A JSON scalar inside a sentence: "I guess 8." -> 8.
_SCALAR = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\btrue\b|\bfalse\b")


def parse_chat_action(text: str, action_schema: dict[str, Any]) -> dict[str, Any]:
    """The default reply parser of :class:`ChatAgent`.

    1. A JSON object anywhere in the reply (the first one that decodes) is the action.
    2. Else, when the action has exactly one required field, the reply is that field's
       value: a string field takes the whole reply (code fence removed); any other field
       takes the reply's first line, JSON-decoded (``8``, ``true``, ``"x"``), or failing
       that the first number/boolean in it (``I guess 8.`` is 8), or failing that the
       line as text. A field with allowed values (enum) must get one of them.
    3. Else :class:`ActionParseError`, with an example action.

    >>> schema = {"type": "object", "required": ["guess"], "title": "GuessAction",
    ...           "properties": {"guess": {"type": "integer"}}}
    >>> parse_chat_action("8", schema), parse_chat_action('I say {"guess": 3}', schema)
    ({'guess': 8}, {'guess': 3})
    >>> parse_chat_action("My guess is 5.", schema)
    {'guess': 5}
    """
    body = strip_code_fence(text)
    found = _first_json_object(body)
    if found is not None:
        return found
    required = required_fields(action_schema)
    if len(required) != 1:
        raise ActionParseError(_format_hint(action_schema, "Your reply holds no JSON object."))
    field = required[0]
    if not body:
        raise ActionParseError(_format_hint(action_schema, "Your reply is empty."))
    if field_is_string(action_schema, field):
        value_text = body
    else:
        value_text = next((line.strip() for line in body.splitlines() if line.strip()), "")
        try:
            json.loads(value_text)
        except ValueError:
            scalar = _SCALAR.search(value_text)
            if scalar is not None and _takes_numbers(action_schema, field):
                value_text = scalar.group(0)
    try:
        action = parse_action_line(value_text, action_schema)
    except ActionInputError as e:  # pragma: no cover - one required field never raises
        raise ActionParseError(str(e)) from e
    allowed = _allowed_values(action_schema, field)
    if allowed is not None and action.get(field) not in allowed:
        choices = ", ".join(json_compact(v) for v in allowed)
        raise ActionParseError(
            _format_hint(action_schema, f"{json_compact(action.get(field))} is not one of {choices}.")
        )
    return action


class ChatEpisode(TemplateEpisode):
    """One conversation of a :class:`ChatAgent`."""

    def __init__(self, agent: ChatAgent, tokens: ChatTokens, info: EnvInfo) -> None:
        super().__init__(agent, tokens)
        self.info = info
        self.env_name = info.name
        self._parser = agent.action_parser

    def first_prompt(self, observation_text: str) -> list[int]:
        return self.tokens.first_prompt({"role": "user", "content": self.observation(observation_text)})

    def parse_action(self, completion_ids: Sequence[int]) -> dict[str, Any]:
        action = self._parser(self.reply_text(completion_ids), self.info.action_schema)
        if not isinstance(action, dict):
            raise TypeError(f"the action parser returned {type(action).__name__}, not a dict: {action!r}")
        return action

    def next_prompt(
        self, completion_ids: Sequence[int], finish_reason: str, observation_text: str
    ) -> list[int]:
        # finish_reason needs no branch: a reply ending in the end-of-turn token is
        # recognised by its last id, and a cut reply gets the template's closing text.
        message = {"role": "user", "content": self.observation(observation_text)}
        return self.tokens.next_prompt(completion_ids, message)


class ChatAgent(TemplateAgent):
    """Observations become user messages; the reply text is parsed into an action.

    >>> # agent = ChatAgent(AutoTokenizer.from_pretrained(model_path))
    >>> # episode = await agent.new_episode(env)         # reads env's action schema once
    >>> # prompt = episode.first_prompt(agent.observation_text(env, obs))
    >>> # action = episode.parse_action(completion.token_ids)    # e.g. {"guess": 8}
    >>> # prompt = episode.next_prompt(completion.token_ids, completion.finish_reason, text)

    Args:
        tokenizer: the generator's Hugging Face tokenizer (with a chat template).
        system_prompt: the system message; None writes one from the env's description and
            an example action; "" sends no system message.
        action_parser: ``parser(reply_text, action_schema) -> action dict``, raising
            :class:`~agents.ActionParseError` (its message goes to the model). Default
            :func:`parse_chat_action`.
        max_observation_chars: longer observations lose their middle (None: no limit).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        system_prompt: str | None = None,
        action_parser: ActionParser | None = None,
        max_observation_chars: int | None = 8000,
    ) -> None:
        super().__init__(tokenizer, max_observation_chars=max_observation_chars)
        self.system_prompt = system_prompt
        self.action_parser: ActionParser = action_parser or parse_chat_action
        self._episodes: dict[tuple[Any, ...], tuple[ChatTokens, EnvInfo]] = {}

    async def new_episode(self, env: AsyncEnv[Any, Any]) -> ChatEpisode:
        key = env_key(env)
        cached = self._episodes.get(key)
        if cached is None:
            info = await self.env_info(env, with_tools=False)
            system = self.system_prompt if self.system_prompt is not None else default_system_prompt(info)
            cached = self._episodes.setdefault(key, (ChatTokens(self.tokenizer, system=system or None), info))
        tokens, info = cached
        return ChatEpisode(self, tokens, info)


def default_system_prompt(info: EnvInfo) -> str:
    """What :class:`ChatAgent` tells the model by default: the env and how to answer."""
    schema = info.action_schema
    example = example_action(schema)
    about = first_paragraph(info.description)
    lines = [f'You are playing "{info.name}".' + (f" {about}" if about else "")]
    answer = f"Each turn, answer with one action: a JSON object such as {json_compact(example)}"
    required = required_fields(schema)
    if len(required) == 1 and isinstance(example, dict) and _allowed_values(schema, required[0]) is None:
        answer += f', or just the value of "{required[0]}" (e.g. {json_compact(example.get(required[0]))})'
    lines.append(answer + ". Reply with the action only.")
    return "\n".join(lines)


# --- internals ---------------------------------------------------------------------------------


def _first_json_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    at = text.find("{")
    while at >= 0:
        try:
            value, _ = decoder.raw_decode(text, at)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        at = text.find("{", at + 1)
    return None


def _format_hint(schema: dict[str, Any], problem: str) -> str:
    example = example_action(schema)
    hint = f"{problem} Answer with one action as a JSON object, e.g. {json_compact(example)}"
    required = required_fields(schema)
    if len(required) == 1 and isinstance(example, dict):
        hint += f', or just the value of "{required[0]}" (e.g. {json_compact(example.get(required[0]))})'
    return hint + "."


def _allowed_values(schema: dict[str, Any], field: str) -> list[Any] | None:
    prop = property_schema(schema, field)
    if "const" in prop:
        return [prop["const"]]
    enum = prop.get("enum")
    return list(enum) if isinstance(enum, list) else None


def _takes_numbers(schema: dict[str, Any], field: str) -> bool:
    return bool(field_types(schema, field) & {"integer", "number", "boolean", "any"})
