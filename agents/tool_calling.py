"""ToolCallingAgent: the env's actions as tools, called in the Hermes/Qwen format.

The model answers::

    <tool_call>
    {"name": "calculator", "arguments": {"expression": "3*(4+2)"}}
    </tool_call>

Tools come from the env (see :func:`agents._schema_tools.build_tools`):

- the env's MCP tools (``env.list_tools()``): a call becomes
  ``{"type": "call_tool", "tool_name": name, "arguments": args}``;
- each value of the action's ``type`` discriminator other than ``call_tool``/``list_tools``
  (e.g. ``submit``): a call becomes ``{"type": value, **args}``; an MCP tool of the same
  name wins (countdown's ``submit`` is both);
- an action without a ``type`` field is one tool named after the model (``GuessAction`` ->
  ``guess``): a call's arguments are the action.

The tool list reaches the model through the chat template's ``tools=`` when the template
renders tools, else the agent writes it into the system prompt in the same Hermes
wording. A tool's result comes back as a ``tool`` message when the template knows that
role, else as a user message wrapped in ``<tool_response>...</tool_response>``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from forge_env.conformance import example_from_schema
from forge_env.env import AsyncEnv

from agents._base import ActionParseError
from agents._chat_tokens import ChatTokens, template_supports_tool_role, template_supports_tools
from agents._env_info import EnvInfo, env_key
from agents._schema_tools import ToolDef, build_tools
from agents._template_agent import TemplateAgent, TemplateEpisode, first_paragraph, json_compact

__all__ = ["ToolCallingAgent", "hermes_tools_prompt", "parse_tool_call"]

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"


def parse_tool_call(text: str, tools: Sequence[ToolDef]) -> tuple[ToolDef, dict[str, Any]]:
    """The first ``<tool_call>`` in a reply: the tool and its arguments.

    The closing ``</tool_call>`` may be missing (a reply cut by length or ended by EOS
    right after the JSON). ``arguments`` may also be given as ``parameters`` or as a JSON
    string. Only the first call of a reply is used: one reply, one env step.

    >>> from agents._schema_tools import ToolDef
    >>> guess = ToolDef(name="guess", description="", parameters={}, kind="action")
    >>> tool, args = parse_tool_call('<tool_call>\\n{"name": "guess", "arguments": {"guess": 8}}', [guess])
    >>> tool.name, args
    ('guess', {'guess': 8})

    Raises:
        ActionParseError: no call, bad JSON, an unknown tool, or arguments that are not an
            object; the message shows the model the exact format and the tool names.
    """
    start = text.find(TOOL_CALL_OPEN)
    if start < 0:
        raise ActionParseError(_format_hint(tools, "No tool call found in your reply."))
    body_start = start + len(TOOL_CALL_OPEN)
    end = text.find(TOOL_CALL_CLOSE, body_start)
    body = (text[body_start:end] if end >= 0 else text[body_start:]).strip()
    try:
        call, used = json.JSONDecoder().raw_decode(body)
    except ValueError as e:
        raise ActionParseError(_format_hint(tools, f"The tool call is not valid JSON ({e}).")) from e
    if body[used:].strip():
        raise ActionParseError(
            _format_hint(tools, "The tool call has text after its JSON object; put only the JSON inside.")
        )
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ActionParseError(
            _format_hint(tools, 'The tool call must be a JSON object with "name" and "arguments".')
        )
    by_name = {tool.name: tool for tool in tools}
    tool = by_name.get(call["name"])
    if tool is None:
        raise ActionParseError(_format_hint(tools, f"There is no tool named {json_compact(call['name'])}."))
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI's wire format sends arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ActionParseError(
            _format_hint(tools, f'"arguments" must be a JSON object, got {json_compact(arguments)}.')
        )
    return tool, arguments


def hermes_tools_prompt(tools: Sequence[ToolDef]) -> str:
    """The Hermes tool section of a system prompt, for templates that do not render tools."""
    listed = "\n".join(json_compact(tool.openai_schema()) for tool in tools)
    return (
        "# Tools\n\nYou may call one of these tools:\n<tools>\n"
        f"{listed}\n</tools>\n\n"
        "To call a tool, answer with:\n<tool_call>\n"
        '{"name": <tool-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


class _ToolSetup:
    """Everything an episode of one env needs: tools, token logic, message roles."""

    def __init__(self, info: EnvInfo, tools: list[ToolDef], tokens: ChatTokens, tool_role: bool) -> None:
        self.info = info
        self.tools = tools
        self.tokens = tokens
        self.tool_role = tool_role


class ToolCallingEpisode(TemplateEpisode):
    """One conversation of a :class:`ToolCallingAgent`."""

    def __init__(self, agent: ToolCallingAgent, setup: _ToolSetup) -> None:
        super().__init__(agent, setup.tokens)
        self.setup = setup
        self.env_name = setup.info.name
        self._last: tuple[tuple[int, ...], bool] | None = None

    @property
    def tools(self) -> list[ToolDef]:
        return self.setup.tools

    def first_prompt(self, observation_text: str) -> list[int]:
        return self.tokens.first_prompt({"role": "user", "content": self.observation(observation_text)})

    def parse_action(self, completion_ids: Sequence[int]) -> dict[str, Any]:
        key = tuple(int(i) for i in completion_ids)
        try:
            tool, arguments = parse_tool_call(self.reply_text(completion_ids), self.tools)
        except ActionParseError:
            self._last = (key, False)
            raise
        self._last = (key, True)
        return tool.to_action(arguments)

    def next_prompt(
        self, completion_ids: Sequence[int], finish_reason: str, observation_text: str
    ) -> list[int]:
        text = self.observation(observation_text)
        if self._called_tool(completion_ids):
            if self.setup.tool_role:
                message = {"role": "tool", "content": text}
            else:
                message = {"role": "user", "content": f"{TOOL_RESPONSE_OPEN}\n{text}\n{TOOL_RESPONSE_CLOSE}"}
        else:  # no valid call: the observation is the parse error (or the env's answer) to the user
            message = {"role": "user", "content": text}
        return self.tokens.next_prompt(completion_ids, message)

    def _called_tool(self, completion_ids: Sequence[int]) -> bool:
        key = tuple(int(i) for i in completion_ids)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        try:
            parse_tool_call(self.reply_text(completion_ids), self.tools)
        except ActionParseError:
            return False
        return True


class ToolCallingAgent(TemplateAgent):
    """The env's actions and MCP tools offered as tools; the model calls one per reply.

    >>> # agent = ToolCallingAgent(AutoTokenizer.from_pretrained(model_path))
    >>> # episode = await agent.new_episode(env)   # countdown: tools calculator, submit
    >>> # prompt = episode.first_prompt(agent.observation_text(env, obs))
    >>> # episode.parse_action(ids)  # '<tool_call>{"name": "calculator", "arguments": {...}}</tool_call>'
    >>> # -> {"type": "call_tool", "tool_name": "calculator", "arguments": {...}}

    Args:
        tokenizer: the generator's Hugging Face tokenizer (with a chat template).
        system_prompt: the system message's text; None writes one from the env's
            description; "" adds none of our own text (the tool list is still sent).
        max_observation_chars: longer observations lose their middle (None: no limit).
        use_tool_role: send tool results as ``tool`` messages (None: when the template
            handles that role); else as user messages in ``<tool_response>`` tags.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        system_prompt: str | None = None,
        max_observation_chars: int | None = 8000,
        use_tool_role: bool | None = None,
    ) -> None:
        super().__init__(tokenizer, max_observation_chars=max_observation_chars)
        self.system_prompt = system_prompt
        self.template_tools = template_supports_tools(tokenizer)
        if use_tool_role is None:
            use_tool_role = template_supports_tool_role(tokenizer)
        self.use_tool_role = use_tool_role
        self._setups: dict[tuple[Any, ...], _ToolSetup] = {}

    async def new_episode(self, env: AsyncEnv[Any, Any]) -> ToolCallingEpisode:
        key = env_key(env)
        setup = self._setups.get(key)
        if setup is None:
            info = await self.env_info(env, with_tools=True)
            setup = self._setups.setdefault(key, self._setup(info))
        return ToolCallingEpisode(self, setup)

    async def tools(self, env: AsyncEnv[Any, Any]) -> list[ToolDef]:
        """The tools offered to the model for ``env`` (fetched once per env)."""
        return list((await self.new_episode(env)).tools)

    def _setup(self, info: EnvInfo) -> _ToolSetup:
        tools = build_tools(info.action_schema, info.tools, env_name=info.name)
        if not tools:
            raise ValueError(
                f"{info.name} offers no tools and its action schema has no fields to make one from; "
                "use ChatAgent for it"
            )
        system = self.system_prompt if self.system_prompt is not None else default_tools_system_prompt(info)
        if self.template_tools:
            schemas = [tool.openai_schema() for tool in tools]
            tokens = ChatTokens(self.tokenizer, system=system or None, tools=schemas)
        else:
            tools_text = hermes_tools_prompt(tools)
            tokens = ChatTokens(self.tokenizer, system=f"{system}\n\n{tools_text}" if system else tools_text)
        return _ToolSetup(info, tools, tokens, self.use_tool_role)


def default_tools_system_prompt(info: EnvInfo) -> str:
    """What :class:`ToolCallingAgent` tells the model by default, before the tool list."""
    about = first_paragraph(info.description)
    return (
        f'You are acting in the environment "{info.name}".' + (f" {about}" if about else "")
        + "\nEach reply calls exactly one tool; its result comes back to you."
    )


def _format_hint(tools: Sequence[ToolDef], problem: str) -> str:
    names = ", ".join(tool.name for tool in tools)
    example = ""
    if tools:
        first = tools[0]
        args = example_from_schema(first.parameters) if first.parameters else {}
        example = json_compact({"name": first.name, "arguments": args if isinstance(args, dict) else {}})
    return (
        f"{problem} Answer with exactly one tool call:\n{TOOL_CALL_OPEN}\n{example}\n{TOOL_CALL_CLOSE}\n"
        f"Tools: {names}."
    )
