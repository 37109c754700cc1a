"""The real ``forge-env`` command in subprocesses: serve, validate, play, list, stop cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge_env.cli", *args], input=stdin, capture_output=True,
        text=True, timeout=timeout, cwd=ROOT, env=_env(),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge_env.cli", "serve", "guess_number", "--port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env(),
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("forge-env serve did not become healthy in 30 s")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = _free_port()
    proc = _start_server(port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def test_validate_command_passes_against_served_env(server):
    result = _cli("validate", server, "--timeout", "10")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"forge-env validate {server}  (env 'guess_number'")
    assert any(line.startswith("ws_step ") and " PASS " in line for line in lines)
    assert "PASSED: " in lines[-1] or any(line.startswith("PASSED: ") for line in lines)

    as_json = _cli("validate", server, "--json")
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["passed"] is True and report["env_name"] == "guess_number"
    assert report["summary"]["failed"] == []
    assert {c["name"] for c in report["checks"]} >= {"health", "schema", "ws_reset", "mcp"}


def test_play_command_with_piped_stdin(server):
    # Seed 5 hides 9: binary search says 8 (higher), 12 (lower), 10 (lower), 9 (correct).
    result = _cli("play", server, "--seed", "5", stdin="8\n12\n10\n9\n:state\n:quit\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "> 8\n8 is too low: the number is higher." in out
    assert "> 12\n12 is too high: the number is lower." in out
    assert "> 10\n10 is too high: the number is lower." in out
    assert "> 9\nCorrect! The number was 9." in out
    assert "[turn 4] reward 1  return 1  done True" in out
    assert '"won": true' in out
    assert result.stderr == ""


def test_list_command():
    result = _cli("list")
    assert result.returncode == 0
    for name in ("guess_number", "echo", "countdown", "frozen_lake"):
        assert any(line.startswith(name + " ") for line in result.stdout.splitlines()), result.stdout


def test_serve_prints_how_to_use_it_and_stops_cleanly_on_ctrl_c():
    port = _free_port()
    proc = _start_server(port)
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        out = proc.stdout.read() if proc.stdout else ""
    finally:
        _stop(proc)
    url = f"http://127.0.0.1:{port}"
    assert f"Serving guess_number on {url}" in out
    assert f"forge-env validate {url}" in out and f"forge-env play {url}" in out
    assert out.rstrip().endswith("server stopped")
    assert "Traceback" not in out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=2)


def test_serve_errors_are_one_line_exit_2():
    unknown = _cli("serve", "no_such_env")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "forge-env serve: error: cannot resolve ENV spec 'no_such_env'. Run `forge-env list` for "
        "the built-in envs, or pass an env folder or module:Class"
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = _cli("serve", "guess_number", "--port", str(port))
    assert taken.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in taken.stderr
    assert "Traceback" not in taken.stderr
