"""RunTracker: one ``log`` call per learner step or eval, fanned out to every enabled sink."""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TextIO

from forge_env.tracking._config import TrackingConfig
from forge_env.tracking._console import _eval_line, _train_line
from forge_env.tracking._records import _jsonable, _prepare_for_append, _scalar

__all__ = ["RunTracker"]

logger = logging.getLogger("forge_env.tracking")

_RESERVED = ("step", "kind", "time", "elapsed_s")
_WANDB_ID_FILE = "wandb_run_id.txt"


def _tag(kind: str, key: str) -> str:
    """The tensorboard/wandb name of a metric.

    Train metrics are already namespaced (``reward/mean``, ``loss/policy``) and keep their
    names, so tensorboard shows one section per namespace. Other kinds are prefixed with the
    kind unless the key already starts with it: ``eval/success_rate`` stays, an ``sft``
    record's ``loss`` becomes ``sft/loss``.
    """
    if kind == "train" or key.startswith(f"{kind}/"):
        return key
    return f"{kind}/{key}"


class RunTracker:
    """Logs a run's metrics to the console, ``metrics.jsonl``, tensorboard and (optionally) wandb.

    >>> import io, tempfile
    >>> out = io.StringIO()
    >>> with RunTracker(TrackingConfig(output_dir=tempfile.mkdtemp(), tensorboard=False),
    ...                 out=out, total_steps=40) as tracker:
    ...     tracker.log(12, {"reward/mean": 0.62, "success/rate": 0.62, "time/step_s": 14.2})
    ...     tracker.log(10, {"eval/success_rate": 0.71, "eval/episodes": 128}, kind="eval")
    >>> print(out.getvalue(), end="")  # doctest: +ELLIPSIS
    step  12/40 | reward 0.62 | success 62% | 14.2 s/step | eta ...
    eval @ step 10: success 71% (128 held-out episodes)

    Every record is a JSON line ``{"step", "kind", "time" (unix), "elapsed_s", **metrics}``
    in ``output_dir/metrics.jsonl``, flushed at once so a killed run keeps what it logged;
    NaN/inf are written as ``null``, values that are not numbers are kept there but skipped
    by tensorboard and wandb (see :func:`_tag` for their names). Not thread-safe: log from
    one thread (the orchestrator's event loop).

    Args:
        config: the sinks and the output folder.
        out: where console lines go; None: ``sys.stdout`` as it is at each write.
        total_steps: learner steps of the run, for ``step 12/40`` and the ETA.
        resume_from_step: the step a resumed run restarts after (its checkpoint's step).
            ``train``/``eval`` lines past it (a killed run's tail) are removed from
            ``metrics.jsonl`` before appending, tensorboard purges its events from step
            ``resume_from_step + 1``, wandb continues the run id saved in the output folder,
            and ``elapsed_s`` continues from the last kept line. None: a fresh run (an
            existing ``metrics.jsonl`` is appended to as is).
        run_config: the run's configuration, recorded by wandb (``wandb.config``).

    Raises:
        ImportError: ``wandb=True`` but wandb is not installed.
    """

    def __init__(
        self,
        config: TrackingConfig,
        *,
        out: TextIO | None = None,
        total_steps: int | None = None,
        resume_from_step: int | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"RunTracker total_steps must be >= 1 or None, got {total_steps}")
        if resume_from_step is not None and resume_from_step < 0:
            raise ValueError(f"RunTracker resume_from_step must be >= 0 or None, got {resume_from_step}")
        self.config = config
        self.total_steps = total_steps
        self.resume_from_step = resume_from_step
        self._out = out
        self._closed = False
        self._output_dir = Path(config.output_dir)
        self._output_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl: IO[str] | None = None
        self._tb: Any = None
        self._wandb_run: Any = None
        # ETA: wall time per step measured from the first train step this tracker logged.
        self._first_train: tuple[float, int] | None = None
        self._deadline: float | None = None
        self._start = time.monotonic()
        self._elapsed_offset = 0.0
        try:
            if config.jsonl:
                path = self._output_dir / "metrics.jsonl"
                last_elapsed = _prepare_for_append(path, resume_from_step)
                if resume_from_step is not None:
                    self._elapsed_offset = last_elapsed
                self._jsonl = open(path, "a", encoding="utf-8")
            if config.tensorboard:
                self._tb = self._open_tensorboard()
            if config.wandb:
                self._wandb_run = self._open_wandb(run_config)
        except BaseException:
            self.close()
            raise

    # -- properties ---------------------------------------------------------------------------

    @property
    def output_dir(self) -> Path:
        """The run's folder."""
        return self._output_dir

    @property
    def metrics_path(self) -> Path | None:
        """``output_dir/metrics.jsonl``, or None when jsonl logging is off."""
        return self._output_dir / "metrics.jsonl" if self.config.jsonl else None

    @property
    def tensorboard_dir(self) -> Path | None:
        """``output_dir/tensorboard``, or None when tensorboard logging is off or unavailable."""
        return self._output_dir / "tensorboard" if self._tb is not None else None

    # -- logging ------------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any], *, kind: str = "train") -> None:
        """Record ``metrics`` at learner step ``step``.

        Args:
            step: the learner step (0: before training, e.g. the baseline eval).
            metrics: flat ``{name: value}``; may repeat ``step`` (it must then equal ``step``)
                and ``kind``; ``time`` and ``elapsed_s`` are the tracker's own fields.
            kind: ``train`` (one per learner step; prints the progress line), ``eval``
                (held-out evaluation; prints the eval line), or any other name (jsonl,
                tensorboard and wandb only).
        """
        if self._closed:
            raise RuntimeError("RunTracker.log after close(): open a new RunTracker to log more")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"RunTracker.log step must be an int >= 0, got {step!r}")
        if not kind or not isinstance(kind, str):
            raise ValueError(f"RunTracker.log kind must be a non-empty string, got {kind!r}")
        for key, own in (("step", step), ("kind", kind)):
            if key in metrics and metrics[key] != own:
                raise ValueError(
                    f"RunTracker.log got {key}={own!r} but metrics[{key!r}]={metrics[key]!r}; "
                    f"pass the same {key} or drop it from the metrics"
                )
        for key in ("time", "elapsed_s"):
            if key in metrics:
                raise ValueError(
                    f"metric name {key!r} is reserved for the tracker's own field; rename it "
                    f"(e.g. 'time/{key}')"
                )
        now = time.time()
        elapsed = self._elapsed_offset + time.monotonic() - self._start
        if self._jsonl is not None:
            record: dict[str, Any] = {"step": step, "kind": kind, "time": round(now, 3),
                                      "elapsed_s": round(elapsed, 3)}
            for key, value in metrics.items():
                if key not in _RESERVED:
                    record[str(key)] = _jsonable(value)
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()
        scalars = {
            _tag(kind, str(key)): number
            for key, value in metrics.items()
            if key not in _RESERVED and (number := _scalar(value)) is not None
        }
        if self._tb is not None and scalars:
            for tag, number in scalars.items():
                self._tb.add_scalar(tag, number, global_step=step, walltime=now)
            self._tb.flush()  # a killed run keeps its tensorboard curve up to here
        if self._wandb_run is not None and scalars:
            self._wandb_run.log(scalars, step=step)
        if self.config.console:
            if kind == "train":
                self._console_train(step, metrics)
            elif kind == "eval":
                self._write_line(_eval_line(step, metrics))

    def print(self, text: str) -> None:
        """Print a free line on the tracker's console (flushed); nothing when ``console=False``."""
        if self.config.console:
            self._write_line(text)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and close every sink (idempotent)."""
        self._close(exit_code=0)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # wandb marks the run failed when the block raised.
        self._close(exit_code=0 if exc_type is None else 1)

    def _close(self, *, exit_code: int) -> None:
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        # Close every sink even when one fails, then report the first failure.
        if self._jsonl is not None:
            try:
                self._jsonl.close()
            except Exception as e:
                errors.append(e)
        if self._tb is not None:
            try:
                self._tb.close()
            except Exception as e:
                errors.append(e)
        if self._wandb_run is not None:
            try:
                self._wandb_run.finish(exit_code=exit_code)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    def stop_by(self, deadline: float | None) -> None:
        """Tell the ETA that training stops at ``deadline`` (a ``time.monotonic()`` value) if
        the steps are not done by then, e.g. a run's time limit; None: no limit."""
        self._deadline = deadline

    # -- internals ----------------------------------------------------------------------------

    def _write_line(self, line: str) -> None:
        out = self._out if self._out is not None else sys.stdout
        out.write(line + "\n")
        out.flush()

    def _console_train(self, step: int, metrics: Mapping[str, Any]) -> None:
        now = time.monotonic()
        if self._first_train is None:
            self._first_train = (now, step)
        is_last = self.total_steps is not None and step >= self.total_steps
        if step % self.config.console_every and not is_last:
            return
        eta_s: float | None = None
        if self.total_steps is not None and step < self.total_steps:
            first_time, first_step = self._first_train
            per_step: float | None
            if step > first_step:
                per_step = (now - first_time) / (step - first_step)
            else:  # one step seen so far: trust the loop's own step time, if it sent one
                per_step = _scalar(metrics.get("time/step_s"))
            if per_step is not None:
                eta_s = per_step * (self.total_steps - step)
        time_limited = False
        if eta_s is not None and self._deadline is not None and self._deadline - now < eta_s:
            eta_s, time_limited = max(0.0, self._deadline - now), True
        self._write_line(_train_line(step, metrics, total_steps=self.total_steps, eta_s=eta_s,
                                     time_limited=time_limited))

    def _open_tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch or tensorboard missing: a logger must not stop a run
            logger.warning(
                "tensorboard logging is off: %s. Install it with `pip install tensorboard` (and torch), "
                "or set TrackingConfig.tensorboard=False (logging.tensorboard=false) to silence this.",
                e,
            )
            return None
        purge_step = None if self.resume_from_step is None else self.resume_from_step + 1
        return SummaryWriter(log_dir=str(self._output_dir / "tensorboard"), purge_step=purge_step)

    def _open_wandb(self, run_config: Mapping[str, Any] | None) -> Any:
        try:
            import wandb
        except ImportError as e:
            raise ImportError(
                "TrackingConfig.wandb=True needs the wandb package: `pip install wandb`, or turn W&B "
                "logging off with TrackingConfig.wandb=False (logging.wandb=false in apps.agent_grpo)"
            ) from e
        # One run id per output folder, so a resumed run continues the same W&B run.
        id_file = self._output_dir / _WANDB_ID_FILE
        run_id = None
        if self.resume_from_step is not None and id_file.exists():
            run_id = id_file.read_text(encoding="utf-8").strip() or None
        if run_id is None:
            run_id = secrets.token_hex(4)
            id_file.write_text(run_id + "\n", encoding="utf-8")
        # WANDB_MODE (online/offline/disabled) is read by wandb itself; we never pass mode=.
        return wandb.init(
            project=self.config.wandb_project,
            name=self.config.run_name,
            dir=os.fspath(self._output_dir),
            id=run_id,
            resume="allow",
            config=dict(_jsonable(dict(run_config))) if run_config is not None else None,
            reinit="create_new",  # a run per tracker, never wandb's module-global run
        )
