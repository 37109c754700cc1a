"""Pick the agent for an env: tool calling when it offers MCP tools, chat otherwise."""

from __future__ import annotations

from typing import Any, Literal

from agents._base import Agent

__all__ = ["AgentKind", "make_agent"]

AgentKind = Literal["chat", "tool", "auto"]


async def make_agent(kind: AgentKind, tokenizer: Any, env: Any = None, *, system_prompt: str | None = None) -> Agent:
    """A :class:`~agents.ChatAgent` (``chat``), :class:`~agents.ToolCallingAgent` (``tool``), or
    for ``auto`` the tool-calling one when ``env`` lists MCP tools.

    Example::

        agent = await make_agent("auto", tokenizer, env)     # countdown -> ToolCallingAgent
    """
    from agents.chat import ChatAgent
    from agents.tool_calling import ToolCallingAgent

    if kind not in ("chat", "tool", "auto"):
        raise ValueError(f"agent kind must be 'chat', 'tool' or 'auto', got {kind!r}")
    if kind == "auto":
        if env is None:
            raise ValueError("agent kind 'auto' needs the env, to ask it for tools")
        try:
            tools = await env.list_tools()
        except Exception:  # an env without MCP support offers no tools
            tools = []
        kind = "tool" if tools else "chat"
    cls = ToolCallingAgent if kind == "tool" else ChatAgent
    return cls(tokenizer, system_prompt=system_prompt)
