"""Find and end a server process together with everything it started.

A server runs in its own session/process group (``start_new_session=True``), so one
``killpg`` reaches the server and the children it forked. Children that left the group
(``setsid``) are found through the parent links in ``/proc`` before the kill. Zombies
count as gone: they hold no resources, and their parent (not us) must reap them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["descendants", "group_members", "terminate_tree", "pid_alive"]

_PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of ``pid`` from /proc, or None when it is gone."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    if not _PROC.is_dir():
        return []
    return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    stat = _stat(pid)
    if stat is not None:
        return stat[0] != "Z"
    if _PROC.is_dir():
        return False
    try:  # no /proc (macOS): signal 0 probes existence
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children, grandchildren, ...); [] without /proc."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        stat = _stat(other)
        if stat is not None and stat[0] != "Z":
            children.setdefault(stat[1], []).append(other)
    found: list[int] = []
    frontier = [pid]
    while frontier and len(found) < 10_000:
        nxt = children.get(frontier.pop(), [])
        found.extend(nxt)
        frontier.extend(nxt)
    return found


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    if not _PROC.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is not None and stat[2] == pgid and stat[0] != "Z":
            members.append(pid)
    return members


def _signal_all(pgid: int, pids: list[int], sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def terminate_tree(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> int | None:
    """SIGTERM the process group of ``proc`` (and strays), SIGKILL after ``grace`` seconds.

    Returns once the leader is reaped and no group member or stray descendant is alive
    (or after a bounded final wait). Safe to call on an already-dead process.

    Returns:
        The leader's exit code (None if it could not be reaped).
    """
    pgid = proc.pid  # the leader of its own session: pgid == pid
    strays = [p for p in descendants(proc.pid) if p != proc.pid]

    def leftovers() -> list[int]:
        alive = group_members(pgid)
        alive += [p for p in strays if p not in alive and pid_alive(p)]
        if proc.poll() is None:
            alive.append(proc.pid)
        return alive

    if leftovers():
        _signal_all(pgid, strays, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while leftovers() and time.monotonic() < deadline:
            time.sleep(0.02)
    if leftovers():
        _signal_all(pgid, strays, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while leftovers() and time.monotonic() < deadline:
            time.sleep(0.02)
    try:
        return proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        return None
