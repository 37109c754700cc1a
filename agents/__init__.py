"""Agents: observations in, prompt token ids out; model output in, env actions out.

An agent keeps a conversation's exact token ids: the generator's sampled ids are kept as
sampled, and only the environment's side (observations as chat messages, the chat
template's glue) is tokenized.

>>> from agents import ChatAgent, ToolCallingAgent
>>> # agent = ChatAgent(tokenizer)                 # guess_number: replies "8" or {"guess": 8}
>>> # agent = ToolCallingAgent(tokenizer)          # countdown: <tool_call>{...}</tool_call>
>>> # episode = await agent.new_episode(env)
>>> # ids = episode.first_prompt(agent.observation_text(env, obs))
"""

from agents._base import ActionParseError, Agent, AgentEpisode
from agents._schema_tools import ToolDef
from agents._select import AgentKind, make_agent
from agents.chat import ActionParser, ChatAgent, parse_chat_action
from agents.tool_calling import ToolCallingAgent, hermes_tools_prompt, parse_tool_call

__all__ = [
    "ActionParseError",
    "ActionParser",
    "Agent",
    "AgentEpisode",
    "AgentKind",
    "ChatAgent",
    "ToolCallingAgent",
    "ToolDef",
    "hermes_tools_prompt",
    "make_agent",
    "parse_chat_action",
    "parse_tool_call",
]

for _name in ("ActionParseError", "Agent", "AgentEpisode", "ChatAgent", "ToolCallingAgent", "ToolDef"):
    globals()[_name].__module__ = __name__
del _name
