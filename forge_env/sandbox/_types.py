"""What a sandboxed run may use (``SandboxLimits``) and what came of it (``SandboxResult``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["LimitHit", "SandboxLimits", "SandboxResult", "SandboxUnavailableError"]

LimitHit = Literal[None, "cpu", "wall", "memory", "processes", "output", "file_size"]
"""Which limit ended (or crippled) a run, decided from evidence, or None."""


class SandboxUnavailableError(RuntimeError):
    """The asked-for sandbox backend cannot run on this machine; the message says how to fix it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxLimits:
    """Resource limits for one run of untrusted code.

    >>> SandboxLimits(cpu_seconds=1).memory_mb
    256
    """

    cpu_seconds: int = 5
    """CPU time (RLIMIT_CPU, whole seconds): SIGXCPU at the limit, SIGKILL one second later."""
    wall_seconds: float = 10.0
    """Wall-clock time; then the whole process group (and sandbox) is SIGKILLed."""
    memory_mb: int = 256
    """Address space per process (RLIMIT_AS), in MiB."""
    max_processes: int = 32
    """Processes/threads (RLIMIT_NPROC) the code may have at once."""
    max_output_bytes: int = 64 * 1024
    """Bytes kept per stream (stdout, stderr); the run is killed once either overflows."""
    file_size_mb: int = 16
    """Largest file the code may write (RLIMIT_FSIZE), in MiB."""
    max_open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""

    def __post_init__(self) -> None:
        for name in ("cpu_seconds", "wall_seconds", "memory_mb", "max_processes",
                     "max_output_bytes", "file_size_mb", "max_open_files"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"SandboxLimits.{name} must be > 0, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxResult:
    """The outcome of one sandboxed run.

    >>> r = SandboxResult(stdout="1\\n", stderr="", exit_code=0, signal=None, timed_out=False,
    ...                   limit_hit=None, duration_s=0.05, backend="bubblewrap")
    >>> r.ok
    True
    """

    stdout: str
    """Standard output, at most ``max_output_bytes`` (see ``stdout_truncated``)."""
    stderr: str
    """Standard error, at most ``max_output_bytes`` (see ``stderr_truncated``)."""
    exit_code: int | None
    """The program's exit status; None when a signal ended it."""
    signal: int | None
    """The signal number that ended the program (e.g. 9 SIGKILL, 24 SIGXCPU), or None."""
    timed_out: bool
    """True when the wall-clock limit killed the run."""
    limit_hit: LimitHit
    """Which limit was hit, from evidence (signals, rusage, wall timer, errors in stderr)."""
    duration_s: float
    """Wall-clock seconds from start to the end of the process."""
    backend: str
    """The backend that ran the code: "bubblewrap", "nsjail" or "rlimit"."""
    stdout_truncated: bool = False
    """True when stdout went past ``max_output_bytes`` and was cut."""
    stderr_truncated: bool = False
    """True when stderr went past ``max_output_bytes`` and was cut."""
    cpu_s: float = 0.0
    """User+system CPU seconds of the run (rusage of the reaped process tree)."""

    @property
    def ok(self) -> bool:
        """True when the program exited 0 and no limit was hit."""
        return self.exit_code == 0 and self.limit_hit is None and not self.timed_out
