"""LocalProcessRuntime against real subprocess servers: start, episodes, stop with nothing
left behind (children included), fast startup failures, restarts, and a dying parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from forge_env import RuntimeStartError
from runtime_test_env import alive, counter_env_source

from forge_env.runtime import EnvRuntime, LocalProcessRuntime, RuntimeState

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]

COUNTER_SOURCE = counter_env_source(done_at=10)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


@pytest.fixture
def counter_spec(tmp_path) -> str:
    path = tmp_path / "rt_counter_env.py"
    path.write_text(COUNTER_SOURCE)
    return f"{path}:CounterEnv"


async def test_start_episode_stop_leaves_no_process(counter_spec, tmp_path):
    log_file = tmp_path / "server.log"
    runtime = LocalProcessRuntime(counter_spec, log_file=log_file)
    assert isinstance(runtime, EnvRuntime) and runtime.url is None
    started = time.monotonic()
    await runtime.start()
    startup_s = time.monotonic() - started
    try:
        pid = runtime.pid
        assert pid is not None and alive(pid)
        assert os.getpgid(pid) == pid  # its own process group
        assert runtime.url == f"http://127.0.0.1:{runtime.port}" and await runtime.health()
        assert httpx.get(runtime.url + "/health", trust_env=False).json() == {"status": "healthy"}
        async with await runtime.session() as env:
            obs, _ = await env.reset(seed=3)
            assert (obs.n, obs.pid) == (3, pid)  # served by that process
            rewards = []
            for _ in range(10):
                result = await env.step({"by": 4})
                rewards.append(result.reward)
                if result.terminated:
                    break
            assert result.observation.n == 11 and rewards == [4.0, 4.0]
    finally:
        stop_started = time.monotonic()
        await runtime.stop()
        stop_s = time.monotonic() - stop_started
    assert runtime.state is RuntimeState.STOPPED and runtime.url is None
    assert not alive(pid) and runtime.returncode is not None
    assert not await runtime.health()
    assert runtime.log_path == log_file and "Application startup complete" in log_file.read_text()
    assert startup_s < 15 and stop_s < 5, (startup_s, stop_s)


async def test_stop_kills_children_and_strays(tmp_path):
    pid_file = tmp_path / "children.txt"
    module = tmp_path / "rt_spawning_env.py"
    module.write_text(
        COUNTER_SOURCE
        + textwrap.dedent(
            f"""
            import subprocess, sys
            _sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
            _child = subprocess.Popen(_sleep)                            # same process group
            _stray = subprocess.Popen(_sleep, start_new_session=True)   # left the group
            open({str(pid_file)!r}, "w").write(f"{{_child.pid}} {{_stray.pid}}")
            """
        )
    )
    runtime = LocalProcessRuntime(f"{module}:CounterEnv", stop_timeout=2.0)
    await runtime.start()
    server_pid = runtime.pid
    child, stray = (int(p) for p in pid_file.read_text().split())
    assert alive(child) and alive(stray)
    assert {child, stray} <= {p.pid for p in psutil.Process(server_pid).children(recursive=True)}
    await runtime.stop()
    assert wait_gone([server_pid, child, stray], timeout=2.0) == []


async def test_import_error_fails_fast_with_the_traceback(tmp_path):
    module = tmp_path / "rt_broken_env.py"
    module.write_text("import os\nraise RuntimeError('boom at import ' + 'x' * 3)\n")
    runtime = LocalProcessRuntime(f"{module}:Env", startup_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(RuntimeStartError) as info:
        await runtime.start()
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # the process exit is noticed, not the 30 s deadline
    err = info.value
    assert "exited with code 1" in err.message and str(runtime.log_path) in err.message
    assert "Traceback (most recent call last)" in err.logs and "RuntimeError: boom at import xxx" in err.logs
    assert "--- server log (tail) ---" in str(err)
    assert runtime.state is RuntimeState.NEW and runtime.pid is None and runtime.returncode == 1


async def test_startup_timeout_stops_the_hung_server(tmp_path):
    pid_file = tmp_path / "pid.txt"
    module = tmp_path / "rt_slow_env.py"
    module.write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "print('importing slowly', flush=True)\ntime.sleep(60)\n"
    )
    runtime = LocalProcessRuntime(f"{module}:Env", startup_timeout=1.5, stop_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(RuntimeStartError, match=r"did not answer GET /health within startup_timeout=1.5s") as info:
        await runtime.start()
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 5, elapsed
    assert "importing slowly" in info.value.logs
    assert wait_gone([int(pid_file.read_text())], timeout=1.0) == []


async def test_kill9_then_restart_gives_a_new_process_on_the_same_url(counter_spec):
    async with LocalProcessRuntime(counter_spec) as runtime:
        old_pid, url = runtime.pid, runtime.url
        os.kill(old_pid, signal.SIGKILL)
        for _ in range(100):
            if not await runtime.health():
                break
            await asyncio.sleep(0.02)
        assert not await runtime.health()
        await runtime.restart()
        assert runtime.restarts == 1 and runtime.url == url and runtime.pid != old_pid
        assert await runtime.health() and not alive(old_pid)
        async with await runtime.session() as env:
            assert (await env.reset(seed=1))[0].pid == runtime.pid
        log = runtime.log_path.read_text()
        assert log.count("--- forge-env: starting") == 2  # one log across restarts
    assert not alive(runtime.pid or 0)


async def test_class_spec_gives_typed_sessions(tmp_path, monkeypatch):
    (tmp_path / "rt_typed_env.py").write_text(COUNTER_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import rt_typed_env

    runtime = LocalProcessRuntime(rt_typed_env.CounterEnv, env={"PYTHONPATH": str(tmp_path)})
    assert runtime.spec == "rt_typed_env:CounterEnv"
    async with runtime:
        async with await runtime.session() as env:
            obs, _ = await env.reset(seed=2)
            assert type(obs) is rt_typed_env.Count and obs.n == 2


def test_class_from_main_is_rejected():
    class Local:
        __module__ = "__main__"
        __qualname__ = "Local"

    with pytest.raises(ValueError, match="cannot import"):
        LocalProcessRuntime(Local)  # type: ignore[arg-type]


def _run_parent(script: str, tmp_path: Path) -> tuple[int, str]:
    """Run a parent process that starts a server; return (server pid, parent stdout)."""
    path = tmp_path / "parent.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert "SERVER_PID" in out.stdout, out.stderr[-3000:]
    pid = int(out.stdout.split("SERVER_PID ")[1].split()[0])
    return pid, out.stdout


PARENT_PREFIX = """
    import asyncio, os, signal, sys
    from forge_env.runtime import LocalProcessRuntime

    async def main():
        runtime = LocalProcessRuntime({spec!r})
        await runtime.start()
        print("SERVER_PID", runtime.pid, flush=True)
        return runtime
"""


def test_parent_exiting_without_stop_still_stops_the_server(counter_spec, tmp_path):
    # Normal interpreter exit: the runtime's finalizer (atexit) ends the server.
    pid, _ = _run_parent(
        textwrap.dedent(PARENT_PREFIX).format(spec=counter_spec) + "runtime = asyncio.run(main())\n",
        tmp_path,
    )
    assert wait_gone([pid], timeout=1.0) == [], "server outlived its parent's exit"


def test_parent_killed_with_sigkill_server_exits_by_itself(counter_spec, tmp_path):
    # No atexit, no finalizer: the server notices its parent is gone and shuts down.
    pid, _ = _run_parent(
        textwrap.dedent(PARENT_PREFIX).format(spec=counter_spec)
        + "runtime = asyncio.run(main())\nos.kill(os.getpid(), signal.SIGKILL)\n",
        tmp_path,
    )
    assert wait_gone([pid], timeout=6.0) == [], "server outlived its SIGKILLed parent"
