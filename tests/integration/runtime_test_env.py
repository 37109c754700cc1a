"""Shared by the runtime integration tests: a counter env written to a file for
``LocalProcessRuntime`` to serve from a spec, and a process-liveness check."""

from __future__ import annotations

import textwrap

import psutil


def counter_env_source(*, done_at: int = 10) -> str:
    """Source of ``CounterEnv``: ``reset(seed)`` starts at ``seed``, ``step({"by": k})`` adds
    ``k`` (reward ``k``), the episode ends at ``done_at``; observations carry the server pid."""
    return textwrap.dedent(
        f"""
        import os
        from forge_env import Action, AsyncEnv, Observation, ResetResult, StepResult

        class Inc(Action):
            by: int = 1

        class Count(Observation):
            n: int
            pid: int

        class CounterEnv(AsyncEnv[Count, Inc]):
            action_type = Inc
            observation_type = Count

            async def reset(self, *, seed=None, options=None):
                self.n = seed or 0
                return ResetResult(Count(n=self.n, pid=os.getpid()), {{}})

            async def step(self, action):
                self.n += action.by
                done = self.n >= {done_at}
                return StepResult(Count(n=self.n, pid=os.getpid()), float(action.by), done, False, {{}})
        """
    )


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
