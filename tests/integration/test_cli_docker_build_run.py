"""`forge-env build` and `forge-env run` as subprocesses against a real Docker engine: a
built-in env builds into an image that then exists, `run` serves it on a loopback port until
SIGINT (exit 0, no container left), a user env folder outside the repository builds and runs,
and a missing env, a failing build and an unreachable engine each give one clear line, exit 2.

The engine and base image come from test_docker_runtime's `engine` fixture (it uses the
engine at DOCKER_HOST when one answers, else starts `scripts/docker_engine.sh start`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

docker = pytest.importorskip("docker", reason="the docker SDK is not installed: pip install docker")

from test_docker_runtime import engine  # noqa: E402,F401 - the shared engine fixture

from forge_env.client import RemoteEnv  # noqa: E402
from forge_env.runtime import DockerRuntime  # noqa: E402
from forge_env.runtime._docker import ENV_LABEL, OWNER_PID_LABEL  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None,
         cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge_env.cli", *args], capture_output=True, text=True,
        timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})},
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> list[str]:
    """Read stdout lines until one starts with ``prefix`` (bounded by ``timeout``)."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(lines) < 100:
        line = proc.stdout.readline()
        if not line:  # exited
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(prefix):
            return lines
    proc.kill()
    raise AssertionError(f"no {prefix!r} line in time; stdout {lines}, stderr {proc.stderr.read()}")


@pytest.mark.docker
@pytest.mark.slow
def test_build_then_run_echo_until_sigint(engine):  # noqa: F811
    started = time.monotonic()
    built = _cli("build", "echo")
    build_s = time.monotonic() - started
    assert built.returncode == 0, built.stderr
    assert built.stdout.strip().splitlines()[-1] == "forge-env/echo:latest"
    assert "Step 1/" in built.stderr and "built forge-env/echo:latest" in built.stderr
    image = engine.images.get("forge-env/echo:latest")
    assert image.labels[ENV_LABEL] == "echo"

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge_env.cli", "run", "echo", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        lines = _wait_for_line(proc, "Serving", timeout=90)
        url = f"http://127.0.0.1:{port}"
        assert lines[-1].startswith(f"Serving forge-env/echo:latest on {url}")
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "healthy"
        ours = engine.containers.list(filters={"label": f"{OWNER_PID_LABEL}={proc.pid}"})
        assert len(ours) == 1 and ours[0].attrs["HostConfig"]["Memory"] == 512 * 2**20

        async def episode() -> tuple[str, float]:
            async with RemoteEnv(url) as env:
                await env.reset(seed=1)
                obs, reward, *_ = await env.step({"message": "hello"})
                return obs.echoed_message, reward

        assert asyncio.run(episode()) == ("hello", pytest.approx(0.5))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "removed" in out
    assert engine.containers.list(all=True, filters={"label": f"{OWNER_PID_LABEL}={proc.pid}"}) == []
    print(f"\nforge-env build echo: {build_s:.1f}s", file=sys.stderr)


_TINY_ENV = '''
from forge_env.env import Action, AsyncEnv, Observation, ResetResult, State, StepResult


class CountAction(Action):
    add: int


class CountObservation(Observation):
    total: int


class CountEnv(AsyncEnv[CountObservation, CountAction]):
    """Add numbers; the episode ends when the total reaches 10."""

    action_type = CountAction
    observation_type = CountObservation

    def __init__(self) -> None:
        self.total = 0

    async def reset(self, *, seed=None, options=None):
        self.total = 0
        return ResetResult(CountObservation(total=0), {})

    async def step(self, action):
        self.total += self.parse_action(action).add
        done = self.total >= 10
        return StepResult(CountObservation(total=self.total), float(done), done, False, {})

    async def state(self):
        return State(step_count=self.total)
'''

_TINY_APP = '''
from forge_env.server import create_app, serve_main

from envs.tiny_counter.env import CountEnv

app = create_app(CountEnv)

if __name__ == "__main__":
    serve_main(app)
'''

_TINY_DOCKERFILE = '''
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_ARGS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY forge_env ./forge_env
COPY envs ./envs
RUN python3 -m pip install $PIP_ARGS "." && useradd --create-home --uid 10001 forge
USER 10001
EXPOSE 8000
CMD ["python3", "-m", "envs.tiny_counter.server.app", "--host", "0.0.0.0", "--port", "8000"]
'''


def _tiny_env(root: Path) -> Path:
    folder = root / "tiny_counter"
    (folder / "server").mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "env.py").write_text(textwrap.dedent(_TINY_ENV))
    (folder / "server" / "__init__.py").write_text("")
    (folder / "server" / "app.py").write_text(textwrap.dedent(_TINY_APP))
    (folder / "Dockerfile").write_text(_TINY_DOCKERFILE.lstrip())
    return folder


@pytest.mark.docker
@pytest.mark.slow
async def test_user_env_folder_outside_the_repo_builds_and_runs(engine, tmp_path):  # noqa: F811
    folder = _tiny_env(tmp_path)
    assert not (REPO / "envs" / folder.name).exists()  # really a folder outside the checkout
    tag = "forge-env/tiny_counter:latest"
    try:
        started = time.monotonic()
        # From another directory, with a relative path: the context is the checkout's sources
        # plus this folder as envs/tiny_counter/.
        built = await asyncio.to_thread(_cli, "build", "./tiny_counter", cwd=tmp_path)
        assert built.returncode == 0, built.stderr
        assert built.stdout.strip().splitlines()[-1] == tag
        print(f"\nforge-env build ./tiny_counter: {time.monotonic() - started:.1f}s", file=sys.stderr)
        async with DockerRuntime(tag, pull="never") as runtime:
            async with await runtime.session() as env:
                obs, _ = await env.reset()
                assert obs.total == 0
                obs, reward, terminated, *_ = await env.step({"add": 4})
                assert (obs.total, reward, terminated) == (4, 0.0, False)
                obs, reward, terminated, *_ = await env.step({"add": 6})
                assert (obs.total, reward, terminated) == (10, 1.0, True)
    finally:
        try:
            engine.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.mark.docker
@pytest.mark.slow
def test_failing_build_prints_one_error_line_and_the_log_tail(engine, tmp_path):  # noqa: F811
    folder = tmp_path / "broken_env"
    folder.mkdir()
    (folder / "Dockerfile").write_text(
        "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n"
        "RUN echo 'about to fail: marker-4711' && exit 3\n"
    )
    built = _cli("build", str(folder), "--tag", "forge-env-test/broken:latest")
    assert built.returncode == 2
    err = built.stderr.splitlines()
    errors = [ln for ln in err if ln.startswith("forge-env build: error:")]
    assert len(errors) == 1 and "building forge-env-test/broken:latest" in errors[0]
    assert "non-zero code: 3" in errors[0]
    assert any("marker-4711" in ln for ln in err[err.index(errors[0]):])
    assert "Traceback" not in built.stderr


def test_missing_env_or_dockerfile_is_one_line_exit_2(tmp_path):
    unknown = _cli("build", "no_such_env", timeout=60)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].startswith(
        "forge-env build: error: no built-in env 'no_such_env' with a Dockerfile (built-in: "
    )
    assert "guess_number" in unknown.stderr
    empty = tmp_path / "empty_env"
    empty.mkdir()
    no_dockerfile = _cli("build", str(empty), timeout=60)
    assert no_dockerfile.returncode == 2
    assert no_dockerfile.stderr.strip().splitlines()[-1] == (
        f"forge-env build: error: {str(empty)!r} has no Dockerfile: add one "
        "(envs/echo/Dockerfile is a template)"
    )


def test_unreachable_engine_names_the_start_script(tmp_path):
    gone = {"DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    for args in (["run", "echo"], ["build", "echo"]):
        done = _cli(*args, env=gone, timeout=60)
        assert done.returncode == 2, done.stderr
        errors = [ln for ln in done.stderr.splitlines() if "error:" in ln]
        assert len(errors) == 1 and "scripts/docker_engine.sh start" in errors[0], done.stderr
        assert "Traceback" not in done.stderr and "removed" not in done.stdout
