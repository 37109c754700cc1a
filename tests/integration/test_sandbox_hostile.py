"""Real sandboxed runs on every backend: normal code, then hostile code (network, writes
and reads outside scratch, fork bomb, memory hog, infinite loop, sleep, huge output). Each
hostile run must be contained, name the limit it hit, and leave the sandbox usable.

Backends that cannot run here skip with the reason from ``available_backends()``
(``scripts/install_sandbox_tools.sh .venv`` installs bubblewrap and nsjail)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge_env.sandbox import SandboxLimits, arun_code, available_backends, run_code
from forge_env.sandbox._cgroup import PidsCgroup

pytestmark = pytest.mark.sandbox

# Small limits keep the hostile cases fast (each ends in ~1-2 s at most).
LIMITS = SandboxLimits(cpu_seconds=1, wall_seconds=2.0, memory_mb=128, max_processes=16,
                       max_output_bytes=4096, file_size_mb=1)
ISOLATED = ("bubblewrap", "nsjail")


def _skip_unless_usable(name: str) -> None:
    reason = available_backends()[name]
    if reason is not None:
        pytest.skip(f"sandbox backend {name} unavailable: {reason}")


@pytest.fixture(params=["bubblewrap", "nsjail", "rlimit"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    _skip_unless_usable(request.param)
    yield request.param
    # After every case, hostile or not, a normal run must still work.
    after = run_code("print('still fine')", backend=request.param, limits=LIMITS)
    assert (after.stdout, after.exit_code, after.limit_hit) == ("still fine\n", 0, None)


@pytest.fixture(params=ISOLATED)
def isolated(request: pytest.FixtureRequest) -> str:
    _skip_unless_usable(request.param)
    return str(request.param)


def test_normal_code_output_exit_code_stdin_files(backend: str) -> None:
    code = "import sys\nprint(sys.stdin.read().upper(), open('data/in.txt').read())\nsys.exit(3)"
    result = run_code(code, backend=backend, limits=LIMITS, stdin="abc",
                      files={"data/in.txt": "file-text"})
    assert result.stdout == "ABC file-text\n"
    assert (result.exit_code, result.signal, result.limit_hit, result.backend) == (3, None, None, backend)
    assert not result.timed_out and result.duration_s < 2.0


def test_bash_language(backend: str) -> None:
    result = run_code("read x; echo \"got $x\"; exit 4", language="bash", backend=backend,
                      limits=LIMITS, stdin="hi\n")
    assert (result.stdout, result.exit_code) == ("got hi\n", 4)


def test_scratch_is_writable(backend: str) -> None:
    result = run_code("open('out.txt','w').write('x'*10); print(len(open('out.txt').read()))",
                      backend=backend, limits=LIMITS)
    assert (result.stdout, result.exit_code) == ("10\n", 0)


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP server on the host's 127.0.0.1 that accepts connections."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    server.close()


CONNECT = """
import socket
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=1).close()
    print('connected')
except OSError as e:
    print('blocked', type(e).__name__)
"""


def test_network_is_cut(isolated: str, host_listener: int) -> None:
    result = run_code(CONNECT.format(port=host_listener), backend=isolated, limits=LIMITS)
    assert result.stdout.startswith("blocked"), result


def test_rlimit_backend_does_not_cut_the_network_and_warns(
    host_listener: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="forge_env.sandbox"):
        result = run_code(CONNECT.format(port=host_listener), backend="rlimit", limits=LIMITS)
    # Documented: rlimit is no boundary. The connection goes through, and a warning says so.
    assert result.stdout == "connected\n"
    assert any("NOT a security boundary" in r.getMessage() for r in caplog.records)


def test_writes_outside_scratch_fail(isolated: str) -> None:
    home_file = Path.home() / f"forge-sandbox-{uuid.uuid4().hex}"
    targets = ["/etc/forge-sandbox-x", "/usr/forge-sandbox-x", str(home_file), "/forge-x"]
    code = ("import sys\nfor p in sys.argv[1:] or %r:\n"
            "    try:\n        open(p, 'w').write('x'); print('WROTE', p)\n"
            "    except OSError as e:\n        print('denied', p, e.errno)\n") % (targets,)
    result = run_code(code, backend=isolated, limits=LIMITS)
    assert result.exit_code == 0 and "WROTE" not in result.stdout, result.stdout
    assert result.stdout.count("denied") == len(targets)
    assert not home_file.exists() and not Path("/etc/forge-sandbox-x").exists()


def test_host_files_are_invisible(isolated: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    code = (f"import os\nprint(os.path.exists({str(secret)!r}), os.path.exists('/etc/passwd'), "
            f"os.path.exists({str(Path.home() / '.bashrc')!r}), sorted(os.listdir('/etc')))")
    result = run_code(code, backend=isolated, limits=LIMITS)
    assert result.stdout.startswith("False False False"), result
    assert "hunter2" not in result.stdout


def test_fork_bomb_hits_processes(backend: str) -> None:
    if os.geteuid() == 0:
        probe = PidsCgroup.create(4)
        if probe is None:
            pytest.skip("running as root without a writable pids cgroup (/sys/fs/cgroup/pids): "
                        "RLIMIT_NPROC does not bind root (measured: 100 forks passed a limit "
                        "of 16 on every backend), so a fork bomb would load the host")
        probe.destroy()
    start = time.monotonic()
    result = run_code("import os\nwhile True:\n    os.fork()", backend=backend, limits=LIMITS)
    assert result.limit_hit == "processes", result
    assert time.monotonic() - start < 3.0
    assert not list(Path("/sys/fs/cgroup/pids").glob("forge-sandbox-*"))  # cleaned up


def test_memory_hog_hits_memory(backend: str) -> None:
    result = run_code("x = bytearray(10**9)", backend=backend, limits=LIMITS)
    assert result.limit_hit == "memory" and "MemoryError" in result.stderr, result


def test_infinite_loop_hits_cpu(backend: str) -> None:
    result = run_code("while True: pass", backend=backend, limits=LIMITS)
    assert result.limit_hit == "cpu" and not result.timed_out, result
    assert result.exit_code is None and result.signal is not None
    assert 0.9 <= result.duration_s < 2.0


def test_sleep_forever_hits_wall(backend: str) -> None:
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=0.5, memory_mb=128)
    result = run_code("import time\nprint('start', flush=True)\ntime.sleep(1000)",
                      backend=backend, limits=limits)
    assert (result.limit_hit, result.timed_out, result.stdout) == ("wall", True, "start\n")
    assert 0.5 <= result.duration_s < 1.5


def test_huge_output_is_truncated(backend: str) -> None:
    result = run_code("while True: print('x' * 1000)", backend=backend, limits=LIMITS)
    assert (result.limit_hit, result.stdout_truncated) == ("output", True)
    assert result.stdout.startswith("x" * 1000)
    assert len(result.stdout.encode()) < LIMITS.max_output_bytes + 100
    assert result.stdout.endswith("[forge-env sandbox: truncated at 4096 bytes]")
    assert result.duration_s < 1.5


def test_file_size_limit(backend: str) -> None:
    result = run_code("open('big', 'wb').write(b'x' * (4 * 2**20))", backend=backend, limits=LIMITS)
    assert result.limit_hit == "file_size", result


async def test_arun_code_runs_concurrently_without_blocking_the_loop() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(200):
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    start = time.monotonic()
    results = await asyncio.gather(*(arun_code(f"import time; time.sleep(0.5); print({i})",
                                               limits=LIMITS) for i in range(4)))
    elapsed = time.monotonic() - start
    tick_task.cancel()
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)]
    assert elapsed < 1.5  # four 0.5 s runs overlapped
    assert ticks >= 20  # the loop kept running meanwhile


def test_auto_choice_prefers_isolation() -> None:
    found = available_backends()
    expected = next(name for name in ("bubblewrap", "nsjail", "rlimit") if found[name] is None)
    assert run_code("print(1)", limits=LIMITS).backend == expected


def test_exec_latency(backend: str) -> None:
    durations = []
    for _ in range(20):
        start = time.perf_counter()
        assert run_code("print(1)", backend=backend, limits=LIMITS).stdout == "1\n"
        durations.append(time.perf_counter() - start)
    median = statistics.median(durations)
    print(f"\nsandbox exec latency {backend}: median {median * 1000:.1f} ms over 20 runs")
    assert median < 0.5
