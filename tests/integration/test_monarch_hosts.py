"""Monarch parts on worker hosts: two ``python -m forge_env.monarch.worker`` processes on
127.0.0.1 stand in for two hosts (real Monarch workers, attached over TCP; not two machines).

- a Service of two TorchGenerator replicas placed one per host: both answer (the local
  generator's greedy tokens), their processes belong to their worker's process tree, a weight
  push reaches both;
- a MonarchLearner with one rank per host takes the one-process step (same loss, gloo over TCP);
- a fresh driver process (TCP client, as on a cluster) runs a Service over the same workers;
- a worker killed with SIGKILL ("the host dies"): its replica is declared dead, the call in
  flight on it is retried on the other host, calls go on, and nothing is left behind; a
  learner with a rank there fails with a clear error;
- an address where no worker listens is a clear error.

Run with ``-s`` to see the measurements (attach time, call overhead vs this_host, detection).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from dp_batches import dp_batch

# forge_env.monarch first: it sets the supervision poll period that Monarch reads on import.
from forge_env.monarch import ServiceConfig
from forge_env.generator import SamplingParams, TorchGenerator, TorchGeneratorConfig
from forge_env.learner import Learner, LearnerConfig

psutil = pytest.importorskip("psutil")
pytest.importorskip("monarch.actor", reason="Monarch is not installed: pip install 'forge-env[monarch]'")

from monarch.actor import Actor, concurrent_endpoint  # noqa: E402  (after the skip)

from forge_env.monarch._generator import MonarchGenerator  # noqa: E402
from forge_env.monarch._hosts import HostsConfig  # noqa: E402
from forge_env.monarch._learner import MonarchLearner  # noqa: E402
from forge_env.monarch._mesh import install_fault_hook  # noqa: E402
from forge_env.monarch._service import Service  # noqa: E402

pytestmark = [pytest.mark.monarch, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
# The workers' processes import this module (Sleeper) and run torch with one thread each.
PYTHONPATH = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
WORKER_ENV = {"PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"}
MAX_MODEL_LEN = 256
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)
PROMPTS = [[5 + i, 17, 42 + 3 * i, 9, 100 + i] for i in range(4)]
#: Losses of two ranks vs one process (float summation order differs): measured ~1e-7 locally.
TOL = 1e-5
SHARED_METRICS = ("loss/total", "loss/policy", "loss/kl_ref", "loss/ratio_mean", "loss/approx_kl", "loss/tokens",
                  "learner/grad_norm", "learner/sequences")


class Sleeper(Actor):
    """Answers with its pid, after ``delay`` seconds (a call that is in flight when a host dies)."""

    @concurrent_endpoint
    async def who(self, delay: float = 0.0) -> int:
        await asyncio.sleep(delay)
        return os.getpid()


# --- worker processes ------------------------------------------------------------------------------


@dataclasses.dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> set[int]:
        """The worker and every process it started (the processes it spawns for clients)."""
        try:
            return {self.pid} | {p.pid for p in psutil.Process(self.pid).children(recursive=True)}
        except psutil.Error:
            return set()


def start_workers(n: int, folder: Path) -> list[Worker]:
    from conftest import free_port

    workers = []
    for i in range(n):
        port = free_port()
        log = folder / f"worker{i}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "forge_env.monarch.worker", "--port", str(port)], stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **WORKER_ENV},
                start_new_session=True,  # its session holds everything it starts: the test can check
            )
        workers.append(Worker(proc, f"tcp://127.0.0.1:{port}", log))
    deadline = time.monotonic() + 60
    for worker in workers:
        while f"listening on {worker.address}" not in worker.log.read_text(errors="replace"):
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                stop_workers(workers)
                pytest.fail(f"worker {worker.address} did not start: {worker.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
    return workers


def stop_workers(workers: list[Worker]) -> None:
    """SIGTERM each worker, SIGKILL what is left; then nothing of their sessions may remain."""
    from conftest import session_processes

    for worker in workers:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    left = [p for w in workers for p in session_processes(w.pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for w in workers for p in session_processes(w.pid) if p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes of the workers left behind: {left}"


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Worker]]:
    install_fault_hook()
    started = time.perf_counter()
    ws = start_workers(2, tmp_path_factory.mktemp("workers"))
    print(f"\ntwo workers listening after {time.perf_counter() - started:.1f} s")
    yield ws
    stop_workers(ws)


@pytest.fixture(scope="module")
def hosts(workers: list[Worker]) -> HostsConfig:
    return HostsConfig(workers=tuple(w.address for w in workers), attach_timeout_s=30)


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f} ms"


# --- a Service placed over the hosts ---------------------------------------------------------------


@pytest_asyncio.fixture
async def generator(hosts: HostsConfig, tiny_model_path: str) -> AsyncIterator[MonarchGenerator]:
    gen = MonarchGenerator(
        TorchGeneratorConfig(model=tiny_model_path, max_model_len=MAX_MODEL_LEN),
        service=ServiceConfig(replicas=2, routing="round_robin", health_check_interval_s=0.5, hosts=hosts),
    )
    await gen.start()
    yield gen
    await gen.close()


async def test_generator_replicas_run_one_per_host(generator: MonarchGenerator, workers: list[Worker],
                                                   tiny_model_path: str) -> None:
    replicas = [r for r in generator.service.replicas if r is not None]
    assert [r.host for r in replicas] == [0, 1]
    for replica, worker in zip(replicas, workers):
        assert set(replica.pids) <= worker.tree(), (replica, worker.tree())
        assert replica.group.address == worker.address and replica.group.local  # loopback workers
    remote = [await generator.generate(p, GREEDY) for p in PROMPTS]  # round robin: both replicas answer
    calls = [generator.metrics[f"service/generator/replica{i}/calls"] for i in range(2)]
    assert calls[0] >= 2 and calls[1] >= 2
    local = TorchGenerator(TorchGeneratorConfig(model=tiny_model_path, max_model_len=MAX_MODEL_LEN))
    try:
        expected = [await local.generate(p, GREEDY) for p in PROMPTS]
    finally:
        await local.close()
    assert [c.token_ids for c in remote] == [c.token_ids for c in expected]
    # Loopback workers read this machine's /dev/shm: auto picks it, and both replicas load.
    assert generator.weight_transport == "shm"
    await generator.update_weights(local_weights(tiny_model_path), version=3)
    health = await generator.replica_health()
    assert sorted(h["pid"] for h in health) == sorted(p for r in replicas for p in r.pids)
    assert [h["version"] for h in health] == [3, 3]


def local_weights(model: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(model) / "model.safetensors"))


async def test_call_overhead_on_hosts_vs_this_host(hosts: HostsConfig) -> None:
    """Not a timing assertion: prints the numbers for the README."""
    started = time.perf_counter()
    remote = await Service.start(Sleeper, config=ServiceConfig(replicas=2, routing="round_robin",
                                 health_check_interval_s=0, hosts=hosts), name="sleeper-hosts")
    remote_start = time.perf_counter() - started
    started = time.perf_counter()
    here = await Service.start(Sleeper, config=ServiceConfig(replicas=2, routing="round_robin",
                               health_check_interval_s=0, env={"PYTHONPATH": PYTHONPATH}), name="sleeper-here")
    here_start = time.perf_counter() - started
    try:
        timings = {}
        for name, service in (("hosts", remote), ("this_host", here)):
            pids = {await service.call("who") for _ in range(4)}
            assert len(pids) == 2
            started = time.perf_counter()
            for _ in range(100):
                await service.call("who")
            timings[name] = (time.perf_counter() - started) / 100
        print(f"\nService of 2 replicas: start {remote_start:.2f} s on hosts vs {here_start:.2f} s on this_host; "
              f"call round trip {ms(timings['hosts'])} vs {ms(timings['this_host'])}")
    finally:
        await remote.stop()
        await here.stop()


# --- the learner across the hosts ------------------------------------------------------------------


def test_learner_ranks_span_the_hosts(hosts: HostsConfig, workers: list[Worker], tiny_model_path: str) -> None:
    config = LearnerConfig(model=tiny_model_path, lr=1e-3, micro_batch_size=2)
    local = Learner(config)
    started = time.perf_counter()
    # Each worker is a host with all the cores; here both share this machine's: one thread each.
    learner = MonarchLearner(config, procs=2, hosts=hosts, name="hosts-learner", threads_per_proc=1)
    start_s = time.perf_counter() - started
    try:
        assert [info["backend"] for info in learner.rank_info] == ["gloo", "gloo"]
        for rank, worker in enumerate(workers):  # one rank per host, in host order
            assert learner.pids[rank] in worker.tree()
        assert [info["threads"] for info in learner.rank_info] == [1, 1]
        for seed in (0, 1):
            trajs, adv = dp_batch(seed)
            ours, theirs = learner.train_step(trajs, adv), local.train_step(trajs, adv)
            for key in SHARED_METRICS:
                assert ours[key] == pytest.approx(theirs[key], rel=TOL, abs=TOL), key
        print(f"\nMonarchLearner(procs=2) over two workers: started in {start_s:.1f} s; loss after 2 steps "
              f"{ours['loss/total']:.6f} vs one process {theirs['loss/total']:.6f}; step call overhead "
              f"{ms(ours['learner/call_seconds'] - ours['learner/step_seconds'])}")
        ids = [t.token_ids for t in dp_batch(5)[0]]
        assert max(float((a - b).abs().max()) for a, b in zip(learner.logprobs(ids), local.logprobs(ids))) < 1e-4
        pids = list(learner.pids)
    finally:
        learner.close()
    time.sleep(0.5)
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]


# --- a driver process of its own: the TCP client of a real cluster ---------------------------------


DRIVER = textwrap.dedent("""
    import asyncio, json, sys, time
    import forge_env.monarch
    from forge_env.monarch._hosts import Hosts, HostsConfig
    from forge_env.monarch._service import Service, ServiceConfig
    from test_monarch_hosts import Sleeper
    from monarch.actor import context

    async def main():
        hosts = HostsConfig(workers=tuple(sys.argv[1:]))
        attach_s = (await asyncio.to_thread(Hosts.attach, hosts)).attach_seconds
        started = time.perf_counter()
        service = await Service.start(Sleeper, config=ServiceConfig(replicas=2, routing="round_robin",
                                      health_check_interval_s=0, hosts=hosts), name="driver")
        start_s = time.perf_counter() - started
        answers = [await service.call("who") for _ in range(4)]
        started = time.perf_counter()
        for _ in range(100):
            await service.call("who")
        call_s = (time.perf_counter() - started) / 100
        replicas = [(r.host, r.pids) for r in service.replicas]
        await service.stop()
        print(json.dumps({"client": str(context().actor_instance.actor_id), "attach_s": attach_s,
                          "start_s": start_s, "call_s": call_s, "answers": answers, "replicas": replicas}))

    asyncio.run(main())
""")


def test_a_fresh_driver_process_attaches_over_tcp(workers: list[Worker]) -> None:
    run = subprocess.run([sys.executable, "-c", DRIVER, *(w.address for w in workers)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # The client listens on TCP (not Monarch's default Unix socket), as other hosts need.
    assert "@tcp://127.0.0.1:" in result["client"], result["client"]
    assert [host for host, _ in result["replicas"]] == [0, 1]
    assert set(result["answers"]) == {pid for _, pids in result["replicas"] for pid in pids}
    print(f"\nfresh driver: attach {ms(result['attach_s'])}, Service start {result['start_s']:.2f} s, "
          f"call round trip {ms(result['call_s'])}")


# --- a host dies -----------------------------------------------------------------------------------


async def test_a_dead_host_takes_its_replica_out(tmp_path: Path) -> None:
    doomed = start_workers(2, tmp_path)
    try:
        hosts = HostsConfig(workers=tuple(w.address for w in doomed), attach_timeout_s=30)
        config = ServiceConfig(replicas=2, routing="round_robin", respawn=False, max_retries=1,
                               health_check_interval_s=0.5, health_timeout_s=3, hosts=hosts)
        service = await Service.start(Sleeper, config=config, name="doomed")
        try:
            first, second = (r for r in service.replicas if r is not None)
            assert await service.call("who") == first.pids[0]  # round robin: the next call goes to host 1
            in_flight = asyncio.ensure_future(service.call("who", 2.0))
            await asyncio.sleep(0.5)
            on_host1 = doomed[1].tree()
            assert second.pids[0] in on_host1
            killed = time.perf_counter()
            os.kill(doomed[1].pid, signal.SIGKILL)  # the host agent: its processes go with it
            # The call in flight on the dead host is retried on host 0 (max_retries=1).
            assert await asyncio.wait_for(in_flight, 60) == first.pids[0]
            answered = time.perf_counter() - killed
            await service.wait_healthy(timeout_s=30)
            detected = time.perf_counter() - killed
            assert service.replica_states() == ["healthy", "failed"]
            m = service.metrics
            assert m["service/doomed/replica_deaths"] == 1 and m["service/doomed/retries"] == 1
            assert {await service.call("who") for _ in range(4)} == {first.pids[0]}
            deadline = time.monotonic() + 10
            while any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in on_host1) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert not [p for p in on_host1 if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        finally:
            started = time.perf_counter()
            await service.stop()
            stop_s = time.perf_counter() - started
        print(f"\nhost killed: in-flight call answered by the other host after {answered:.1f} s, replica "
              f"declared dead within {detected:.1f} s; Service.stop with a dead host {stop_s:.1f} s")
    finally:
        stop_workers(doomed)


def test_a_dead_host_fails_the_learner_clearly(tmp_path: Path, tiny_model_path: str) -> None:
    from forge_env.monarch._learner import LearnerProcessError

    doomed = start_workers(2, tmp_path)
    try:
        hosts = HostsConfig(workers=tuple(w.address for w in doomed), attach_timeout_s=30)
        learner = MonarchLearner(LearnerConfig(model=tiny_model_path, lr=1e-3), procs=2, hosts=hosts,
                                 name="doomed-learner", threads_per_proc=1)
        try:
            learner.train_step(*dp_batch(0))
            killed = time.perf_counter()
            os.kill(doomed[1].pid, signal.SIGKILL)
            # Rank 0's collective fails at once; rank 1 (dead host) is named as the likely cause.
            with pytest.raises(LearnerProcessError, match=r"Ranks \[1\] did not answer .* process or host may be gone"):
                learner.train_step(*dp_batch(1))
            failed = time.perf_counter() - killed
            with pytest.raises(LearnerProcessError, match="failed earlier"):
                learner.logprobs([[1, 2, 3]])
        finally:
            started = time.perf_counter()
            learner.close()
            close_s = time.perf_counter() - started
        print(f"\nlearner host killed: LearnerProcessError after {failed:.1f} s; close() {close_s:.1f} s")
    finally:
        stop_workers(doomed)


def test_an_unreachable_worker_is_a_clear_error() -> None:
    from conftest import free_port

    from forge_env._exceptions import ForgeEnvError
    from forge_env.monarch._hosts import Hosts

    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    with pytest.raises(ForgeEnvError, match=r"no Monarch worker answered at \['tcp://127\.0\.0\.1:\d+'\] within "
                                            r"2 s .*`python -m forge_env\.monarch\.worker"):
        Hosts.attach(HostsConfig(workers=(address,), attach_timeout_s=2))
