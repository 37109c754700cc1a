"""Scratch folders for pushed weights that outlive no process.

Generators and learners write each weight push under a private folder in ``/dev/shm`` (memory)
and remove it on close. A process killed with ``kill -9`` never closes, and its folder would
hold the model's weights in RAM until reboot. So every folder made here holds an exclusive
``flock`` on a marker file inside it for as long as its process lives (the kernel drops the
lock when the process dies, however it dies), and making a new folder first removes the ones
under the same default base whose lock nobody holds.

Only the default base (``/dev/shm``, else the temp dir) is swept: a ``weights_dir`` a user
names may be shared with other hosts, where a lock says nothing about the owner's life.

Example::

    folder = ScratchFolder.create("forge-env-weights-")   # under /dev/shm, orphans removed
    save_file(tensors, os.path.join(folder.path, "model.safetensors"))
    folder.remove()
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["ScratchFolder", "default_base", "remove_orphans"]

logger = logging.getLogger(__name__)

_MARKER = ".forge-env-owner"
"""Lock file inside each folder (no weight-file extension: loaders glob ``*.safetensors``)."""


def default_base() -> str | None:
    """``/dev/shm`` where it is a writable folder, else None (the temp dir)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def remove_orphans(base: str | None, prefix: str = "forge-env-") -> list[str]:
    """Remove folders under ``base`` named ``prefix*`` whose owner process is gone.

    A folder counts as orphaned only when it has the marker file and its lock can be taken;
    folders without one (made by something else, or still being made) are left alone.
    Returns the paths removed.
    """
    root = Path(base or tempfile.gettempdir())
    removed: list[str] = []
    try:
        candidates = [p for p in root.iterdir() if p.name.startswith(prefix) and p.is_dir()]
    except OSError:
        return removed
    for folder in candidates:
        try:
            fd = os.open(folder / _MARKER, os.O_RDWR)
        except OSError:
            continue  # no marker: not ours to judge
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its owner is alive
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d weight folder(s) left by killed processes under %s", len(removed), root)
    return removed


class ScratchFolder:
    """A private folder that a later :meth:`create` removes if this process dies first."""

    def __init__(self, path: str, lock_fd: int | None) -> None:
        self.path = path
        self._lock_fd = lock_fd

    @classmethod
    def create(cls, prefix: str, base: str | None = None) -> ScratchFolder:
        """Make ``<base>/<prefix>XXXX`` (``base`` None: :func:`default_base`, swept of orphans first)."""
        if base is None:
            base = default_base()
            remove_orphans(base)
        else:
            os.makedirs(base, exist_ok=True)
        path = tempfile.mkdtemp(prefix=prefix, dir=base)
        # Locked under another name, then renamed: a sweep never sees the marker unlocked.
        unlocked = os.path.join(path, _MARKER + ".new")
        fd = os.open(unlocked, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a file system without flock (some network mounts): never swept
            os.close(fd)
            os.unlink(unlocked)
            return cls(path, None)
        os.rename(unlocked, os.path.join(path, _MARKER))
        return cls(path, fd)

    def remove(self) -> None:
        """Delete the folder and drop the lock. Idempotent."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
