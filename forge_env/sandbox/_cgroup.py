"""A per-run pids cgroup: the process limit that holds even where RLIMIT_NPROC does not.

RLIMIT_NPROC counts processes per user, and a host root (the usual case in containers)
is exempt from it, also through bwrap's user namespace (measured: 200 forks passed a limit
of 32). A cgroup's ``pids.max`` counts exactly the run's processes, whoever they belong to.
It needs a writable pids hierarchy (cgroup v1 ``/sys/fs/cgroup/pids``, as root); where there
is none, runs rely on RLIMIT_NPROC alone.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

__all__ = ["PidsCgroup"]

_V1_ROOT = Path("/sys/fs/cgroup/pids")


class PidsCgroup:
    """A fresh pids cgroup limited to ``max_pids``; ``None`` from ``create`` when unsupported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Opened up front: the preexec_fn (after fork) must only write, never allocate much.
        self._procs = str(path / "cgroup.procs")

    @classmethod
    def create(cls, max_pids: int) -> PidsCgroup | None:
        if not (_V1_ROOT / "cgroup.procs").exists() or not os.access(_V1_ROOT, os.W_OK):
            return None
        path = _V1_ROOT / f"forge-sandbox-{uuid.uuid4().hex[:12]}"
        try:
            path.mkdir()
            (path / "pids.max").write_text(str(max_pids))
        except OSError:
            try:
                path.rmdir()
            except OSError:
                pass
            return None
        return cls(path)

    def join(self) -> None:
        """Move the calling process into the cgroup (called in the child before exec)."""
        fd = os.open(self._procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def limit_reached(self) -> bool:
        """True when a fork was refused because of ``pids.max``."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value) > 0
        except (OSError, ValueError):
            pass
        return False

    def kill_members(self) -> bool:
        """SIGKILL every process in the cgroup; False when it is already empty (or gone)."""
        try:
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return False
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return bool(pids)

    def destroy(self) -> None:
        """SIGKILL whatever is still in the cgroup (escaped children too), then remove it."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self.path.exists():
            self.kill_members()
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.01)
