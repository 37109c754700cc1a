"""Adapters between :class:`~forge_env.AsyncEnv` and ``gymnasium.Env``, in both directions.

- :func:`to_gymnasium` wraps an AsyncEnv as a real ``gymnasium.Env`` (blocking calls on a
  private event loop), so gymnasium tools — ``check_env``, wrappers, classic RL code — work
  on forge-env environments.
- :func:`from_gymnasium` wraps any ``gymnasium.Env`` with a ``Discrete`` action space as an
  AsyncEnv with text observations and named actions, so an LLM agent can play it and a
  forge-env server can serve it over the OpenEnv wire.

The two round-trip: ``to_gymnasium(from_gymnasium("FrozenLake-v1"))`` has FrozenLake's spaces
and passes ``gymnasium.utils.env_checker.check_env``.

This module imports gymnasium (and so numpy); ``forge_env.env`` imports it lazily.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import string
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar, Literal

import gymnasium
import numpy as np
from gymnasium import spaces
from pydantic import Field, StrictInt, StrictStr

from forge_env._exceptions import EpisodeNotStartedError
from forge_env._wire import jsonable
from forge_env.env._core import (
    Action,
    AsyncEnv,
    EnvMetadata,
    Observation,
    ResetResult,
    State,
    StepResult,
)

__all__ = [
    "AsyncEnvAsGymnasium",
    "GymAction",
    "GymObservation",
    "GymnasiumEnv",
    "TEXT_SPACE_CHARSET",
    "from_gymnasium",
    "to_gymnasium",
]

#: Characters allowed in the default ``spaces.Text`` of :func:`to_gymnasium`: printable ASCII.
#: Observations are JSON-encoded with ``ensure_ascii=True``, so any text fits.
TEXT_SPACE_CHARSET = string.printable
_DEFAULT_TEXT_MAX_LENGTH = 65_536


# =========================================================================================
# AsyncEnv -> gymnasium.Env
# =========================================================================================


class AsyncEnvAsGymnasium(gymnasium.Env):  # type: ignore[type-arg]
    """A ``gymnasium.Env`` that drives an :class:`AsyncEnv` on a private event loop.

    Build it with :func:`to_gymnasium`. Spaces come from ``env.action_space`` /
    ``env.observation_space``; actions go through ``env.action_from_space`` and
    observations through ``env.observation_to_space``. An env without spaces gets
    ``spaces.Text`` for both, JSON-encoded (see :func:`to_gymnasium`).

    Attributes:
        async_env: the wrapped AsyncEnv.
        last_observation: the last typed observation (for rendering and debugging).
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(self, env: AsyncEnv[Any, Any], *, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported; "
                f"choose one of {self.metadata['render_modes']} or None"
            )
        self.async_env = env
        self.render_mode = render_mode
        self._declares_observation_space = env.observation_space is not None
        text = spaces.Text(
            max_length=_DEFAULT_TEXT_MAX_LENGTH, min_length=0, charset=TEXT_SPACE_CHARSET
        )
        self.action_space = env.action_space if env.action_space is not None else text
        self.observation_space = (
            env.observation_space if env.observation_space is not None else text
        )
        self.last_observation: Observation | None = None
        self._loop: asyncio.AbstractEventLoop | None = asyncio.new_event_loop()

    # --- gymnasium API ---------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset the wrapped env; returns ``(observation in observation_space, info)``."""
        super().reset(seed=seed)  # seeds self.np_random, as gymnasium expects
        observation, info = self._run(self.async_env.reset(seed=seed, options=options))
        self.last_observation = observation
        return self._to_space(observation), dict(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Step the wrapped env with an element of ``action_space``."""
        typed = self.async_env.action_from_space(action)
        observation, reward, terminated, truncated, info = self._run(self.async_env.step(typed))
        self.last_observation = observation
        if self.render_mode == "human":
            print(self.async_env.render_text(observation))
        return self._to_space(observation), float(reward), bool(terminated), bool(truncated), dict(info)

    def render(self) -> str | None:  # type: ignore[override]
        """``"ansi"``: the env's text view of the last observation; ``"human"``: printed."""
        if self.render_mode is None or self.last_observation is None:
            return None
        text = self.async_env.render_text(self.last_observation)
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        """Close the wrapped env and the private loop. Idempotent."""
        if self._loop is None:
            return
        try:
            self._run(self.async_env.close())
        finally:
            self._loop.close()
            self._loop = None

    # --- helpers ---------------------------------------------------------------------------

    def _to_space(self, observation: Observation) -> Any:
        if self._declares_observation_space:
            return self.async_env.observation_to_space(observation)
        # ASCII JSON always fits the printable charset of the default Text space.
        return json.dumps(
            jsonable(observation.model_dump(mode="json")), ensure_ascii=True, separators=(",", ":")
        )

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "to_gymnasium() env called inside a running event loop: a blocking gymnasium "
                "call would deadlock it. Inside async code use the AsyncEnv directly "
                "(`await env.reset(...)`, `await env.step(...)`)."
            )
        if self._loop is None:
            coro.close()
            raise RuntimeError("this gymnasium env is closed; wrap the AsyncEnv again with to_gymnasium()")
        return self._loop.run_until_complete(coro)

    def __str__(self) -> str:
        return f"<AsyncEnvAsGymnasium{self.async_env}>"


def to_gymnasium(env: AsyncEnv[Any, Any], *, render_mode: str | None = None) -> AsyncEnvAsGymnasium:
    """Wrap an :class:`AsyncEnv` as a blocking ``gymnasium.Env``.

    The gymnasium env runs the AsyncEnv's coroutines on its own event loop, so call it from
    plain (non-async) code; calling it while an event loop is running raises a
    ``RuntimeError`` that points to the async API.

    Spaces: an env that declares ``action_space`` and ``observation_space`` keeps them, with
    ``env.action_from_space`` / ``env.observation_to_space`` converting values; such envs
    pass ``gymnasium.utils.env_checker.check_env`` when their spaces are honest. An env that
    declares none gets ``spaces.Text`` for both: actions are JSON strings
    (``'{"guess": 7}'``) and observations the observation's JSON (ASCII). ``check_env``
    may not apply then (it samples random strings as actions).

    Invalid actions behave as the env defines: envs that answer with an error observation
    (every built-in env) do so here too; envs that raise ``InvalidActionError`` raise.

    >>> from envs.guess_number import GuessNumberEnv
    >>> env = to_gymnasium(GuessNumberEnv(lo=1, hi=16))
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(8)
    >>> env.close()

    Args:
        env: the environment to wrap.
        render_mode: ``None``, ``"ansi"`` (``render()`` returns ``env.render_text`` of the
            last observation) or ``"human"`` (prints it after every step).
    """
    return AsyncEnvAsGymnasium(env, render_mode=render_mode)


# =========================================================================================
# gymnasium.Env -> AsyncEnv
# =========================================================================================


class GymAction(Action):
    """One action of a wrapped gymnasium env: its number or its name.

    >>> GymAction(action="left").action
    'left'
    """

    action: StrictInt | StrictStr = Field(
        description="Action number (e.g. 2) or name (e.g. 'right'); see legal_actions"
    )


class GymObservation(Observation):
    """Text view of a gymnasium observation, for language-model agents.

    >>> GymObservation(text="SFFF", legal_actions=["left"], raw=0).raw
    0
    """

    text: str = Field(description="Readable view of the state (ANSI render and/or description)")
    legal_actions: list[str] = Field(description="Action names accepted by step")
    raw: Any = Field(default=None, description="The gymnasium observation as JSON")
    error: str | None = Field(default=None, description="Why the last action was refused")


RenderChoice = Literal["auto", "ansi", "repr"]

# Action names of gymnasium's classic envs, keyed by the unwrapped class name (this also
# covers instances made without gymnasium.make, which have no spec).
_KNOWN_ACTION_NAMES: dict[str, tuple[str, ...]] = {
    "FrozenLakeEnv": ("left", "down", "right", "up"),
    "CliffWalkingEnv": ("up", "right", "down", "left"),
    "TaxiEnv": ("south", "north", "east", "west", "pickup", "dropoff"),
    "BlackjackEnv": ("stick", "hit"),
    "CartPoleEnv": ("left", "right"),
    "MountainCarEnv": ("left", "none", "right"),
}

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# gymnasium's toy-text renders put the last move on its own line as "  (Down)".
_LAST_MOVE = re.compile(r"^\s*\((\w[\w ]*)\)\s*$", re.MULTILINE)


def _clean_ansi(rendered: str) -> str:
    """An ANSI render as plain text: colour codes removed, the last-move line spelled out."""
    text = _ANSI_ESCAPE.sub("", rendered)
    text = _LAST_MOVE.sub(lambda m: f"Last move: {m.group(1).lower()}.", text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _grid_position(ncol_of: Callable[[Any], int], gym_env: gymnasium.Env[Any, Any], obs: Any) -> str:
    row, col = divmod(int(obs), ncol_of(gym_env.unwrapped))
    return f"You are at row {row}, column {col} (counting from 0, row 0 at the top)."


def _describe_taxi(gym_env: gymnasium.Env[Any, Any], obs: Any) -> str:
    taxi = gym_env.unwrapped
    row, col, passenger, destination = taxi.decode(int(obs))  # type: ignore[attr-defined]
    names = "RGYB"
    where = "in the taxi" if passenger == 4 else f"waiting at {names[passenger]}"
    return (
        f"Taxi at row {row}, column {col}. Passenger {where}. "
        f"Destination: {names[destination]}."
    )


def _describe_blackjack(gym_env: gymnasium.Env[Any, Any], obs: Any) -> str:
    player, dealer, usable_ace = (int(x) for x in obs)
    dealer_card = "an ace" if dealer == 1 else str(dealer)
    ace = " (with a usable ace)" if usable_ace else ""
    return f"Your hand totals {player}{ace}. The dealer shows {dealer_card}."


_KNOWN_DESCRIBERS: dict[str, Callable[[gymnasium.Env[Any, Any], Any], str]] = {
    "FrozenLakeEnv": functools.partial(_grid_position, lambda e: int(e.ncol)),
    "CliffWalkingEnv": functools.partial(_grid_position, lambda e: int(e.shape[1])),
    "TaxiEnv": _describe_taxi,
    "BlackjackEnv": _describe_blackjack,
}


class GymnasiumEnv(AsyncEnv[Observation, Action]):
    """An :class:`AsyncEnv` playing a ``gymnasium.Env`` through text. Build it with
    :func:`from_gymnasium`.

    Observations are ``observation_type(text=..., legal_actions=..., raw=..., error=...)``
    (:class:`GymObservation` by default; a subclass may set its own models with the same
    fields, as ``envs.frozen_lake`` does). Actions carry one field ``action``: a number or a
    name. Reward, terminated, truncated and info pass through from gymnasium (info made
    JSON-safe). An illegal action (unknown name, out of range) leaves the gym env untouched
    and returns an error observation with reward 0.

    The spaces are the gym env's, so :func:`to_gymnasium` gives back an equivalent env.
    """

    action_type: ClassVar[type[Action]] = GymAction
    observation_type: ClassVar[type[Observation]] = GymObservation
    supports_concurrent_sessions = True  # each instance owns its gymnasium env

    def __init__(
        self,
        gym_env: gymnasium.Env[Any, Any],
        *,
        name: str | None = None,
        description: str | None = None,
        action_names: Sequence[str] | None = None,
        describe: Callable[[Any], str] | None = None,
        render: RenderChoice = "auto",
        run_in_thread: bool = False,
    ) -> None:
        if not isinstance(gym_env.action_space, spaces.Discrete):
            raise TypeError(
                f"from_gymnasium supports Discrete action spaces (text agents pick among "
                f"named actions); got {gym_env.action_space}. Discretise it first with a "
                f"gymnasium ActionWrapper."
            )
        if render not in ("auto", "ansi", "repr"):
            raise ValueError(f"render={render!r}: choose 'auto', 'ansi' or 'repr'")
        if render == "ansi" and gym_env.render_mode != "ansi":
            raise ValueError(
                f"render='ansi' but the gymnasium env renders {gym_env.render_mode!r}; create "
                f"it with render_mode='ansi' (or pass an env id) or use render='repr'"
            )
        self.gym_env = gym_env
        self._use_ansi = render != "repr" and gym_env.render_mode == "ansi"
        discrete: spaces.Discrete = gym_env.action_space
        self._start = int(discrete.start)
        self._n = int(discrete.n)
        class_name = type(gym_env.unwrapped).__name__
        names = tuple(action_names) if action_names is not None else _KNOWN_ACTION_NAMES.get(class_name)
        if names is None:
            names = tuple(str(self._start + i) for i in range(self._n))
        if len(names) != self._n or len(set(n.lower() for n in names)) != self._n:
            raise ValueError(
                f"action_names must be {self._n} distinct names (one per action of "
                f"{gym_env.action_space}); got {list(names)}"
            )
        self.action_names: tuple[str, ...] = names
        if describe is not None:
            self._describe: Callable[[Any], str] | None = describe
        elif class_name in _KNOWN_DESCRIBERS:
            self._describe = functools.partial(_KNOWN_DESCRIBERS[class_name], gym_env)
        else:
            self._describe = None
        spec_id = gym_env.spec.id if gym_env.spec is not None else class_name
        if type(self).metadata is None or name is not None or description is not None:
            # Generic wrappers are named per instance; subclasses set a class-level metadata.
            self.metadata = EnvMetadata(  # type: ignore[misc]
                name=name or spec_id,
                description=description or f"gymnasium {spec_id} played through text",
            )
        self.action_space = gym_env.action_space
        self.observation_space = gym_env.observation_space
        self._run_in_thread = run_in_thread
        self._raw: Any = None
        self._started = False
        self._done = False
        self._episode_id: str | None = None
        self._step_count = 0

    # --- the contract ----------------------------------------------------------------------

    async def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> ResetResult[Observation]:
        """Reset the gymnasium env with ``seed``; ``options`` (minus ``episode_id``) pass on."""
        options = dict(options or {})
        episode_id = options.pop("episode_id", None)
        raw, info = await self._call(self.gym_env.reset, seed=seed, options=options or None)
        self._raw = raw
        self._started, self._done = True, False
        self._episode_id = str(episode_id) if episode_id is not None else uuid.uuid4().hex
        self._step_count = 0
        return ResetResult(self._observation(), jsonable(dict(info)))

    async def step(self, action: Action | dict[str, Any]) -> StepResult[Observation]:
        """Apply one action (number or name); an illegal one returns an error observation."""
        if not self._started:
            raise EpisodeNotStartedError(
                "step() before reset(): call reset() first", env_name=self.name
            )
        if self._done:
            raise EpisodeNotStartedError(
                "the episode is over (terminated or truncated): call reset() to start a new one",
                env_name=self.name,
            )
        parsed = self.parse_action(action)  # type: ignore[arg-type]
        self._step_count += 1
        value, problem = self._resolve(getattr(parsed, "action"))
        if problem is not None:
            return StepResult(self._observation(error=problem), 0.0, False, False, {"invalid_action": True})
        raw, reward, terminated, truncated, info = await self._call(self.gym_env.step, value)
        self._raw = raw
        self._done = bool(terminated or truncated)
        return StepResult(
            self._observation(), float(reward), bool(terminated), bool(truncated), jsonable(dict(info))
        )

    async def close(self) -> None:
        """Close the gymnasium env. Idempotent."""
        self.gym_env.close()

    async def state(self) -> State:
        return self.state_type(episode_id=self._episode_id, step_count=self._step_count)

    # --- conversions -------------------------------------------------------------------------

    def action_from_space(self, sample: Any) -> Action:
        """An element of the Discrete action space (e.g. ``np.int64(2)``) as an action."""
        if isinstance(sample, (int, np.integer)) and not isinstance(sample, bool):
            return self.action_type.model_validate({"action": int(sample)})
        return super().action_from_space(sample)

    def observation_to_space(self, observation: Observation) -> Any:
        """The gymnasium observation again (from the observation's ``raw`` JSON)."""
        return _from_json(self.gym_env.observation_space, getattr(observation, "raw"))

    # --- internals ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._run_in_thread:
            return await asyncio.to_thread(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def _resolve(self, action: int | str) -> tuple[int, str | None]:
        """Map a number or name to the gym action; the second item explains a refusal."""
        legal = ", ".join(self.action_names)
        if isinstance(action, str):
            key = action.strip().lower()
            for i, name in enumerate(self.action_names):
                if name.lower() == key:
                    return self._start + i, None
            try:
                action = int(key)
            except ValueError:
                return 0, f"unknown action {action!r}; legal actions: {legal}"
        if not self._start <= action < self._start + self._n:
            return 0, (
                f"action {action} is out of range {self._start}..{self._start + self._n - 1}; "
                f"legal actions: {legal}"
            )
        return action, None

    def _observation(self, error: str | None = None) -> Observation:
        parts: list[str] = []
        if error is not None:
            parts.append(f"Invalid action: {error}.")
        if self._use_ansi:
            rendered = self.gym_env.render()
            if isinstance(rendered, str):
                parts.append(_clean_ansi(rendered))
        if self._describe is not None:
            parts.append(self._describe(self._raw))
        elif not self._use_ansi:
            parts.append(f"Observation: {json.dumps(jsonable(self._raw))}")
        parts.append(f"Legal actions: {', '.join(self.action_names)}.")
        return self.observation_type.model_validate(
            {
                "text": "\n".join(parts),
                "legal_actions": list(self.action_names),
                "raw": jsonable(self._raw),
                "error": error,
            }
        )

    def __str__(self) -> str:
        return f"<{type(self).__name__}{self.gym_env}>"


def _from_json(space: spaces.Space[Any], value: Any) -> Any:
    """Rebuild an element of ``space`` from its JSON form (the inverse of ``jsonable``)."""
    if isinstance(space, spaces.Discrete):
        return np.int64(value)
    if isinstance(space, (spaces.Box, spaces.MultiDiscrete, spaces.MultiBinary)):
        return np.asarray(value, dtype=space.dtype)
    if isinstance(space, spaces.Tuple):
        return tuple(_from_json(sub, v) for sub, v in zip(space.spaces, value, strict=True))
    if isinstance(space, spaces.Dict):
        return {key: _from_json(sub, value[key]) for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Text):
        return str(value)
    return space.from_jsonable([value])[0]


def _declared_render_modes(env_id: str) -> list[str]:
    """Render modes an env id declares, read from its class without building it."""
    from gymnasium.envs.registration import load_env_creator

    entry_point = gymnasium.spec(env_id).entry_point
    creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    return list(getattr(creator, "metadata", {}).get("render_modes", []))


def from_gymnasium(
    gym_env: Any,
    *,
    render: RenderChoice = "auto",
    name: str | None = None,
    description: str | None = None,
    action_names: Sequence[str] | None = None,
    describe: Callable[[Any], str] | None = None,
    run_in_thread: bool = False,
    **make_kwargs: Any,
) -> GymnasiumEnv:
    """Wrap a gymnasium env (Discrete actions) as an :class:`AsyncEnv` with text observations.

    Observations are :class:`GymObservation`: ``text`` (the ANSI render with colour codes
    stripped when the env renders ``"ansi"``, plus a one-line description for gymnasium's
    toy-text envs, else ``Observation: <json>``), ``legal_actions``, ``raw`` (the gym
    observation as JSON) and ``error``. Actions are ``{"action": 2}`` or
    ``{"action": "right"}``; names are known for FrozenLake (left/down/right/up),
    CliffWalking, Taxi (south/north/east/west/pickup/dropoff), Blackjack (stick/hit),
    CartPole and MountainCar, else pass ``action_names``. An illegal action returns an
    error observation (reward 0, gym env untouched). ``reset(seed=s)`` reproduces an episode.

    gymnasium calls run inline: they are microseconds for toy envs. For an env whose step is
    heavy, pass ``run_in_thread=True`` so each call runs in ``asyncio.to_thread`` and does
    not block the event loop (and a server's other sessions).

    >>> env = from_gymnasium("FrozenLake-v1", is_slippery=False)
    >>> obs, info = env.sync().reset(seed=0)
    >>> obs.legal_actions
    ['left', 'down', 'right', 'up']

    Args:
        gym_env: a ``gymnasium.Env`` instance (the AsyncEnv owns and closes it), a registered
            env id such as ``"FrozenLake-v1"`` (built with ``gymnasium.make(id, **make_kwargs)``,
            with ``render_mode="ansi"`` when the env supports it and ``render`` allows), or a
            callable returning an env (called with ``**make_kwargs``).
        render: ``"auto"`` uses the ANSI render when available, ``"ansi"`` requires it,
            ``"repr"`` never uses it.
        name: the AsyncEnv's name (``metadata.name``); default: the env id.
        description: ``metadata.description``.
        action_names: one distinct name per action, in action order.
        describe: ``raw_observation -> str`` for the text, replacing the built-in description.
        run_in_thread: run gymnasium's reset/step in a worker thread.
        **make_kwargs: keyword arguments for ``gymnasium.make`` or the callable.
    """
    if isinstance(gym_env, str):
        if render != "repr" and "render_mode" not in make_kwargs:
            if "ansi" in _declared_render_modes(gym_env):
                make_kwargs["render_mode"] = "ansi"
        env = gymnasium.make(gym_env, **make_kwargs)
    elif isinstance(gym_env, gymnasium.Env):
        if make_kwargs:
            raise TypeError(
                f"keyword arguments {sorted(make_kwargs)} apply only when gym_env is an id or "
                "a callable; configure the instance before passing it"
            )
        env = gym_env
    elif callable(gym_env):
        env = gym_env(**make_kwargs)
        if not isinstance(env, gymnasium.Env):
            raise TypeError(f"the env creator returned {type(env).__name__}, not a gymnasium.Env")
    else:
        raise TypeError(
            f"from_gymnasium needs a gymnasium.Env, an env id or a creator callable; "
            f"got {type(gym_env).__name__}"
        )
    return GymnasiumEnv(
        env,
        name=name,
        description=description,
        action_names=action_names,
        describe=describe,
        render=render,
        run_in_thread=run_in_thread,
    )
