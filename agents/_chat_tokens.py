"""Chat-template token logic shared by the agents: exact ids, nothing sampled re-tokenized.

The first prompt is the chat template's rendering of (system, first observation) plus the
assistant header, tokenized once. Every later prompt is only the *env side* of the turn:
the text the template puts after an assistant message's content (``<|im_end|>\\n`` in
ChatML), the next message, and the next assistant header. That text is found by rendering
a small conversation whose assistant content is a sentinel string and taking what follows
the sentinel, so it is exactly what the template would produce, for any template.

Concatenating ``first_prompt + completion + next_prompt + completion + ...`` therefore
gives the template's rendering of the whole conversation, token for token, whenever the
completions tokenize as their text does (the unit tests check this), and the sampled ids
exactly as sampled otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

__all__ = ["ChatTokens", "template_source", "template_supports_tool_role", "template_supports_tools"]

# A string no template rewrites (no whitespace to trim, no markup) and no reply contains.
_SENTINEL = "FORGEENVREPLYSENTINEL7f3a9c"
# Stands for the earlier conversation when rendering one turn's env-side text.
_FILLER_USER = "Hello."


def template_source(tokenizer: Any, *, with_tools: bool = False) -> str:
    """The tokenizer's chat template source ('' when it has none).

    A tokenizer may carry several named templates; ``tool_use`` is the one used with tools.
    """
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        if with_tools and isinstance(template.get("tool_use"), str):
            return str(template["tool_use"])
        chosen = template.get("default") or next(iter(template.values()), "")
        return chosen if isinstance(chosen, str) else ""
    return template if isinstance(template, str) else ""


def template_supports_tools(tokenizer: Any) -> bool:
    """True when the template renders a ``tools=`` list (its source mentions ``tools``)."""
    return "tools" in template_source(tokenizer, with_tools=True)


def template_supports_tool_role(tokenizer: Any) -> bool:
    """True when the template handles ``tool`` messages itself (it compares a role with
    ``'tool'``); a generic template would render them as an unknown role the model never saw."""
    return re.search(r"""(["'])tool\1""", template_source(tokenizer, with_tools=True)) is not None


class ChatTokens:
    """Token ids of one conversation shape: a tokenizer, a system prompt and a tool list.

    Stateless per episode (every method is a pure function of its arguments), so one
    instance serves all episodes of an env.

    >>> # tokens = ChatTokens(tokenizer, system="Play well.")
    >>> # prompt = tokens.first_prompt({"role": "user", "content": "Guess 1..16"})
    >>> # later = tokens.next_prompt(completion_ids, {"role": "user", "content": "higher"})

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        system: the system message's content, or None for no system message.
        tools: OpenAI-style tool schemas passed to the template as ``tools=`` (None: none).
    """

    def __init__(
        self, tokenizer: Any, *, system: str | None = None, tools: list[dict[str, Any]] | None = None
    ) -> None:
        if not template_source(tokenizer, with_tools=bool(tools)):
            raise ValueError(
                f"{type(tokenizer).__name__} has no chat template: agents render prompts with it. "
                "Set tokenizer.chat_template (e.g. forge_env.models._tiny.CHATML_TEMPLATE) or use an "
                "instruct model's tokenizer"
            )
        self.tokenizer = tokenizer
        self.system = system
        self.tools = list(tools) if tools else None
        self._head: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        self._bos_text, self._bos_ids = self._bos_to_add()
        self._special_ids = frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", ()) or ())
        self.closing_text = self._closing_text()
        """What the template puts after an assistant message's content (``<|im_end|>\\n``)."""

    # --- rendering -----------------------------------------------------------------------------

    def render(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool) -> str:
        """The template's text of ``messages`` (the system message and tools included)."""
        kwargs: dict[str, Any] = {"tools": self.tools} if self.tools else {}
        text = self.tokenizer.apply_chat_template(
            [*self._head, *messages], tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )
        if not isinstance(text, str):  # pragma: no cover - tokenize=False always gives text
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
        return text

    def encode(self, text: str) -> list[int]:
        """Ids of env-side text; the template's own special-token text becomes those tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    # --- the two prompts -------------------------------------------------------------------------

    def first_prompt(self, message: dict[str, Any]) -> list[int]:
        """Ids of (system, ``message``, assistant header): the episode's first prompt.

        A BOS token is prepended only when the tokenizer adds one and the template did not
        already write it, so it is never doubled.
        """
        text = self.render([message], add_generation_prompt=True)
        ids = self.encode(text)
        if self._bos_ids and not text.startswith(self._bos_text):
            ids = [*self._bos_ids, *ids]
        return ids

    def turn_text(self, message: dict[str, Any]) -> str:
        """Env-side text after an assistant reply: the template's closing text of the reply,
        ``message`` rendered, and the next assistant header."""
        filler = [{"role": "user", "content": _FILLER_USER}, {"role": "assistant", "content": _SENTINEL}]
        text = self.render([*filler, message], add_generation_prompt=True)
        at = text.find(_SENTINEL)
        if at < 0:
            raise ValueError(
                "the chat template dropped the assistant message's content, so the agent cannot find "
                "where a reply ends; use a template that renders assistant messages"
            )
        return text[at + len(_SENTINEL):]

    def next_prompt(self, completion_ids: Sequence[int], message: dict[str, Any]) -> list[int]:
        """Ids to append after ``completion_ids`` so the conversation continues with ``message``.

        When the completion ends with a special token (EOS / end of turn) that the closing
        text starts with, that part is not added again; a reply cut by length gets the whole
        closing text. Only this env-side text is tokenized.
        """
        text = self.turn_text(message)
        if completion_ids:
            last = int(completion_ids[-1])
            if last in self._special_ids or last in self.eos_ids:
                last_text = self.tokenizer.decode([last], skip_special_tokens=False)
                if last_text and text.startswith(last_text):
                    text = text[len(last_text):]
        return self.encode(text)

    # --- ids -----------------------------------------------------------------------------------

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            return (eos,)
        return tuple(int(i) for i in eos or ())

    def stop_token_ids(self) -> tuple[int, ...]:
        """The tokenizer's EOS plus the template's end-of-turn token when that differs (e.g.
        a base tokenizer whose EOS is ``<|endoftext|>`` under a ChatML template)."""
        ids = list(self.eos_ids)
        closing = self.encode(self.closing_text) if self.closing_text else []
        if closing and closing[0] in self._special_ids and closing[0] not in ids:
            ids.append(closing[0])
        return tuple(ids)

    # --- internals -------------------------------------------------------------------------------

    def _closing_text(self) -> str:
        text = self.render(
            [{"role": "user", "content": _FILLER_USER}, {"role": "assistant", "content": _SENTINEL}],
            add_generation_prompt=False,
        )
        at = text.find(_SENTINEL)
        return text[at + len(_SENTINEL):] if at >= 0 else ""

    def _bos_to_add(self) -> tuple[str, list[int]]:
        """The BOS the tokenizer would add to a text (``("", [])`` when it adds none)."""
        bos_id = getattr(self.tokenizer, "bos_token_id", None)
        bos_text = getattr(self.tokenizer, "bos_token", None)
        if not isinstance(bos_id, int) or not isinstance(bos_text, str) or not bos_text:
            return "", []
        with_special = list(self.tokenizer.encode("a", add_special_tokens=True))
        without = list(self.tokenizer.encode("a", add_special_tokens=False))
        if with_special[:1] == [bos_id] and without[:1] != [bos_id]:
            return bos_text, [bos_id]
        return "", []
