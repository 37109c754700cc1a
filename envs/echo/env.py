"""The echo environment: every message comes back, rewarded by its length.

It exists to test the protocol end to end (server, client, OpenEnv compatibility), so it is
as forgiving as OpenEnv's echo_env: ``step`` works without ``reset`` (OpenEnv's stateless
``POST /step`` relies on that) and episodes never end.
"""

from __future__ import annotations

import uuid
from typing import Any

from forge_env._exceptions import InvalidActionError
from forge_env.env import (
    AsyncEnv,
    EnvMetadata,
    ResetResult,
    StepResult,
    ToolSpec,
)

from envs.echo.models import EchoAction, EchoObservation, EchoState

__all__ = ["EchoEnv", "READY_MESSAGE", "REWARD_PER_CHAR"]

READY_MESSAGE = "Echo environment ready!"
#: Reward per character of the message (OpenEnv's echo_env uses the same rule).
REWARD_PER_CHAR = 0.1


class EchoEnv(AsyncEnv[EchoObservation, EchoAction]):
    """Echo each message back; reward ``0.1 * len(message)``; never done.

    ``reset(options=...)`` accepts any extra options and returns them in ``info`` under
    ``"reset_options"`` (useful to test that a transport forwards extra reset kwargs).
    It also offers one MCP tool, ``echo_message(message) -> message``.

    >>> env = EchoEnv().sync()
    >>> obs, info = env.reset()
    >>> obs.echoed_message
    'Echo environment ready!'
    >>> env.step(EchoAction(message="hello")).reward
    0.5
    """

    action_type = EchoAction
    observation_type = EchoObservation
    state_type = EchoState
    supports_concurrent_sessions = True
    metadata = EnvMetadata(
        name="echo",
        description="Echoes each message back; reward 0.1 per character. For protocol tests.",
        version="0.1.0",
    )

    def __init__(self) -> None:
        self._episode_id: str | None = None
        self._step_count = 0

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> ResetResult[EchoObservation]:
        options = dict(options or {})
        episode_id = options.pop("episode_id", None)
        self._episode_id = str(episode_id) if episode_id is not None else uuid.uuid4().hex
        self._step_count = 0
        info: dict[str, Any] = {"reset_options": options} if options else {}
        if seed is not None:
            info["seed"] = seed
        return ResetResult(EchoObservation(echoed_message=READY_MESSAGE, message_length=0), info)

    async def step(self, action: EchoAction | dict[str, Any]) -> StepResult[EchoObservation]:
        message = self.parse_action(action).message  # type: ignore[arg-type]
        self._step_count += 1
        observation = EchoObservation(echoed_message=message, message_length=len(message))
        reward = len(message) * REWARD_PER_CHAR
        return StepResult(observation, reward, False, False, {"step": self._step_count})

    async def state(self) -> EchoState:
        return EchoState(episode_id=self._episode_id, step_count=self._step_count)

    async def list_tools(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                name="echo_message",
                description="Echo a message back unchanged.",
                inputSchema={
                    "type": "object",
                    "properties": {"message": {"type": "string", "description": "The message"}},
                    "required": ["message"],
                    "additionalProperties": False,
                },
            )
        ]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        """``echo_message(message)`` returns ``message``; it does not count as a step."""
        if name != "echo_message":
            return await super().call_tool(name, arguments)
        if set(arguments) != {"message"} or not isinstance(arguments["message"], str):
            raise InvalidActionError(
                f"echo_message takes exactly one string argument 'message'; got {arguments!r}",
                env_name=self.name,
            )
        return arguments["message"]
