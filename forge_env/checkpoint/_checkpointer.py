"""Atomic, verified checkpoints in one directory: ``step_000012/`` folders, a manifest, pruning.

Layout of ``CheckpointConfig.directory``::

    step_000010/            a complete checkpoint (only complete ones ever carry this name)
        learner.pt          torch.save of state["learner"]
        buffer.json         json of state["buffer"]
        COMPLETE            the manifest, written last: step, time, each file's size and sha256
    step_000012/
    .tmp-step_000014-4711   being written by process 4711 (or left by it when it died)

A save writes everything into the ``.tmp-`` folder, fsyncs the files, writes ``COMPLETE``, fsyncs
the folder, then renames it to its final name and fsyncs the directory. The rename is atomic, so
a crash at any moment (``kill -9`` included) leaves the older checkpoints plus either nothing or
the new complete one under a ``step_`` name.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, cast

from forge_env._exceptions import ForgeEnvError

__all__ = ["CheckpointConfig", "CheckpointError", "Checkpointer"]

logger = logging.getLogger(__name__)

_FORMAT = 1
_MARKER = "COMPLETE"
_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_STEP_RE = re.compile(r"step_(\d+)")
# Every temporary name ends with the writer's pid, so a later save can tell a dead writer's
# leftovers (removed) from a live one's work in progress (left alone).
_TMP_RE = re.compile(r"\.tmp-.*-(\d+)")
_CHUNK = 1 << 20


class CheckpointError(ForgeEnvError):
    """A checkpoint could not be written, found or read (the message names the folder or file)."""


@dataclasses.dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """Where checkpoints go and how many stay.

    >>> CheckpointConfig(directory="runs/demo/checkpoints").keep
    2
    """

    directory: str
    """Folder of the run's checkpoints (created on the first save). One writer at a time."""
    keep: int = 2
    """Newest complete checkpoints kept; older ones are removed once a new one is complete."""
    allow_pickle: bool = False
    """Load ``.pt`` files with ``torch.load(weights_only=False)``. Off: only tensors and plain
    containers/numbers/strings load (everything ``Learner.state_dict()`` holds, optimizer and
    LR scheduler included). Turn it on only when you saved other Python objects yourself and
    trust the files: unpickling them runs code named in them."""

    def __post_init__(self) -> None:
        if not self.directory:
            raise ValueError("CheckpointConfig.directory must be a folder path, got an empty string")
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise ValueError(f"CheckpointConfig.keep must be an int >= 1, got {self.keep!r}")


class Checkpointer:
    """Saves and loads a run's state as atomic, verified ``step_NNNNNN`` folders.

    ``state`` is a mapping of simple names to values; each value becomes one file:

    - **JSON** (``<key>.json``) when the value is made only of ``dict`` (with ``str`` keys),
      ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``: it reads back exactly equal
      (e.g. ``ReplayBuffer.state_dict()``, counters, the orchestrator's bookkeeping,
      :func:`~forge_env.checkpoint.rng_state`).
    - **torch** (``<key>.pt``, ``torch.save``) otherwise: tensors, module and optimizer state
      dicts (int keys, tuples), ``Learner.state_dict()``. Loaded on the CPU with
      ``torch.load(weights_only=True)``; a value holding other Python objects (numpy scalars,
      your own classes) is saved with a warning and loads only with ``allow_pickle=True``.

    >>> import tempfile, torch
    >>> ckpt = Checkpointer(CheckpointConfig(directory=tempfile.mkdtemp(), keep=2))
    >>> for step in (1, 2, 3):
    ...     path = ckpt.save(step, {"weights": torch.full((2,), float(step)), "meta": {"step": step}})
    >>> [p.name for p in ckpt.checkpoints()]
    ['step_000002', 'step_000003']
    >>> step, state = ckpt.load()
    >>> step, state["weights"].tolist(), state["meta"]
    (3, [3.0, 3.0], {'step': 3})

    ``save`` blocks until the files are on disk; from async code call it with
    ``await asyncio.to_thread(ckpt.save, step, state)`` and do not modify the tensors in
    ``state`` until it returns.
    """

    def __init__(self, config: CheckpointConfig) -> None:
        self.config = config
        self.directory = Path(config.directory)
        # One save at a time per Checkpointer: a save cleans up its own pid's temp folders.
        self._lock = threading.Lock()

    # --- saving -------------------------------------------------------------------------------

    def save(self, step: int, state: Mapping[str, Any]) -> Path:
        """Write ``state`` as checkpoint ``step`` atomically and return its folder.

        Then removes complete checkpoints beyond ``keep`` (and any with a larger step: they
        belong to an abandoned run this one resumed before), and temp folders of dead writers.
        Saving a step that already exists replaces it.

        Raises:
            ValueError: ``step`` is not an int >= 0 or a key is not a simple name.
            CheckpointError: a value cannot be saved or the disk write failed (nothing of the
                new checkpoint is left behind).
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"checkpoint step must be an int >= 0, got {step!r}")
        for key in state:
            if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
                raise ValueError(
                    f"checkpoint state key {key!r} is not a simple name: use letters, digits, '_' and '-' "
                    "(each key becomes a file name)"
                )
        with self._lock:
            final = self._write(step, state)
            self._prune(step)
            self._remove_stale_temps()
        return final

    def _write(self, step: int, state: Mapping[str, Any]) -> Path:
        name = _step_name(step)
        pid = os.getpid()
        tmp = self.directory / f".tmp-{name}-{pid}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        except OSError as e:
            raise CheckpointError(f"cannot create {tmp}: {e}; check the checkpoint directory's path and rights") from e
        displaced: Path | None = None
        try:
            entries = [self._write_value(tmp, key, value) for key, value in state.items()]
            now = time.time()
            manifest = {
                "format": _FORMAT,
                "step": step,
                "time": now,
                "created": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(),
                "files": entries,
            }
            # The marker goes last: a folder that has it has every file listed in it.
            _write_bytes(tmp / _MARKER, json.dumps(manifest, indent=1).encode())
            _fsync_dir(tmp)
            final = self.directory / name
            if final.exists():
                # Replacing the same step (e.g. after resuming from an older one): move the old
                # folder aside first; a crash right here leaves it under a temp name, cleaned later.
                displaced = self.directory / f".tmp-replaced-{name}-{pid}"
                os.rename(final, displaced)
            os.rename(tmp, final)
            _fsync_dir(self.directory)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise CheckpointError(f"could not write checkpoint {self.directory / name}: {e}") from e
            raise
        if displaced is not None:
            shutil.rmtree(displaced, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
        return final

    def _write_value(self, folder: Path, key: str, value: Any) -> dict[str, Any]:
        if _is_json(value):
            file = folder / f"{key}.json"
            # ensure_ascii: any str (even lone surrogates from decoded model output) encodes.
            size, digest = _write_bytes(file, json.dumps(value).encode())
            return {"key": key, "file": file.name, "kind": "json", "size": size, "sha256": digest}
        import torch

        file = folder / f"{key}.pt"
        with open(file, "wb") as f:
            writer = _HashingWriter(f)
            try:
                # torch.save only calls write()/flush() on a file object.
                torch.save(value, cast(IO[bytes], writer))
            except (pickle.PicklingError, TypeError, AttributeError, RuntimeError) as e:
                raise CheckpointError(
                    f"state[{key!r}] cannot be saved with torch.save ({type(e).__name__}: {e}): store "
                    "tensors, state dicts and plain containers/numbers/strings"
                ) from e
            f.flush()
            os.fsync(f.fileno())
        size, digest = writer.size, writer.hexdigest()
        # Reads only the pickle part of the archive (about a millisecond): names what
        # torch.load(weights_only=True) will refuse, so the run hears it now, not at resume.
        unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(file)))
        if unsafe and not self.config.allow_pickle:
            logger.warning(
                "state[%r] holds Python objects (%s): loading this checkpoint will need "
                "CheckpointConfig(allow_pickle=True); store tensors, lists and numbers instead to avoid that",
                key, ", ".join(unsafe))
        return {"key": key, "file": file.name, "kind": "torch", "size": size, "sha256": digest,
                "python_objects": unsafe}

    def _prune(self, saved_step: int) -> None:
        complete = self._complete()
        for step, path in complete:
            if step > saved_step:
                logger.warning(
                    "removing checkpoint %s: its step is after the one just saved (%d), so it belongs to "
                    "a run this one replaced", path, saved_step)
                self._remove(path)
        kept = [path for step, path in complete if step <= saved_step]
        for path in kept[: -self.config.keep]:
            self._remove(path)

    def _remove(self, path: Path) -> None:
        # Rename first so the folder stops being a checkpoint at once; a crash during the
        # rmtree leaves a dead writer's temp folder, which a later save removes.
        doomed = self.directory / f".tmp-removed-{path.name}-{os.getpid()}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def _remove_stale_temps(self) -> None:
        for entry in os.scandir(self.directory):
            match = _TMP_RE.fullmatch(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            pid = int(match[1])
            # Our own pid's temp folders are leftovers: this process writes one save at a time.
            if pid == os.getpid() or not _pid_alive(pid):
                logger.info("removing %s, left by an interrupted save", entry.path)
                shutil.rmtree(entry.path, ignore_errors=True)

    # --- finding ------------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest step first (checks markers and file sizes only;
        :meth:`latest` and :meth:`load` also check contents)."""
        return [path for _, path in self._complete()]

    def latest(self) -> Path | None:
        """The newest complete checkpoint whose files match its manifest (sizes and sha256),
        or None when there is none. Folders without ``COMPLETE`` (a save that did not finish)
        or whose files do not match are skipped with a warning."""
        for step, path in reversed(self._candidates()):
            _, problem = _inspect(path, hashes=True)
            if problem is None:
                return path
            logger.warning("ignoring checkpoint %s: %s", path, problem)
        return None

    def _candidates(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = []
        for entry in os.scandir(self.directory):
            match = _STEP_RE.fullmatch(entry.name)
            if match is not None and entry.is_dir():
                found.append((int(match[1]), Path(entry.path)))
        return sorted(found)

    def _complete(self) -> list[tuple[int, Path]]:
        return [(step, path) for step, path in self._candidates() if _inspect(path, hashes=False)[1] is None]

    # --- loading ------------------------------------------------------------------------------

    def load(self, path: str | os.PathLike[str] | None = None) -> tuple[int, dict[str, Any]]:
        """``(step, state)`` of checkpoint folder ``path``, or of :meth:`latest` when None.

        Every file's sha256 is checked against the manifest before it is read. JSON values
        come back as saved; torch values come back on the CPU.

        Raises:
            CheckpointError: there is no complete checkpoint, or a file is missing, corrupt or
                (with ``allow_pickle`` off) holds Python objects; the message names the file.
        """
        if path is None:
            folder = self.latest()
            if folder is None:
                raise CheckpointError(
                    f"no complete checkpoint in {self.directory}: run without --resume to start a new run"
                )
            manifest, problem = _inspect(folder, hashes=False)  # latest() checked the hashes
        else:
            folder = Path(path)
            manifest, problem = _inspect(folder, hashes=True)
        if problem is not None or manifest is None:
            raise CheckpointError(
                f"{folder} is not a usable checkpoint: {problem}; pass another folder, or delete this one to "
                "resume from the previous checkpoint"
            )
        state = {entry["key"]: self._read_value(folder / entry["file"], entry) for entry in manifest["files"]}
        logger.info("loaded checkpoint %s", folder)
        return int(manifest["step"]), state

    def _read_value(self, file: Path, entry: Mapping[str, Any]) -> Any:
        if entry["kind"] == "json":
            try:
                return json.loads(file.read_bytes())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"checkpoint file {file} is corrupt: {e}") from e
        import torch

        unsafe = entry.get("python_objects") or []
        if unsafe and not self.config.allow_pickle:
            raise self._pickle_error(file, ", ".join(map(str, unsafe)))
        try:
            return torch.load(file, map_location="cpu", weights_only=not self.config.allow_pickle)
        except pickle.UnpicklingError as e:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            if found is not None:
                raise self._pickle_error(file, found[1]) from e
            raise CheckpointError(f"checkpoint file {file} is corrupt: {e}") from e
        except Exception as e:  # torch raises RuntimeError/EOFError/... for damaged zip archives
            raise CheckpointError(f"checkpoint file {file} is corrupt: {type(e).__name__}: {e}") from e


    @staticmethod
    def _pickle_error(file: Path, objects: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint file {file} holds Python objects ({objects}) that torch.load(weights_only=True) "
            "refuses; if you wrote it yourself, load it with CheckpointConfig(allow_pickle=True)"
        )


# --- internals ------------------------------------------------------------------------------


def _step_name(step: int) -> str:
    return f"step_{step:06d}"


def _inspect(folder: Path, *, hashes: bool) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) when ``folder`` is a complete checkpoint, else (None, what is wrong)."""
    marker = folder / _MARKER
    try:
        raw = marker.read_bytes()
    except FileNotFoundError:
        return None, f"no {_MARKER} marker (a save that did not finish)"
    except OSError as e:
        return None, f"cannot read {marker}: {e}"
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        step = manifest["step"]
    except (ValueError, KeyError, TypeError) as e:
        return None, f"unreadable manifest {marker}: {e}"
    if manifest.get("format") != _FORMAT:
        return None, f"manifest format {manifest.get('format')!r}, this forge-env reads format {_FORMAT}"
    match = _STEP_RE.fullmatch(folder.name)
    if match is not None and int(match[1]) != step:
        return None, f"manifest says step {step} but the folder is named {folder.name}"
    for entry in files:
        try:
            file = folder / entry["file"]
            expected_size, expected_hash = int(entry["size"]), str(entry["sha256"])
            if entry["kind"] not in ("json", "torch") or not isinstance(entry["key"], str):
                raise ValueError(f"bad entry {entry!r}")
        except (KeyError, TypeError, ValueError) as e:
            return None, f"unreadable manifest {marker}: {e}"
        try:
            size = file.stat().st_size
        except OSError:
            return None, f"{file} is missing"
        if size != expected_size:
            return None, f"{file} has {size} bytes, the manifest says {expected_size}"
        if hashes and _sha256(file) != expected_hash:
            return None, f"{file} does not match its sha256 in the manifest (corrupt or modified)"
    return manifest, None


def _is_json(value: Any) -> bool:
    """True when ``json.loads(json.dumps(value)) == value`` with the same types throughout.

    Iterative (no recursion limit on deep data); a container met twice (shared or cyclic)
    goes to torch.save, which keeps the sharing."""
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        kind = type(item)
        if item is None or kind in (str, int, float, bool):
            continue
        if kind is dict:
            if id(item) in seen or any(type(k) is not str for k in item):
                return False
            seen.add(id(item))
            stack.extend(item.values())
        elif kind is list:
            if id(item) in seen:
                return False
            seen.add(id(item))
            stack.extend(item)
        else:
            return False
    return True


class _HashingWriter:
    """Passes writes to a file and hashes them on the way (no second read of big files)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._file.write(data)

    def flush(self) -> None:
        self._file.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _write_bytes(file: Path, data: bytes) -> tuple[int, str]:
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return len(data), hashlib.sha256(data).hexdigest()


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    # Makes the folder's entries (new files, a rename) durable, not just the files' bytes.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some filesystems cannot fsync a directory; the rename is still atomic there.
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True
