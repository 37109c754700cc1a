"""Call one reward function on trajectories: bounded concurrency, a deadline per call, never raising.

:class:`_Scorer` is a plain object used the same way by :class:`~forge_env.reward.RewardWorkers`
(in the caller's process) and by the Monarch ``RewardActor`` (in a worker process): each call
comes back as an :class:`_Outcome` (a score, or why there is none), which travels between
processes and is applied to the trajectory by the caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import math
import numbers
import threading
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from forge_env.reward._load import load_reward_fn, normalize_spec

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.rollout import Trajectory

__all__: list[str] = []

_MESSAGE_LIMIT = 500
_thread_ids = itertools.count(1)


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """One reward call's result: a score, or what went wrong (picklable)."""

    score: float | None = None
    kind: str = ""
    """``""`` when scored; else ``timeout``, ``bad_return``, ``replica_died`` or the exception's
    type name (logged once per kind)."""
    error: str = ""
    """The message for ``trajectory.info["reward_fn_error"]``: names the fn and the error."""
    traceback: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.score is not None


class _BadReturn(Exception):
    pass


@dataclasses.dataclass
class _ThreadCall:
    """A call running in another thread (a sync fn's own thread, or the async fns' loop);
    ``abandoned`` once its deadline passed, ``done`` when it really ended there."""

    done: bool = False
    abandoned: bool = False


class _Scorer:
    """Runs ``fn(trajectory, **kwargs)``: ``concurrency`` calls at a time, each within ``timeout_s``.

    A sync function runs in a daemon thread of its own (a call past its deadline cannot be
    stopped, only abandoned: the thread finishes in the background, counted by :attr:`stuck`,
    and never blocks the interpreter's exit). An ``async def`` function runs on this scorer's
    own event loop, in a daemon thread, and is cancelled at its deadline: one that blocks
    (CPU work, ``time.sleep``) holds up other reward calls, never the caller's loop (the
    trainer's envs and generator), and its deadline still ends the wait for it.

    >>> import asyncio
    >>> from forge_env.rollout import Task, Trajectory
    >>> scorer = _Scorer("forge_env.reward:length_penalty", kwargs={"budget": 1}, timeout_s=5, concurrency=2)
    >>> asyncio.run(scorer.score(Trajectory(env_name="e", task=Task(), loss_mask=[1, 1, 1]))).score
    -0.02
    """

    def __init__(
        self, spec: str, *, kwargs: Mapping[str, Any] | None = None, timeout_s: float, concurrency: int,
        where: str = "",
    ) -> None:
        self.spec = normalize_spec(spec)
        self.kwargs = dict(kwargs or {})
        self.fn = load_reward_fn(self.spec, kwargs=self.kwargs)
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.where = where
        """Appended to error messages, e.g. ``" (in reward process 1234)"``."""
        self.is_async = inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(
            getattr(self.fn, "__call__", None)
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._lock = threading.Lock()
        self._stuck = 0
        self._fn_loop: asyncio.AbstractEventLoop | None = None   # async fns' loop, made on first use

    @property
    def stuck(self) -> int:
        """Calls still running past their deadline: threads of a sync fn, or async calls whose
        cancellation has not landed yet (their loop is blocked)."""
        with self._lock:
            return self._stuck

    async def score(self, trajectory: "Trajectory") -> _Outcome:
        """Score one trajectory; never raises (but for cancellation)."""
        async with self._slots:
            started = time.perf_counter()
            call = _ThreadCall()
            try:
                value = await asyncio.wait_for(self._call(trajectory, call), self.timeout_s)
                score = _as_score(value)
            except TimeoutError:
                with self._lock:
                    if not call.done:
                        call.abandoned = True
                        self._stuck += 1
                return _Outcome(
                    kind="timeout",
                    error=(f"reward fn {self.spec} timed out after {self.timeout_s:g}s "
                           f"(RewardConfig.timeout_s){self.where}"),
                    seconds=time.perf_counter() - started,
                )
            except _BadReturn as e:
                return _Outcome(kind="bad_return", error=f"reward fn {self.spec} {e}{self.where}",
                                seconds=time.perf_counter() - started)
            except Exception as e:
                return _Outcome(
                    kind=type(e).__name__,
                    error=f"reward fn {self.spec} raised {type(e).__name__}: {_one_line(e)}{self.where}",
                    traceback="".join(traceback.format_exception(e)).rstrip(),
                    seconds=time.perf_counter() - started,
                )
            return _Outcome(score=score, seconds=time.perf_counter() - started)

    async def _call(self, trajectory: "Trajectory", call: _ThreadCall) -> Any:
        if self.is_async:
            return await self._on_fn_loop(trajectory, call)
        result = await self._in_thread(trajectory, call)
        if inspect.isawaitable(result):  # a plain function that returned a coroutine
            result = await result
        return result

    def _on_fn_loop(self, trajectory: "Trajectory", call: _ThreadCall) -> asyncio.Future[Any]:
        """The async fn's call on the scorer's own loop; cancelling the future returned cancels it there."""
        if self._fn_loop is None:
            self._fn_loop = asyncio.new_event_loop()
            threading.Thread(target=self._fn_loop.run_forever, name=f"reward-fn-loop-{next(_thread_ids)}",
                             daemon=True).start()

        async def tracked() -> Any:
            try:
                return await self.fn(trajectory, **self.kwargs)
            finally:  # when the call really ends there (a cancelled future says nothing of it)
                with self._lock:
                    call.done = True
                    if call.abandoned:
                        self._stuck -= 1

        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(tracked(), self._fn_loop))

    def close(self) -> None:
        """Stop the async fns' loop (calls still on it are dropped). Idempotent."""
        loop, self._fn_loop = self._fn_loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def _in_thread(self, trajectory: "Trajectory", call: _ThreadCall) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def deliver(error: BaseException | None, value: Any) -> None:
            if future.done():  # its deadline passed: nobody waits for it
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def run() -> None:
            error: BaseException | None = None
            value: Any = None
            try:
                value = self.fn(trajectory, **self.kwargs)
            except Exception as e:  # delivered to the caller as the call's error
                error = e
            except BaseException as e:  # sys.exit() in a reward fn must not end the trainer
                error = RuntimeError(f"{type(e).__name__}: {e}")
            with self._lock:
                call.done = True
                if call.abandoned:
                    self._stuck -= 1
            try:
                loop.call_soon_threadsafe(deliver, error, value)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        threading.Thread(target=run, name=f"reward-fn-{next(_thread_ids)}", daemon=True).start()
        return future


def _as_score(value: Any) -> float:
    """The fn's return value as a finite float, else :class:`_BadReturn` saying what came back."""
    if isinstance(value, (str, bytes)) or value is None or not (
        isinstance(value, numbers.Real) or hasattr(value, "__float__")
    ):
        raise _BadReturn(f"returned {value!r:.80} ({type(value).__name__}), not a float")
    try:
        score = float(value)
    except (TypeError, ValueError) as e:  # e.g. a tensor of several elements
        raise _BadReturn(f"returned {value!r:.80} ({type(value).__name__}), not a float: {e}") from e
    if not math.isfinite(score):
        raise _BadReturn(f"returned {score}, not a finite float")
    return score


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or "(no message)"
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."
