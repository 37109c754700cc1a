"""Demonstrations: episodes played by a scripted policy, tokenized exactly as an agent would.

A demonstration is a :class:`~forge_env.rollout.Trajectory` like the ones
:func:`~forge_env.rollout.run_episode` returns, except that each reply is written by a
scripted policy instead of sampled: ``reply_ids = tokenizer(render(action)) + [eos]``,
``loss_mask`` 1 exactly on the reply ids, ``logprobs`` 0. The prompts between replies come
from the agent's own :class:`~agents.AgentEpisode` (``first_prompt`` / ``next_prompt``), so
a model trained on them sees the very token sequences it will later generate in.

Demo policies are registered per env in :data:`DEMO_POLICIES`; add one to support another env.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

from forge_env.env import AsyncEnv
from forge_env.rollout import Task, Trajectory, Turn

from agents._base import Agent

__all__ = [
    "DEMO_POLICIES",
    "DemoPolicy",
    "ReplyRenderer",
    "bare_value",
    "demo_policy",
    "demonstration",
    "guess_number_policy",
]

DemoPolicy = Callable[[Any, random.Random, float], dict[str, Any]]
"""``policy(observation, rng, expert_prob) -> action``: the expert's action with probability
``expert_prob``, else a plausible (legal, not optimal) one, so the model sees recoveries too."""

ReplyRenderer = Callable[[dict[str, Any]], str]
"""``render(action) -> reply text`` that the agent's parser turns back into ``action``."""


def bare_value(action: dict[str, Any]) -> str:
    """The reply :class:`~agents.ChatAgent` parses for a one-field action: the bare value.

    >>> bare_value({"guess": 8}), bare_value({"a": 1, "b": 2})
    ('8', '{"a":1,"b":2}')
    """
    if len(action) == 1:
        value = next(iter(action.values()))
        return value if isinstance(value, str) else json.dumps(value)
    return json.dumps(action, separators=(",", ":"))


def guess_number_policy(observation: Any, rng: random.Random, expert_prob: float) -> dict[str, Any]:
    """Binary search (:func:`envs.guess_number.solve`) with probability ``expert_prob``, else a
    uniform guess in the interval still possible ``[lo, hi]``.

    >>> guess_number_policy({"lo": 1, "hi": 16}, random.Random(0), 1.0)
    {'guess': 8}
    """
    from envs.guess_number import solve

    data = observation.model_dump() if hasattr(observation, "model_dump") else dict(observation)
    if rng.random() < expert_prob:
        return {"guess": solve(data).guess}
    return {"guess": rng.randint(int(data["lo"]), int(data["hi"]))}


DEMO_POLICIES: dict[str, DemoPolicy] = {"guess_number": guess_number_policy}
"""Env name -> demo policy. Register an env's scripted policy here to warm-start on it."""


def demo_policy(env_name: str) -> DemoPolicy:
    """The registered demo policy of ``env_name``.

    Raises:
        ValueError: no policy is registered for it (the message names the supported envs).
    """
    try:
        return DEMO_POLICIES[env_name]
    except KeyError:
        raise ValueError(
            f"no demonstration policy for env {env_name!r}; supported: {', '.join(sorted(DEMO_POLICIES))} "
            "(add one to apps.sft._demos.DEMO_POLICIES)"
        ) from None


async def demonstration(
    agent: Agent,
    env: AsyncEnv[Any, Any],
    policy: DemoPolicy,
    task: Task,
    *,
    rng: random.Random,
    expert_prob: float = 1.0,
    render: ReplyRenderer = bare_value,
    max_turns: int = 16,
) -> Trajectory:
    """Play one episode of ``env`` with a scripted ``policy``, recorded in ``agent``'s tokens.

    Each reply is ``tokenizer.encode(render(action)) + [eos]``; the agent parses it back
    (a renderer that does not round-trip is a bug and raises) and the env steps on the parsed
    action, exactly as in :func:`~forge_env.rollout.run_episode`.

    Example::

        traj = await demonstration(ChatAgent(tok), GuessNumberEnv(), guess_number_policy,
                                   Task(seed=1_000_000), rng=random.Random(0), expert_prob=0.5)

    Raises:
        ValueError: the agent's parser does not turn a rendered reply back into its action.
    """
    started = time.monotonic()
    tokenizer = agent.tokenizer
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise ValueError("the agent's tokenizer has no single eos_token_id to end replies with")
    traj = Trajectory(env_name=env.name, task=task)
    reset = await env.reset(seed=task.seed, options=dict(task.options) or None)
    episode = await agent.new_episode(env)
    traj.env_name = episode.env_name or env.name
    _extend(traj, episode.first_prompt(agent.observation_text(env, reset.observation)), reply=False)
    traj.prompt_len = len(traj.token_ids)
    observation = reset.observation
    traj.termination = "max_turns"
    for index in range(max_turns):
        action = policy(observation, rng, expert_prob)
        text = render(action)
        ids = [*tokenizer.encode(text, add_special_tokens=False), eos]
        parsed = episode.parse_action(ids)
        if parsed != action:
            raise ValueError(
                f"the agent parses the rendered reply {text!r} as {parsed!r}, not {action!r}: "
                "pass a render function whose text the agent's parser reads back"
            )
        start = len(traj.token_ids)
        _extend(traj, ids, reply=True)
        result = await env.step(action)
        observation = result.observation
        observation_text = agent.observation_text(env, observation)
        traj.turns.append(Turn(
            index=index, completion_start=start, completion_end=len(traj.token_ids), text=text,
            finish_reason="stop", version=0, action=action, observation_text=observation_text,
            reward=float(result.reward),
        ))
        traj.info = dict(result.info or {})
        if result.terminated or result.truncated:
            traj.termination = "terminated" if result.terminated else "truncated"
            break
        if index + 1 < max_turns:
            _extend(traj, episode.next_prompt(ids, "stop", observation_text), reply=False)
    # As run_episode judges success: the env's info says so, else a terminated positive return.
    keys = [k for k in ("success", "won", "solved") if k in traj.info]
    if keys:
        traj.success = bool(traj.info[keys[0]])
    else:
        traj.success = traj.termination == "terminated" and traj.total_reward > 0
    traj.seconds = time.monotonic() - started
    return traj


def _extend(traj: Trajectory, ids: list[int], *, reply: bool) -> None:
    traj.token_ids.extend(ids)
    traj.logprobs.extend([0.0] * len(ids))
    traj.loss_mask.extend([int(reply)] * len(ids))
