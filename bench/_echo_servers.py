"""The same trivial echo environment, written twice: on OpenEnv's base classes and on ours.

Both envs behave identically: ``step({"message": s})`` returns an observation echoing ``s``
(with its length), reward 0.0; the episode never ends unless ``BENCH_EPISODE_LEN`` (an
environment variable read when the app is built) is a positive K, then ``done`` is true on
every K-th step of an episode. Both do their work in the event loop (async ``step``), so the
benchmark compares the serving and client stacks, not a thread hop one of them adds.

The ASGI apps are module attributes built on first access, so OpenEnv's app can be served
while ``forge_env.server`` is not importable (and the other way round)::

    python -m uvicorn bench._echo_servers:openenv_app --host 127.0.0.1 --port 8001
    python -m uvicorn bench._echo_servers:ours_app --host 127.0.0.1 --port 8002

``BENCH_MAX_SESSIONS`` (default 1024) sets the session capacity of both servers. Both apps also
answer ``GET /bench/loop`` with the class of the event loop serving them (``{"loop": "uvloop.Loop"}``),
so the benchmark can record what each server really ran on.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

__all__ = ["build_openenv_app", "build_ours_app", "episode_len", "max_sessions"]


def max_sessions() -> int:
    """Session capacity of both servers (``BENCH_MAX_SESSIONS``, default 1024)."""
    return int(os.environ.get("BENCH_MAX_SESSIONS", "1024"))


def episode_len() -> int:
    """Steps per episode (``BENCH_EPISODE_LEN``); 0 (the default) means never done."""
    return int(os.environ.get("BENCH_EPISODE_LEN", "0"))


def build_openenv_app() -> Any:
    """OpenEnv's FastAPI app (``openenv.core.env_server.http_server.create_app``) for the echo env."""
    from openenv.core.env_server.http_server import create_app
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State

    class EchoAction(Action):
        message: str

    class EchoObservation(Observation):
        echoed_message: str = ""
        message_length: int = 0

    limit = episode_len()

    class EchoEnvironment(Environment[EchoAction, EchoObservation, State]):
        # Each instance keeps its own counters: sessions are isolated. (Plain ints, not a
        # pydantic State with validate_assignment: the env's own cost should be negligible.)
        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self) -> None:
            super().__init__()
            self._episode_id = str(uuid.uuid4())
            self._steps = 0

        def reset(
            self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
        ) -> EchoObservation:
            self._episode_id = episode_id or str(uuid.uuid4())
            self._steps = 0
            return EchoObservation(echoed_message="", message_length=0, done=False, reward=0.0)

        def step(self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any) -> EchoObservation:
            self._steps += 1
            done = limit > 0 and self._steps >= limit
            return EchoObservation(
                echoed_message=action.message,
                message_length=len(action.message),
                done=done,
                reward=0.0,
            )

        # Overriding the async variants makes OpenEnv's server run them in its event loop
        # instead of a per-session thread: the faster of its two paths, and the same
        # execution model as our AsyncEnv.
        async def reset_async(
            self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
        ) -> EchoObservation:
            return self.reset(seed=seed, episode_id=episode_id, **kwargs)

        async def step_async(
            self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any
        ) -> EchoObservation:
            return self.step(action, timeout_s=timeout_s, **kwargs)

        @property
        def state(self) -> State:
            return State(episode_id=self._episode_id, step_count=self._steps)

    return _with_loop_route(
        create_app(
            EchoEnvironment,
            EchoAction,
            EchoObservation,
            env_name="echo_bench",
            max_concurrent_envs=max_sessions(),
        )
    )


def build_ours_app() -> Any:
    """Our FastAPI app (``forge_env.server.create_app``) for the same echo env."""
    from forge_env.env import Action, AsyncEnv, Observation, ResetResult, State, StepResult
    from forge_env.server import create_app

    class EchoAction(Action):
        message: str

    class EchoObservation(Observation):
        echoed_message: str = ""
        message_length: int = 0

    limit = episode_len()

    class EchoEnv(AsyncEnv[EchoObservation, EchoAction]):
        action_type = EchoAction
        observation_type = EchoObservation
        supports_concurrent_sessions = True

        def __init__(self) -> None:
            self._episode_id = str(uuid.uuid4())
            self._steps = 0

        async def reset(
            self, *, seed: int | None = None, options: dict[str, Any] | None = None
        ) -> ResetResult[EchoObservation]:
            self._episode_id = (options or {}).get("episode_id") or str(uuid.uuid4())
            self._steps = 0
            return ResetResult(EchoObservation(echoed_message="", message_length=0), {})

        async def step(self, action: EchoAction) -> StepResult[EchoObservation]:
            self._steps += 1
            done = limit > 0 and self._steps >= limit
            obs = EchoObservation(echoed_message=action.message, message_length=len(action.message))
            return StepResult(obs, 0.0, done, False, {})

        async def state(self) -> State:
            return State(episode_id=self._episode_id, step_count=self._steps)

    return _with_loop_route(create_app(EchoEnv, max_sessions=max_sessions()))


def _with_loop_route(app: Any) -> Any:
    """Add ``GET /bench/loop`` to a FastAPI app: the event loop class serving it."""

    async def bench_loop() -> dict[str, str]:
        loop = type(asyncio.get_running_loop())
        return {"loop": f"{loop.__module__}.{loop.__qualname__}"}

    app.add_api_route("/bench/loop", bench_loop, methods=["GET"], include_in_schema=False)
    return app


_BUILDERS = {"openenv_app": build_openenv_app, "ours_app": build_ours_app}


def __getattr__(name: str) -> Any:
    # Built lazily so that serving one side never imports the other's server package.
    builder = _BUILDERS.get(name)
    if builder is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = builder()
    globals()[name] = app
    return app
