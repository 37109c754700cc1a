"""What ChatAgent and ToolCallingAgent share: the tokenizer, per-env caches, reply text,
observation length limits."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from forge_env.env import AsyncEnv

from agents._base import Agent, AgentEpisode
from agents._chat_tokens import ChatTokens
from agents._env_info import EnvInfo, EnvInfoCache, env_key, fetch_env_info

__all__ = ["TemplateAgent", "TemplateEpisode", "reply_text", "truncate_middle"]

# Added tokens that carry meaning in a reply and must survive special-token stripping even
# where a tokenizer marks them special.
_KEPT_TOKENS = frozenset({"<tool_call>", "</tool_call>"})
_THINK_END = "</think>"


def reply_text(tokenizer: Any, completion_ids: Sequence[int]) -> str:
    """A completion's text for parsing: special tokens (EOS, end of turn) removed, a leading
    reasoning block (``... </think>``) dropped, whitespace stripped."""
    text = tokenizer.decode(list(completion_ids), skip_special_tokens=False)
    for token in getattr(tokenizer, "all_special_tokens", ()) or ():
        if token and token not in _KEPT_TOKENS:
            text = text.replace(token, "")
    if _THINK_END in text:
        text = text.rsplit(_THINK_END, 1)[1]
    return text.strip()


def truncate_middle(text: str, limit: int | None) -> str:
    """``text`` cut to at most ``limit`` characters, keeping its start and its end (a
    program's last lines of output matter as much as the task statement).

    >>> truncate_middle("a" * 50 + "b" * 50, 60)
    'aaaaaaaaaaaaaaa\\n[... 69 characters cut ...]\\nbbbbbbbbbbbbbbbb'
    """
    if limit is None or len(text) <= limit:
        return text
    cut = len(text)
    for _ in range(3):  # the marker's length depends on the count; settle it
        marker = f"\n[... {cut} characters cut ...]\n"
        keep = max(0, limit - len(marker))
        cut = len(text) - keep
    head = keep // 2
    tail = keep - head
    return text[:head] + marker + (text[len(text) - tail:] if tail else "")


def first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n")[0].split()) if text else ""


def json_compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def strip_code_fence(text: str) -> str:
    """The inside of a reply wrapped in one Markdown code fence; other text unchanged."""
    match = re.fullmatch(r"```[\w+-]*[ \t]*\n?(.*?)\n?```", text.strip(), flags=re.DOTALL)
    return match.group(1).strip() if match else text


class TemplateEpisode(AgentEpisode):
    """Shared episode plumbing; subclasses define the messages and the parser."""

    def __init__(self, agent: TemplateAgent, tokens: ChatTokens) -> None:
        self.agent = agent
        self.tokens = tokens

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokens.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def reply_text(self, completion_ids: Sequence[int]) -> str:
        return reply_text(self.tokens.tokenizer, completion_ids)

    def observation(self, observation_text: str) -> str:
        return truncate_middle(observation_text, self.agent.max_observation_chars)


class TemplateAgent(Agent):
    """Base of the chat-template agents: holds the tokenizer and the per-env caches."""

    def __init__(self, tokenizer: Any, *, max_observation_chars: int | None) -> None:
        if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
            raise TypeError(
                f"tokenizer must be a Hugging Face tokenizer with a chat template "
                f"(AutoTokenizer.from_pretrained(model)), got {type(tokenizer).__name__}"
            )
        if max_observation_chars is not None and max_observation_chars < 64:
            raise ValueError(f"max_observation_chars must be >= 64 or None, got {max_observation_chars}")
        self.tokenizer = tokenizer
        self.max_observation_chars = max_observation_chars
        self._infos: EnvInfoCache[EnvInfo] = EnvInfoCache()
        self._stop_ids: tuple[int, ...] | None = None

    async def env_info(self, env: AsyncEnv[Any, Any], *, with_tools: bool) -> EnvInfo:
        """The env's name, action schema (and tools), fetched once per env."""
        return await self._infos.get(env_key(env), lambda: fetch_env_info(env, with_tools=with_tools))

    def observation_text(self, env: AsyncEnv[Any, Any], observation: Any) -> str:
        """``env.render_text(observation)`` cut to ``max_observation_chars`` (middle dropped)."""
        return truncate_middle(env.render_text(observation), self.max_observation_chars)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The tokenizer's EOS, plus the template's end-of-turn token when it differs."""
        if self._stop_ids is None:
            self._stop_ids = ChatTokens(self.tokenizer).stop_token_ids()
        return self._stop_ids
