"""The jsonl metrics file: JSON-safe values, reading back, resume truncation, atomic writes."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["read_metrics"]

logger = logging.getLogger("forge_env.tracking")

# Kinds whose lines belong to the learner-step axis: a resumed run drops those past its step.
# Other kinds (e.g. "sft") count their own steps and are kept.
_STEP_KINDS = frozenset({"train", "eval"})


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in file order.

    A run killed mid-write leaves a truncated last line: it is skipped. Blank lines are
    skipped. NaN/inf were written as ``null`` and come back as ``None``.

    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
    >>> _ = p.write_text('{"step": 1, "kind": "train", "reward/mean": 0.5}\\n{"step": 2, "ki')
    >>> read_metrics(p)
    [{'step': 1, 'kind': 'train', 'reward/mean': 0.5}]

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a line other than the last is not a JSON object (the file is damaged
            beyond a killed run's tail; the message names the line).
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    # The last non-blank line is the only one a killed writer can have cut.
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        record = _parse_line(line)
        if record is None:
            if i == last:
                logger.info("%s: skipped a truncated last line (a killed run's tail)", path)
                continue
            raise ValueError(
                f"{path}:{i + 1} is not a JSON object: {line[:80]!r}. The metrics file is damaged; "
                "remove or fix that line."
            )
        records.append(record)
    return records


def _parse_line(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: non-finite floats become None, numpy/torch scalars
    become numbers, anything else unknown becomes its ``str``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy and torch scalars
    if callable(item):
        try:
            return _jsonable(item())
        except (TypeError, ValueError, RuntimeError):  # arrays of more than one element
            pass
    return str(value)


def _scalar(value: Any) -> float | None:
    """``value`` as a float when it is a number (NaN/inf kept: both loggers show them), else None."""
    if isinstance(value, (bool, int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            inner = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        if isinstance(inner, (bool, int, float)):
            return float(inner)
    return None


def _prepare_for_append(path: Path, resume_from_step: int | None) -> float:
    """Make an existing jsonl file safe to append to; return the kept records' last ``elapsed_s``.

    Drops a truncated last line (appending after it would glue two records together) and,
    when resuming, the ``train``/``eval`` lines with ``step > resume_from_step`` (a killed
    run's tail past its last checkpoint). Rewrites the file atomically, and only if needed.
    """
    if not path.exists():
        return 0.0
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    kept: list[str] = []
    last_elapsed = 0.0
    changed = bool(text) and not text.endswith("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            changed = True
            continue
        record = _parse_line(line)
        if record is None:
            if i == len(lines) - 1:
                changed = True
                continue
            kept.append(line)  # damage in the middle is not ours to delete; read_metrics names it
            continue
        step = record.get("step")
        if (
            resume_from_step is not None
            and record.get("kind") in _STEP_KINDS
            and isinstance(step, int)
            and step > resume_from_step
        ):
            changed = True
            continue
        kept.append(line)
        elapsed = record.get("elapsed_s")
        if isinstance(elapsed, (int, float)) and not isinstance(elapsed, bool):
            last_elapsed = float(elapsed)
    if changed:
        _atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode("utf-8"))
    return last_elapsed


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique sibling (same filesystem, so os.replace is atomic), opened with "x" rather than
    # mkstemp so the result gets the usual umask permissions, not mkstemp's 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
