"""DockerRuntime against a real Docker engine: built env images run episodes, a killed
container fails its episode clearly and an EnvPool replaces it, a container that never
becomes healthy or exits times out / fails with its logs, a missing image names how to
build it, orphans of dead processes are reaped, and no container is left behind.

The engine is the one at DOCKER_HOST if it answers, else `scripts/docker_engine.sh start`
(root); images are built by that script (the base image once, ~1 min; env images ~15 s,
~2 s when cached).
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

docker = pytest.importorskip("docker", reason="the docker SDK is not installed: pip install docker")

from forge_env import ConnectionClosedError, RuntimeStartError  # noqa: E402
from forge_env.runtime import EnvPool  # noqa: E402
from forge_env.runtime._docker import (  # noqa: E402
    MANAGED_LABEL,
    OWNER_HOST_LABEL,
    OWNER_PID_LABEL,
    DockerRuntime,
    reap_orphans,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "docker_engine.sh"
BASE_IMAGE = "local/python-base:bookworm"
# Every built-in env: each image builds from its Dockerfile and runs episodes.
ENV_IMAGES = {
    name: f"forge-env/{name}:latest"
    for name in ("guess_number", "echo", "countdown", "frozen_lake", "python_code")
}
SLEEPER_IMAGE = "forge-env-test/sleeper:latest"
MANAGED = {"label": f"{MANAGED_LABEL}=1"}


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def _ping(host: str | None) -> bool:
    if not host:
        return False
    try:
        docker.DockerClient(base_url=host, timeout=5).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def engine():
    """A Docker client on a running engine with the base, env and sleeper images built."""
    saved = os.environ.get("DOCKER_HOST")
    host = saved if _ping(saved) else None
    if host is None:
        if os.geteuid() != 0:
            pytest.skip("no Docker engine answers at DOCKER_HOST and starting one needs root "
                        "(run `sudo scripts/docker_engine.sh start` and export DOCKER_HOST)")
        started = _script("start", timeout=600)
        exports = [ln for ln in started.stdout.splitlines() if ln.startswith("export DOCKER_HOST=")]
        if started.returncode != 0 or not exports:
            pytest.skip(f"scripts/docker_engine.sh start could not start dockerd here:\n{started.stderr[-2000:]}")
        host = exports[-1].split("=", 1)[1]
    started_here = host != saved
    os.environ["DOCKER_HOST"] = host
    timings: dict[str, float] = {}
    for step in (["base-image"], *(["env-image", name] for name in ENV_IMAGES)):
        t = time.monotonic()
        built = _script(*step, timeout=900)
        timings[" ".join(step)] = time.monotonic() - t
        if built.returncode != 0:
            pytest.skip(f"`scripts/docker_engine.sh {' '.join(step)}` failed (no Debian mirror or "
                        f"package index reachable?):\n{built.stderr[-2000:]}")
    client = docker.DockerClient(base_url=host)
    # An image whose server never comes up: it prints, then sleeps.
    dockerfile = (
        f"FROM {BASE_IMAGE}\n"
        "CMD [\"python3\", \"-u\", \"-c\", \"print('booting forever'); import time; time.sleep(3600)\"]\n"
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=SLEEPER_IMAGE, rm=True)
    print(f"\ndocker engine at {host}; image steps (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), file=sys.stderr)
    yield client
    try:
        leftovers = client.containers.list(all=True, filters=MANAGED)
        for c in leftovers:
            c.remove(force=True)
        assert not leftovers, f"containers left behind: {[c.name for c in leftovers]}"
    finally:
        client.close()
        if started_here:  # images stay cached in .docker/; the next start takes ~0.5 s
            _script("stop", timeout=120)
        if saved is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = saved


def _ours(client) -> list:
    return client.containers.list(all=True, filters={"label": f"{OWNER_PID_LABEL}={os.getpid()}"})


async def _play_guess_number(env) -> tuple[float, int]:
    obs, _ = await env.reset(seed=5)
    lo, hi = obs.lo, obs.hi
    for turn in range(1, 7):
        obs, reward, terminated, truncated, _ = await env.step({"guess": (lo + hi) // 2})
        if terminated or truncated:
            return reward, turn
        lo, hi = obs.lo, obs.hi
    raise AssertionError("binary search over 1..16 must finish within 6 turns")


async def _play_one_episode(name: str, env) -> None:
    """One episode of built-in env ``name`` with a policy that knows the answer."""
    if name == "guess_number":
        reward, turns = await _play_guess_number(env)
        assert reward == 1.0 and 1 <= turns <= 5
    elif name == "echo":
        await env.reset(seed=1)
        obs, reward, *_ = await env.step({"message": "hello"})
        assert "hello" in obs.model_dump_json() and reward == pytest.approx(0.5)
    elif name == "countdown":
        obs, _ = await env.reset(seed=3)
        obs, reward, terminated, *_ = await env.step(
            {"type": "call_tool", "tool_name": "calculator", "arguments": {"expression": "2*(3+4)"}}
        )
        assert obs.result in (14, "14") and not terminated
    elif name == "frozen_lake":
        await env.reset(seed=0)
        reward = 0.0
        for move in ("right", "right", "down", "down", "down", "right"):  # the 4x4 map's safe path
            obs, reward, terminated, *_ = await env.step({"action": move})
        assert reward == 1.0 and terminated
    elif name == "python_code":
        from envs.python_code import TASKS

        obs, _ = await env.reset(options={"index": 0})
        # model-written code runs in the container's sandbox: an endless loop is stopped...
        obs, *_ = await env.step({"type": "call_tool", "tool_name": "run_python",
                                  "arguments": {"code": "while True:\n    pass"}})
        assert obs.limit_hit in ("cpu", "wall"), obs.text
        # ...and the env keeps serving: the reference solution solves the task
        obs, reward, terminated, _, info = await env.step({"type": "submit", "code": TASKS[0].solution})
        assert reward == 1.0 and terminated and info["solved"] is True
    else:  # pragma: no cover - a new built-in env needs a case here
        raise AssertionError(f"no episode written for {name}")


async def test_env_images_run_episodes_in_locked_down_containers(engine):
    for name, image in ENV_IMAGES.items():
        runtime = DockerRuntime(image, startup_timeout=60)
        t = time.monotonic()
        async with runtime:
            start_s = time.monotonic() - t
            assert runtime.url == f"http://127.0.0.1:{runtime.port}"
            assert await runtime.health()
            attrs = engine.containers.get(runtime.container_id).attrs
            host_cfg = attrs["HostConfig"]
            assert host_cfg["CapDrop"] == ["ALL"]
            assert "no-new-privileges" in host_cfg["SecurityOpt"]
            assert host_cfg["ReadonlyRootfs"] is True and "/tmp" in host_cfg["Tmpfs"]
            assert host_cfg["Memory"] == 512 * 1024**2
            assert host_cfg["PidsLimit"] == 256 and host_cfg["NanoCpus"] == 1_000_000_000
            assert host_cfg["PortBindings"] == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(runtime.port)}]}
            assert attrs["Config"]["User"] == "10001"
            assert attrs["Config"]["Labels"][OWNER_PID_LABEL] == str(os.getpid())
            for _ in range(3):
                async with await runtime.session() as env:
                    await _play_one_episode(name, env)
            container_id = runtime.container_id
        print(f"{image}: healthy after {start_s:.2f}s", file=sys.stderr)
        assert start_s < 30
        assert runtime.url is None and runtime.container_id is None
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(container_id)


async def test_killed_container_fails_the_episode_and_the_pool_replaces_it(engine):
    # A bare session: the client sees the connection drop.
    async with DockerRuntime(ENV_IMAGES["guess_number"]) as runtime:
        env = await runtime.session()
        await env.reset(seed=1)
        engine.containers.get(runtime.container_id).kill()
        with pytest.raises(ConnectionClosedError):
            await env.step({"guess": 8})
        await env.close()
        assert not await runtime.health()

    pool = EnvPool(lambda: DockerRuntime(ENV_IMAGES["guess_number"]), size=1,
                   health_interval=0.5, lease_timeout=30)
    async with pool:
        runtime = pool.runtimes[0]
        first = runtime.container_id
        with pytest.raises(ConnectionClosedError, match="died during this lease"):
            async with pool.lease() as env:
                await env.reset(seed=2)
                engine.containers.get(first).kill()
                await env.step({"guess": 8})
        t = time.monotonic()
        async with pool.lease() as env:  # waits for the replacement
            reward, _ = await _play_guess_number(env)
        replaced_s = time.monotonic() - t
        assert reward == 1.0
        assert pool.runtimes[0].container_id not in (None, first)
        stats = pool.stats()
        assert stats["restarts"] == 1 and stats["failures"] >= 1 and stats["healthy"] == 1
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(first)
        print(f"replacement container serving after {replaced_s:.2f}s", file=sys.stderr)
        assert replaced_s < 30
    assert _ours(engine) == []


async def test_never_healthy_container_times_out_with_its_logs(engine):
    runtime = DockerRuntime(SLEEPER_IMAGE, startup_timeout=3, stop_timeout=0)
    t = time.monotonic()
    with pytest.raises(RuntimeStartError, match=r"did not answer GET /health within startup_timeout=3s") as err:
        await runtime.start()
    assert 3 <= time.monotonic() - t < 15
    assert "booting forever" in err.value.logs and "booting forever" in str(err.value)
    assert not runtime.running and _ours(engine) == []


async def test_container_that_exits_fails_fast_with_exit_code_and_logs(engine):
    runtime = DockerRuntime(ENV_IMAGES["echo"], startup_timeout=60,
                            command=["python3", "-c", "print('boom: bad config'); raise SystemExit(3)"])
    t = time.monotonic()
    with pytest.raises(RuntimeStartError, match="exited with code 3") as err:
        await runtime.start()
    assert time.monotonic() - t < 15  # not the 60 s deadline
    assert "boom: bad config" in err.value.logs
    assert _ours(engine) == []


@pytest.mark.parametrize("pull", ["never", "if-missing"])
async def test_missing_image_names_how_to_build_it(engine, pull):
    runtime = DockerRuntime("forge-env/no_such_env:latest", pull=pull)
    with pytest.raises(RuntimeStartError) as err:
        await runtime.start()
    message = str(err.value)
    assert "'forge-env/no_such_env:latest'" in message
    assert "scripts/docker_engine.sh env-image no_such_env" in message
    assert _ours(engine) == []


async def test_unreachable_engine_is_a_clear_error(tmp_path):
    runtime = DockerRuntime(ENV_IMAGES["echo"], docker_host=f"unix://{tmp_path}/nope.sock")
    with pytest.raises(RuntimeStartError, match="cannot reach a Docker engine at unix://.*scripts/docker_engine.sh start"):
        await runtime.start()


async def test_reap_orphans_removes_containers_of_dead_owners_only(engine):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    common = dict(image=BASE_IMAGE, command=["sleep", "600"], detach=True)
    orphan = engine.containers.run(
        labels={MANAGED_LABEL: "1", OWNER_PID_LABEL: str(dead.pid), OWNER_HOST_LABEL: os.uname().nodename},
        **common)
    mine = engine.containers.run(
        labels={MANAGED_LABEL: "1", OWNER_PID_LABEL: str(os.getpid()), OWNER_HOST_LABEL: os.uname().nodename},
        **common)
    try:
        removed = await asyncio.to_thread(reap_orphans, engine)
        assert orphan.id in removed and mine.id not in removed
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(orphan.id)
        assert engine.containers.get(mine.id).status == "running"
    finally:
        for c in (orphan, mine):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


CHILD = """
import asyncio, os, sys, time
from forge_env.runtime import DockerRuntime
async def main():
    runtime = DockerRuntime(sys.argv[1])
    await runtime.start()
    print(runtime.container_id, flush=True)
    if sys.argv[2] == "hang":
        time.sleep(600)
asyncio.run(main())   # exits without stop(): the finalizer removes the container
"""


async def test_containers_do_not_outlive_their_process(engine, tmp_path):
    script = tmp_path / "docker_child.py"
    script.write_text(CHILD)
    image = ENV_IMAGES["echo"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # Exits without stopping the runtime: removed at interpreter exit.
    done = subprocess.run([sys.executable, str(script), image, "exit"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(done.stdout.strip())

    # SIGKILLed: its container stays until the next DockerRuntime start reaps it.
    child = subprocess.Popen([sys.executable, str(script), image, "hang"], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        orphan = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
    finally:
        child.kill()
        child.wait(10)
    orphan = orphan.strip()
    assert engine.containers.get(orphan).status == "running"
    async with DockerRuntime(image) as runtime:
        assert runtime.container_id != orphan
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(orphan)
