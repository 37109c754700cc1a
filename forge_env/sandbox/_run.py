"""Run a piece of (model-written, untrusted) code in a sandbox and report what happened."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from forge_env.runtime._proctree import descendants
from forge_env.sandbox._cgroup import PidsCgroup
from forge_env.sandbox._backends import SCRATCH, Backend, choose_backend, python_executable
from forge_env.sandbox._types import LimitHit, SandboxLimits, SandboxResult

__all__ = ["arun_code", "run_code"]

logger = logging.getLogger(__name__)

_LANGUAGES = ("python", "bash")
_MAIN = {"python": "main.py", "bash": "main.sh"}
# Error text a program prints when a limit refused it something (Python tracebacks, libc).
_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|ENOMEM|std::bad_alloc|out of memory")
_PROCESSES = re.compile(r"Resource temporarily unavailable|EAGAIN|fork: retry|can't start new thread")
_FILE_SIZE = re.compile(r"File too large|EFBIG")


def run_code(
    code: str,
    *,
    language: str = "python",
    limits: SandboxLimits = SandboxLimits(),
    backend: str | None = None,
    stdin: str = "",
    files: dict[str, str] | None = None,
) -> SandboxResult:
    """Run ``code`` in a sandbox under ``limits`` and return what happened.

    The code runs in a fresh scratch directory (its working directory, ``/work`` inside
    the isolating backends; deleted afterwards) that also holds ``files``. Python runs as
    ``python3 -I -B`` from the base installation: standard library only, no bytecode writes.

    >>> r = run_code("print(6 * 7)")
    >>> r.stdout, r.exit_code, r.limit_hit
    ('42\\n', 0, None)

    Args:
        code: the program text.
        language: "python" or "bash".
        limits: CPU, wall, memory, process, output and file-size limits.
        backend: "bubblewrap", "nsjail" or "rlimit"; None picks the best usable one
            (see ``available_backends()``).
        stdin: text fed to the program's standard input.
        files: extra files to put in the scratch directory, relative path -> text.

    Raises:
        ValueError: unknown language or backend, or a ``files`` path leaving the scratch dir.
        SandboxUnavailableError: the named backend cannot run here.
    """
    if language not in _LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; choose one of {_LANGUAGES}")
    chosen = choose_backend(backend)
    if not chosen.isolated:
        logger.warning("running code with the rlimit backend: NOT a security boundary (no "
                       "network or filesystem isolation); install bubblewrap for one")
    scratch = tempfile.mkdtemp(prefix="forge-sandbox-")
    try:
        # mkdtemp's 0700 suffices: every backend's sandbox user maps to the host user.
        _write_files(Path(scratch), {**(files or {}), _MAIN[language]: code})
        where = SCRATCH if chosen.isolated else scratch
        main = f"{where}/{_MAIN[language]}"
        program = ([python_executable(), "-I", "-B", main] if language == "python"
                   else ["/bin/bash", "--norc", "--noprofile", main])
        return _execute(chosen, chosen.argv(program, scratch=scratch, limits=limits),
                        scratch=scratch, limits=limits, stdin=stdin)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def arun_code(
    code: str,
    *,
    language: str = "python",
    limits: SandboxLimits = SandboxLimits(),
    backend: str | None = None,
    stdin: str = "",
    files: dict[str, str] | None = None,
) -> SandboxResult:
    """``run_code`` for async callers: the run happens in a worker thread, the loop stays free.

    >>> import asyncio
    >>> asyncio.run(arun_code("print(1)")).stdout
    '1\\n'

    Cancelling the awaiting task does not stop the run early; it still ends by the wall limit.
    """
    return await asyncio.to_thread(run_code, code, language=language, limits=limits,
                                   backend=backend, stdin=stdin, files=files)


def _write_files(scratch: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"sandbox file path {name!r} must be relative and stay inside "
                             "the scratch directory (no '..', no leading '/')")
        target = scratch / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


def _rlimits(limits: SandboxLimits, *, with_nproc: bool, with_rlimits: bool = True,
             cgroup: PidsCgroup | None = None) -> Callable[[], None]:
    """A preexec_fn setting the limits in the child, after fork and before exec."""
    mib = 1024 * 1024
    # CPU: SIGXCPU at the soft limit (Python dies of it), SIGKILL a second later regardless.
    values = [(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
              (resource.RLIMIT_AS, limits.memory_mb * mib, limits.memory_mb * mib),
              (resource.RLIMIT_FSIZE, limits.file_size_mb * mib, limits.file_size_mb * mib),
              (resource.RLIMIT_NOFILE, limits.max_open_files, limits.max_open_files),
              (resource.RLIMIT_CORE, 0, 0)]
    if with_nproc:
        values.append((resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes))

    if not with_rlimits:
        values = []

    def apply() -> None:
        if cgroup is not None:
            cgroup.join()
        for which, soft, hard in values:
            resource.setrlimit(which, (soft, hard))

    return apply


class _Capture:
    """Reads one pipe to the end, keeping at most ``cap`` bytes; calls ``overflow`` once past it."""

    def __init__(self, fd: int, cap: int, overflow: Callable[[], None]) -> None:
        self.data = bytearray()
        self.truncated = False
        self._fd, self._cap, self._overflow = fd, cap, overflow
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while chunk := os.read(self._fd, 65536):
            room = self._cap - len(self.data)
            if len(chunk) > room:
                self.data += chunk[:max(room, 0)]
                if not self.truncated:
                    self.truncated = True
                    self._overflow()
            else:
                self.data += chunk

    def text(self) -> str:
        out = self.data.decode(errors="replace")
        return out + f"\n[forge-env sandbox: truncated at {self._cap} bytes]" if self.truncated else out


def _kill_group(pid: int, *, tree: bool) -> None:
    """SIGKILL the run's process group (and, for rlimit, descendants that left it)."""
    victims = descendants(pid) if tree else []
    for sig_target in [pid, *victims]:
        try:
            if sig_target == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(sig_target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _execute(backend: Backend, argv: list[str], *, scratch: str, limits: SandboxLimits,
             stdin: str) -> SandboxResult:
    # The sandbox's own helper processes (bwrap outer + inner, nsjail) count in the cgroup.
    cgroup = PidsCgroup.create(limits.max_processes + 3)
    if cgroup is None and os.geteuid() == 0:
        _warn_nproc_unenforced()
    try:
        return _execute_in(backend, argv, scratch=scratch, limits=limits, stdin=stdin,
                           cgroup=cgroup)
    finally:
        if cgroup is not None:
            cgroup.destroy()


@functools.lru_cache(maxsize=1)
def _warn_nproc_unenforced() -> None:
    logger.warning("SandboxLimits.max_processes is NOT enforced: running as root without a "
                   "writable pids cgroup (/sys/fs/cgroup/pids), and RLIMIT_NPROC does not bind "
                   "root; a fork bomb is stopped only by the wall limit. Run as a non-root "
                   "user or give this process a writable pids cgroup.")


def _execute_in(backend: Backend, argv: list[str], *, scratch: str, limits: SandboxLimits,
                stdin: str, cgroup: PidsCgroup | None) -> SandboxResult:
    # nsjail sets the rlimits itself inside the jail; rlimits on nsjail would bind nsjail.
    preexec = _rlimits(limits, with_nproc=True, with_rlimits=backend.name != "nsjail",
                       cgroup=cgroup)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=backend.env(scratch), cwd=scratch,
                            start_new_session=True, preexec_fn=preexec)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    kill_lock = threading.Lock()
    timed_out = threading.Event()

    def kill() -> None:
        with kill_lock:
            if proc.returncode is None:
                _kill_group(proc.pid, tree=not backend.isolated)

    def on_wall() -> None:
        timed_out.set()
        kill()

    out = _Capture(proc.stdout.fileno(), limits.max_output_bytes, kill)
    err = _Capture(proc.stderr.fileno(), limits.max_output_bytes, kill)
    threading.Thread(target=_feed, args=(proc.stdin, stdin.encode()), daemon=True).start()
    timer = threading.Timer(limits.wall_seconds, on_wall)
    timer.start()
    try:
        # wait4 rather than Popen.wait: its rusage says how much CPU the tree used.
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    duration = time.monotonic() - start
    with kill_lock:
        proc.returncode = os.waitstatus_to_exitcode(status)
    # Leftovers (background children, escapees in the cgroup) go too; their pipes then close.
    _kill_group(proc.pid, tree=False)
    if cgroup is not None:
        cgroup.kill_members()
    for capture in (out, err):
        capture.thread.join(timeout=2.0)
    proc.stdout.close()
    proc.stderr.close()

    exit_code, sig = _decode(status, isolated=backend.isolated)
    cpu = usage.ru_utime + usage.ru_stime
    stderr_text = err.text()
    limit = _limit_hit(exit_code=exit_code, sig=sig, cpu=cpu, timed_out=timed_out.is_set(),
                       truncated=out.truncated or err.truncated, stderr=stderr_text,
                       limits=limits, pids_max_hit=cgroup is not None and cgroup.limit_reached())
    return SandboxResult(stdout=out.text(), stderr=stderr_text, exit_code=exit_code, signal=sig,
                         timed_out=timed_out.is_set(), limit_hit=limit, duration_s=duration,
                         backend=backend.name, stdout_truncated=out.truncated,
                         stderr_truncated=err.truncated, cpu_s=cpu)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        if data:
            pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass


def _decode(status: int, *, isolated: bool) -> tuple[int | None, int | None]:
    """(exit_code, signal). bwrap and nsjail report a signalled child as exit 128+N."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    if isolated and 128 < code < 128 + 65:
        return None, code - 128
    return code, None


def _limit_hit(*, exit_code: int | None, sig: int | None, cpu: float, timed_out: bool,
               truncated: bool, stderr: str, limits: SandboxLimits,
               pids_max_hit: bool = False) -> LimitHit:
    """Name the limit the evidence points at; None when the program ended on its own terms."""
    if truncated:
        return "output"
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and not timed_out
                                 and cpu >= limits.cpu_seconds * 0.9):
        return "cpu"
    failed = exit_code != 0 or timed_out
    if pids_max_hit or (failed and _PROCESSES.search(stderr)):
        return "processes"
    if failed and _MEMORY.search(stderr):
        return "memory"
    if sig == signal.SIGXFSZ or (failed and _FILE_SIZE.search(stderr)):
        return "file_size"
    if timed_out:
        return "wall"
    return None
