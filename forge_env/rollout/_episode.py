"""One multi-turn episode: agent, env and generator in a loop, exact tokens kept."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from forge_env._exceptions import InvalidActionError
from forge_env.generator._base import SamplingParams
from forge_env.rollout._trajectory import Task, TerminationReason, Trajectory, Turn

if TYPE_CHECKING:  # pragma: no cover
    from agents._base import Agent
    from forge_env.env import AsyncEnv
    from forge_env.generator._base import Generator

__all__ = ["RolloutConfig", "run_episode"]

current_episode: contextvars.ContextVar[str | None] = contextvars.ContextVar("forge_env_episode", default=None)
"""The key of the episode :func:`run_episode` is playing in this context (None outside one).
Generators that spread requests over replicas read it to keep an episode on one replica."""

_T = TypeVar("_T")

#: Keys of an env's final ``info`` that say whether the episode was a success, in order.
SUCCESS_INFO_KEYS = ("success", "won", "solved")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RolloutConfig:
    """Limits and sampling of one episode.

    >>> RolloutConfig(max_turns=4).sampling.max_tokens
    64
    """

    max_turns: int = 16
    """Model replies per episode; the episode ends as ``max_turns`` after that many."""
    sampling: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    step_timeout_s: float | None = 60.0
    """Deadline of one env call (reset or step); passing it ends the episode as ``step_deadline``."""
    generate_timeout_s: float | None = 300.0
    """Deadline of one generation (queueing included)."""
    episode_timeout_s: float | None = 900.0
    """Deadline of the whole episode (``episode_deadline``)."""

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}")
        for name in ("step_timeout_s", "generate_timeout_s", "episode_timeout_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")


class _StepDeadline(Exception):
    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} took longer than its {seconds:g} s deadline")


class _Failure(Exception):
    """An env or generator call failed; ``reason`` is the trajectory's termination."""

    def __init__(self, reason: TerminationReason, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.reason = reason


async def _within(
    awaitable: Awaitable[_T], seconds: float | None, what: str, *, fails_as: TerminationReason
) -> _T:
    """Await an env/generator call under its deadline; its errors become ``_Failure``.

    Exceptions of the env (any type: an in-process env may raise anything) and of the
    generator end the episode as counted failures. Errors in agent code are not wrapped:
    they are bugs and propagate.
    """
    try:
        if seconds is None:
            return await awaitable
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise _StepDeadline(what, seconds or 0.0) from None
    except InvalidActionError:
        raise
    except Exception as e:
        raise _Failure(fails_as, e) from e


async def run_episode(
    agent: Agent,
    env: AsyncEnv[Any, Any],
    generator: Generator,
    task: Task | None = None,
    *,
    config: RolloutConfig | None = None,
    group_index: int = 0,
) -> Trajectory:
    """Play one episode of ``env`` with ``agent`` sampling from ``generator``.

    Never raises for env, generator or model failures: the returned trajectory says how the
    episode ended (``termination``, ``error``) and keeps every turn played so far. A reply
    that is not a valid action (the agent cannot parse it, or the env rejects it with
    :class:`~forge_env.InvalidActionError`) becomes an error observation for the model;
    the episode goes on and the turn is counted in ``invalid_actions``.

    Example::

        trajectory = await run_episode(ChatAgent(tokenizer), env, generator, Task(seed=3))
        trajectory.token_ids, trajectory.loss_mask, trajectory.rewards
    """
    task = task or Task()
    config = config or RolloutConfig()
    traj = Trajectory(env_name=env.name, task=task, group_index=group_index)
    started = time.monotonic()
    # Every generate call of this episode (and of tasks it spawns) sees the same key: a
    # generator service routes them to one replica (sticky sessions keep its prefix cache warm).
    key_token = current_episode.set(f"{task.key}#{group_index}@{id(traj):x}")
    try:
        if config.episode_timeout_s is None:
            await _play(agent, env, generator, task, config, traj)
        else:
            async with asyncio.timeout(config.episode_timeout_s):
                await _play(agent, env, generator, task, config, traj)
    except TimeoutError:
        _fail(traj, "episode_deadline", f"the episode took longer than {config.episode_timeout_s:g} s")
    except _StepDeadline as e:
        _fail(traj, "step_deadline", str(e))
    except _Failure as e:
        _fail(traj, e.reason, str(e))
    except InvalidActionError as e:  # only reset can get here (step's are handled per turn)
        _fail(traj, "env_error", f"InvalidActionError: {e}")
    finally:
        current_episode.reset(key_token)
    traj.seconds = time.monotonic() - started
    traj.success = _success(traj)
    return traj


async def _play(
    agent: Agent,
    env: AsyncEnv[Any, Any],
    generator: Generator,
    task: Task,
    config: RolloutConfig,
    traj: Trajectory,
) -> None:
    reset = await _within(env.reset(seed=task.seed, options=dict(task.options) or None),
                          config.step_timeout_s, "env.reset", fails_as="env_error")
    # new_episode reads the env's schema/tools (over the wire for a remote env).
    episode = await _within(agent.new_episode(env), config.step_timeout_s, "reading the env's tools",
                            fails_as="env_error")
    traj.env_name = episode.env_name or env.name  # a RemoteEnv knows its name from /metadata
    prompt = episode.first_prompt(agent.observation_text(env, reset.observation))
    _extend(traj, prompt)
    traj.prompt_len = len(prompt)
    stop_ids = tuple(dict.fromkeys((*config.sampling.stop_token_ids, *agent.stop_token_ids)))
    limit = generator.max_model_len
    for index in range(config.max_turns):
        room = limit - len(traj.token_ids)
        if room < 1:
            traj.termination = "context_limit"
            traj.error = f"the conversation reached the generator's {limit}-token context"
            return
        params = dataclasses.replace(
            config.sampling, max_tokens=min(config.sampling.max_tokens, room), stop_token_ids=stop_ids
        )
        completion = await _within(generator.generate(list(traj.token_ids), params),
                                   config.generate_timeout_s, "generation", fails_as="generator_error")
        start = len(traj.token_ids)
        _extend(traj, completion.token_ids, completion.logprobs)
        ids = completion.token_ids
        turn = Turn(
            index=index,
            completion_start=start,
            completion_end=len(traj.token_ids),
            text=episode.decode(ids),
            finish_reason=completion.finish_reason,
            version=completion.version,
            generate_seconds=completion.seconds,
        )
        traj.turns.append(turn)
        done = False
        try:
            turn.action = episode.parse_action(ids)
        except ValueError as e:  # agents' ActionParseError (a ValueError): no action in the reply
            turn.error = str(e)
            observation_text = f"Error: {e}"
        else:
            env_started = time.monotonic()
            try:
                result = await _within(env.step(turn.action), config.step_timeout_s, "env.step",
                                       fails_as="env_error")
            except InvalidActionError as e:
                turn.error = e.message if hasattr(e, "message") else str(e)
                observation_text = f"Error: {turn.error}"
            else:
                turn.reward = float(result.reward)
                observation_text = agent.observation_text(env, result.observation)
                # Envs that answer a bad action with an observation (guess_number's
                # "invalid" feedback) say so in an ``error`` field: count it too.
                env_error = getattr(result.observation, "error", None)
                if isinstance(env_error, str) and env_error:
                    turn.error = env_error
                traj.info = dict(result.info or {})
                if result.terminated or result.truncated:
                    traj.termination = "terminated" if result.terminated else "truncated"
                    done = True
            turn.env_seconds = time.monotonic() - env_started
        turn.observation_text = observation_text
        if done:
            return
        if index + 1 == config.max_turns:
            break
        _extend(traj, episode.next_prompt(ids, completion.finish_reason, observation_text))
    traj.termination = "max_turns"


def _extend(traj: Trajectory, ids: list[int], logprobs: list[float] | None = None) -> None:
    traj.token_ids.extend(ids)
    if logprobs is None:
        traj.logprobs.extend([0.0] * len(ids))
        traj.loss_mask.extend([0] * len(ids))
    else:
        traj.logprobs.extend(logprobs)
        traj.loss_mask.extend([1] * len(ids))


def _fail(traj: Trajectory, reason: TerminationReason, error: str) -> None:
    traj.termination = reason
    traj.error = error


def _success(traj: Trajectory) -> bool:
    for key in SUCCESS_INFO_KEYS:
        if key in traj.info:
            return bool(traj.info[key])
    return traj.termination == "terminated" and traj.total_reward > 0
