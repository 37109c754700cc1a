"""The environment interface: one small async, gymnasium-shaped contract.

Everything else in forge-env adapts to :class:`AsyncEnv`: the server serves it over the
OpenEnv wire, :class:`~forge_env.RemoteEnv` implements it over that wire, the gymnasium
adapters convert it both ways, and rollouts step it.

This module must import without torch, numpy or gymnasium: env containers install only
pydantic/fastapi/uvicorn/websockets. gymnasium spaces are used only when an env declares them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from forge_env._exceptions import InvalidActionError

if TYPE_CHECKING:  # pragma: no cover
    import gymnasium

__all__ = [
    "Action",
    "Observation",
    "AnyObservation",
    "AnyAction",
    "State",
    "EnvMetadata",
    "ToolSpec",
    "StepResult",
    "ResetResult",
    "AsyncEnv",
    "SyncEnv",
]


class Action(BaseModel):
    """Base class of typed actions. Unknown fields are rejected.

    >>> class Guess(Action):
    ...     guess: int
    >>> Guess.model_validate({"guess": 3}).guess
    3
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Observation(BaseModel):
    """Base class of typed observations: what the agent sees.

    Reward, termination and info travel beside the observation (in :class:`StepResult`),
    not inside it, as in gymnasium.

    >>> class Text(Observation):
    ...     text: str
    >>> Text(text="hello").model_dump()
    {'text': 'hello'}
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AnyObservation(Observation):
    """An observation of unknown shape (e.g. from a remote server): any fields, as attributes.

    >>> AnyObservation.model_validate({"text": "hi", "turn": 1}).text
    'hi'
    """

    model_config = ConfigDict(extra="allow")


class AnyAction(Action):
    """An action of unknown shape: any fields, sent as given."""

    model_config = ConfigDict(extra="allow")


class State(BaseModel):
    """Episode bookkeeping served at ``GET /state`` and the WS ``state`` message.

    Extra fields are allowed so an env can expose more (never the hidden answer, unless
    it is meant for debugging).
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    episode_id: str | None = Field(default=None, description="Identifier of the current episode")
    step_count: int = Field(default=0, ge=0, description="Steps taken in the current episode")


class EnvMetadata(BaseModel):
    """Served at ``GET /metadata`` (OpenEnv's EnvironmentMetadata shape)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    readme_content: str | None = None
    version: str | None = None
    author: str | None = None
    documentation_url: str | None = None


class ToolSpec(BaseModel):
    """A tool the env offers through MCP ``tools/list`` (JSON-RPC) — MCP's Tool shape."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        alias="inputSchema",
        serialization_alias="inputSchema",
    )


ObsT = TypeVar("ObsT", bound=Observation)
ActT = TypeVar("ActT", bound=Action)


class StepResult(NamedTuple, Generic[ObsT]):
    """What :meth:`AsyncEnv.step` returns; unpacks like gymnasium's 5-tuple.

    >>> r = StepResult(observation=None, reward=1.0, terminated=True, truncated=False, info={})
    >>> obs, reward, terminated, truncated, info = r
    >>> r.done
    True
    """

    observation: ObsT
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]

    @property
    def done(self) -> bool:
        """True when the episode is over for either reason (OpenEnv's ``done``)."""
        return bool(self.terminated or self.truncated)


class ResetResult(NamedTuple, Generic[ObsT]):
    """What :meth:`AsyncEnv.reset` returns; unpacks like gymnasium's ``(obs, info)``."""

    observation: ObsT
    info: dict[str, Any]


class AsyncEnv(Generic[ObsT, ActT]):
    """An environment with gymnasium's contract, made async.

    Subclasses set the three types and implement :meth:`reset` and :meth:`step`::

        class Counter(AsyncEnv[CountObs, Inc]):
            action_type = Inc
            observation_type = CountObs

            async def reset(self, *, seed=None, options=None):
                self.n = 0
                return ResetResult(CountObs(n=0), {})

            async def step(self, action):
                self.n += action.by
                return StepResult(CountObs(n=self.n), 0.0, self.n >= 3, False, {})

    Conventions:

    - ``reset(*, seed=None, options=None)`` is keyword-only; the same seed reproduces the
      same episode exactly. ``options`` carries extra reset parameters (on the OpenEnv wire
      they are the extra keys of the ``reset`` frame, e.g. ``episode_id``).
    - ``step(action)`` takes an instance of ``action_type`` (a dict is validated into one by
      :meth:`parse_action`). ``terminated`` and ``truncated`` are separate, as in gymnasium.
    - A bad action must not crash the env: return an error observation (and usually a
      zero reward) or raise :class:`~forge_env.InvalidActionError`; both keep the session
      usable.
    - Blocking work belongs in ``await asyncio.to_thread(...)`` so one env cannot stall a
      server holding hundreds of sessions.
    - ``close()`` is idempotent; envs holding resources support ``async with``.

    Class attributes:
        action_type: pydantic model of actions (served as the ``action`` JSON schema).
        observation_type: pydantic model of observations.
        state_type: pydantic model returned by :meth:`state`.
        action_space / observation_space: optional gymnasium spaces, used by
            :func:`~forge_env.to_gymnasium` together with :meth:`action_from_space`
            and :meth:`observation_to_space`.
        supports_concurrent_sessions: instances share no mutable state, so a server may
            hold many of them at once (one per session). Claim it only when true.
        metadata: name/description served at ``GET /metadata``.
    """

    action_type: ClassVar[type[Action]] = Action
    observation_type: ClassVar[type[Observation]] = Observation
    state_type: ClassVar[type[State]] = State
    action_space: "gymnasium.Space[Any] | None" = None
    observation_space: "gymnasium.Space[Any] | None" = None
    supports_concurrent_sessions: ClassVar[bool] = True
    metadata: ClassVar[EnvMetadata | None] = None

    # --- the contract -------------------------------------------------------------------

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> ResetResult[ObsT]:
        """Start a new episode. Returns ``(observation, info)``."""
        raise NotImplementedError

    async def step(self, action: ActT) -> StepResult[ObsT]:
        """Apply one action. Returns ``(observation, reward, terminated, truncated, info)``."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release resources. Idempotent. The default does nothing."""

    async def state(self) -> State:
        """Episode bookkeeping (episode id, step count, ...). The default is an empty State.

        Async because a remote env answers it over the wire; local envs just return."""
        return self.state_type()

    # --- tools (MCP) --------------------------------------------------------------------

    async def list_tools(self) -> list[ToolSpec]:
        """Tools offered through MCP ``tools/list``. The default env offers none."""
        return []

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        """Run a tool for MCP ``tools/call``; returns a JSON-serialisable result."""
        raise NotImplementedError(f"{type(self).__name__} offers no tool named {name!r}")

    # --- helpers shared by every adapter -------------------------------------------------

    def parse_action(self, action: ActT | dict[str, Any]) -> ActT:
        """Validate a dict (e.g. a wire payload) into ``action_type``; pass models through.

        Raises:
            InvalidActionError: with pydantic's error list, when validation fails.
        """
        if isinstance(action, self.action_type):
            return action  # type: ignore[return-value]
        if isinstance(action, BaseModel):
            action = action.model_dump()
        try:
            return self.action_type.model_validate(action)  # type: ignore[return-value]
        except ValidationError as e:
            raise InvalidActionError(
                f"invalid action for {self.name}: {_summarise_validation(e)}; "
                f"expected fields of {self.action_type.__name__}: "
                f"{sorted(self.action_type.model_fields)}",
                errors=[dict(d) for d in e.errors(include_url=False, include_context=False)],
                env_name=self.name,
            ) from e

    def action_from_space(self, sample: Any) -> ActT:
        """Map an element of ``action_space`` to an action (for :func:`to_gymnasium`).

        The default accepts a dict (``spaces.Dict``) or a JSON string (``spaces.Text``).
        """
        if isinstance(sample, str):
            import json

            try:
                sample = json.loads(sample)
            except ValueError:
                pass
        return self.parse_action(sample)

    def observation_to_space(self, observation: ObsT) -> Any:
        """Map an observation to an element of ``observation_space`` (for :func:`to_gymnasium`).

        The default is the observation as a JSON string (fits ``spaces.Text``).
        """
        return observation.model_dump_json()

    def render_text(self, observation: ObsT) -> str:
        """A human-readable view of an observation (used by ``forge-env play`` and agents)."""
        data = observation.model_dump()
        for key in ("text", "message", "prompt", "echoed_message"):
            if isinstance(data.get(key), str):
                return data[key]
        return observation.model_dump_json(indent=2)

    @property
    def name(self) -> str:
        meta = self.metadata
        return meta.name if meta is not None else type(self).__name__

    @property
    def unwrapped(self) -> "AsyncEnv[Any, Any]":
        """The innermost env under any wrappers."""
        return self

    def sync(self) -> "SyncEnv[ObsT, ActT]":
        """A blocking view of this env (runs its coroutines on a private event loop)."""
        return SyncEnv(self)

    async def __aenter__(self) -> "AsyncEnv[ObsT, ActT]":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __enter__(self) -> None:
        raise TypeError(
            f"{type(self).__name__} is async: use `async with env:`, "
            "or `with env.sync() as env:` for blocking code"
        )

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ always raises
        pass

    def __str__(self) -> str:
        return f"<{type(self).__name__}>"


class SyncEnv(Generic[ObsT, ActT]):
    """Blocking wrapper around an :class:`AsyncEnv`, for scripts and notebooks without a loop.

    >>> # with RemoteEnv("http://127.0.0.1:8000").sync() as env:
    >>> #     obs, info = env.reset(seed=1)
    """

    def __init__(self, env: AsyncEnv[ObsT, ActT]) -> None:
        self.env = env
        self._loop = asyncio.new_event_loop()

    def _run(self, coro: Any) -> Any:
        if self._loop.is_closed():
            coro.close()  # never awaited: close it so Python does not warn about it
            raise RuntimeError("this SyncEnv is closed; create a new one with env.sync()")
        return self._loop.run_until_complete(coro)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        return self._run(self.env.reset(seed=seed, options=options))

    def step(self, action: ActT | dict[str, Any]) -> StepResult[ObsT]:
        """Step with an action model or a plain dict (validated by ``env.parse_action``)."""
        return self._run(self.env.step(self.env.parse_action(action)))

    def state(self) -> State:
        return self._run(self.env.state())

    def list_tools(self) -> list[ToolSpec]:
        return self._run(self.env.list_tools())

    def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        return self._run(self.env.call_tool(name, arguments))

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self.env.close())
            self._loop.close()

    def __enter__(self) -> "SyncEnv[ObsT, ActT]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summarise_validation(error: Any) -> str:
    parts = []
    for item in error.errors()[:5]:
        loc = ".".join(str(p) for p in item.get("loc", ())) or "(root)"
        parts.append(f"{loc}: {item.get('msg')}")
    return "; ".join(parts)
