"""The agent contract: observations in, prompt tokens out; model output in, actions out.

An agent owns the conversation's token ids. The generator's sampled ids are appended
verbatim by the rollout; the agent only tokenizes what the environment side adds (the
observation as a chat message, the template's glue), so nothing sampled is ever
re-tokenized.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.env import AsyncEnv

__all__ = ["ActionParseError", "Agent", "AgentEpisode"]


class ActionParseError(ValueError):
    """The model's reply is not an action. The message is written for the model: it becomes
    the next observation (e.g. "no <tool_call> found; answer with <tool_call>{...}</tool_call>")."""


class AgentEpisode(abc.ABC):
    """One episode's conversation state, created by :meth:`Agent.new_episode`."""

    env_name: str | None = None
    """The env's name as the agent read it (for a remote env: from its ``/metadata``)."""

    @abc.abstractmethod
    def first_prompt(self, observation_text: str) -> list[int]:
        """Token ids of the opening prompt (system, the first observation, the assistant
        header), ready for the generator."""

    @abc.abstractmethod
    def parse_action(self, completion_ids: Sequence[int]) -> dict[str, Any]:
        """The env action in a sampled completion.

        Raises:
            ActionParseError: the reply holds no valid action; its message is for the model.
        """

    @abc.abstractmethod
    def next_prompt(
        self, completion_ids: Sequence[int], finish_reason: str, observation_text: str
    ) -> list[int]:
        """Env-side token ids to append after ``completion_ids``: what closes the assistant
        turn if the completion did not (e.g. a length-cut reply lacks the end-of-turn
        token), the observation as the next message, and the next assistant header."""

    @abc.abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of ``token_ids`` (for transcripts), special tokens kept."""


class Agent(abc.ABC):
    """Turns observations into the next prompt and model output into actions.

    An agent is shared by many concurrent episodes; per-episode state lives in the
    :class:`AgentEpisode` it returns.
    """

    tokenizer: Any
    """The HF tokenizer of the generator's model."""

    @abc.abstractmethod
    async def new_episode(self, env: AsyncEnv[Any, Any]) -> AgentEpisode:
        """Start a conversation for one episode of ``env`` (reads the env's action schema and
        tools once per env name and caches them)."""

    def observation_text(self, env: AsyncEnv[Any, Any], observation: Any) -> str:
        """The text the model sees for an observation; default: ``env.render_text``."""
        return env.render_text(observation)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end a reply (the tokenizer's EOS / end-of-turn)."""
        eos = self.tokenizer.eos_token_id
        return (eos,) if isinstance(eos, int) else tuple(eos or ())
