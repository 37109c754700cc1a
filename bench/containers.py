"""What a container costs: DockerRuntime against LocalProcessRuntime on one env, plus sandboxes.

One run, one env (``guess_number``; image ``forge-env/guess_number:latest``), four parts:

1. **cold start**: ``start()`` until ``/health`` answers, for a fresh ``DockerRuntime`` and a
   fresh ``LocalProcessRuntime`` (median / p90 of ``--starts``, interleaved);
2. **warm lease**: ``EnvPool.lease()`` acquire + release (a WebSocket session opened and
   closed) on a started pool of 2 containers vs 2 local processes (median / p99 of ``--leases``);
3. **episodes**: full guess_number episodes through each pool, played by the scripted
   binary-search solver (``envs.guess_number.solve``), at concurrency 1 and 16 for
   ``--duration`` seconds each: episodes/s and steps/s;
4. **sandbox exec**: ``run_code("print(1)")`` on each usable backend of
   ``forge_env.sandbox.available_backends()`` (median / p90 of ``--execs``), with a plain
   ``python -c`` subprocess for reference.

Each part prints a table with the docker/local ratio (part 4: backend / plain python).
Containers run with ``DockerRuntime``'s defaults (``cpus=1.0``, ``memory=512m``, read-only).
The Docker engine is the one at ``DOCKER_HOST`` if it answers; otherwise (as root) the bench
runs ``scripts/docker_engine.sh start`` and stops it again at the end. The images are built
(or found cached) by ``scripts/docker_engine.sh base-image`` / ``env-image guess_number``.
At the end no container labelled ``forge-env.managed`` and no server process may be left;
the JSON records that check (``leftovers``) and the run fails if it does not hold.

Usage (from the repository root)::

    python bench/containers.py            # full run, ~45 s on 2 cores
    python bench/containers.py --quick    # a few samples of each part, ~20 s
    python bench/containers.py --out /tmp/containers.json
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python bench/containers.py` puts bench/ (not the repo root) on sys.path.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._report import BenchRun, Column, format_table as _table  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "containers.json"
ENGINE_SCRIPT = REPO_ROOT / "scripts" / "docker_engine.sh"
ENV_NAME = "guess_number"
IMAGE = f"forge-env/{ENV_NAME}:latest"
POOL_SIZE = 2
SETUP_HINT = (
    "start a Docker engine and build the image first: `sudo scripts/docker_engine.sh start && "
    "scripts/docker_engine.sh base-image && scripts/docker_engine.sh env-image guess_number`, "
    "then export the DOCKER_HOST that `start` prints"
)
# Where `scripts/docker_engine.sh start` puts the engine's socket.
_SCRIPT_HOST = "unix://" + str(Path(os.environ.get("FORGE_DOCKER_DIR", REPO_ROOT / ".docker")) / "docker.sock")
_MAX_STEPS_PER_EPISODE = 64  # binary search over 1..16 needs 5; a bound against a broken env


class BenchSetupError(RuntimeError):
    """The Docker engine or the env image is not available; the message says how to fix it."""


# --- statistics ------------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of non-empty ``values``."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _summary(seconds: Sequence[float], high: float) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        f"p{high:g}_ms": _percentile(ms, high),
        "min_ms": min(ms),
        "max_ms": max(ms),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# --- the Docker engine -----------------------------------------------------------------------


def _ping(host: str | None) -> bool:
    import docker

    if not host:
        return False
    try:
        client = docker.DockerClient(base_url=host, timeout=5)
        try:
            client.ping()
        finally:
            client.close()
        return True
    except Exception:
        return False


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ENGINE_SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def ensure_engine() -> tuple[str, bool, dict[str, float]]:
    """Find or start a Docker engine and build (or find cached) the env image.

    Returns:
        ``(docker_host, started_here, seconds per setup step)``; DOCKER_HOST is exported.

    Raises:
        BenchSetupError: no engine answers and none can be started, or an image build failed.
    """
    try:
        import docker  # noqa: F401
    except ImportError as e:
        raise BenchSetupError("the docker SDK is not installed: pip install docker") from e
    timings: dict[str, float] = {}
    host = os.environ.get("DOCKER_HOST")
    started_here = False
    if not _ping(host) and _ping(_SCRIPT_HOST):
        host = _SCRIPT_HOST  # the script's engine runs already (someone else's: never stop it)
    elif not _ping(host):
        if os.geteuid() != 0:
            raise BenchSetupError(f"no Docker engine answers at DOCKER_HOST={host!r}; {SETUP_HINT}")
        t = time.perf_counter()
        started = _script("start", timeout=600)
        timings["engine start"] = time.perf_counter() - t
        exports = [ln for ln in started.stdout.splitlines() if ln.startswith("export DOCKER_HOST=")]
        if started.returncode != 0 or not exports:
            raise BenchSetupError(f"`scripts/docker_engine.sh start` failed:\n{started.stderr[-2000:]}\n{SETUP_HINT}")
        host = exports[-1].split("=", 1)[1]
        started_here = "already answers" not in started.stderr  # stop only an engine we started
    assert host is not None
    os.environ["DOCKER_HOST"] = host
    for step in (["base-image"], ["env-image", ENV_NAME]):
        t = time.perf_counter()
        built = _script(*step, timeout=900)
        timings[" ".join(step)] = time.perf_counter() - t
        if built.returncode != 0:
            if started_here:
                _script("stop", timeout=120)
            raise BenchSetupError(f"`scripts/docker_engine.sh {' '.join(step)}` failed:\n"
                                  f"{built.stderr[-2000:]}\n{SETUP_HINT}")
    return host, started_here, timings


def _managed_containers() -> list[str]:
    """Names of the ``forge-env.managed`` containers this process started (other
    processes, e.g. tests running beside the bench, may own some too)."""
    import docker

    from forge_env.runtime._docker import MANAGED_LABEL, OWNER_PID_LABEL

    client = docker.from_env()
    try:
        found = client.containers.list(all=True, filters={"label": f"{MANAGED_LABEL}=1"})
        return [c.name for c in found if (c.labels or {}).get(OWNER_PID_LABEL) == str(os.getpid())]
    finally:
        client.close()


# --- the runtimes ----------------------------------------------------------------------------


class _Tracker:
    """Builds runtimes of one kind and remembers the server pids (to check none is left)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pids: set[int] = set()

    def build(self) -> Any:
        from forge_env.runtime import DockerRuntime, LocalProcessRuntime

        if self.kind == "docker":
            return DockerRuntime(IMAGE, pull="never")
        return LocalProcessRuntime(ENV_NAME, log_level="warning")

    def started(self, runtime: Any) -> None:
        pid = getattr(runtime, "pid", None)
        if pid:
            self.pids.add(pid)


async def cold_starts(trackers: dict[str, _Tracker], n: int) -> dict[str, list[float]]:
    """``start()`` -> healthy of ``n`` fresh runtimes per kind, interleaved; each is stopped."""
    samples: dict[str, list[float]] = {k: [] for k in trackers}
    for _ in range(n):
        for kind, tracker in trackers.items():
            runtime = tracker.build()
            t = time.perf_counter()
            try:
                await runtime.start()
                samples[kind].append(time.perf_counter() - t)
                tracker.started(runtime)
            finally:
                await runtime.stop()
    return samples


async def lease_latencies(pool: Any, n: int, warmup: int) -> list[float]:
    """Seconds of ``n`` sequential ``lease()`` acquire + release (session open and close)."""
    for _ in range(warmup):
        async with pool.lease():
            pass
    out: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        async with pool.lease():
            pass
        out.append(time.perf_counter() - t)
    return out


async def episodes(pool: Any, concurrency: int, duration: float) -> dict[str, Any]:
    """Play guess_number episodes with the scripted solver through ``pool`` for ``duration`` s."""
    from envs.guess_number import solve

    counts = {"episodes": 0, "steps": 0, "won": 0}
    deadline = time.perf_counter() + duration

    async def worker(w: int) -> None:
        seed = w * 1_000_003
        while time.perf_counter() < deadline:
            seed += 1
            async with pool.lease() as env:
                obs, _info = await env.reset(seed=seed)
                for _ in range(_MAX_STEPS_PER_EPISODE):
                    result = await env.step(solve(obs))
                    counts["steps"] += 1
                    obs = result.observation
                    if result.terminated or result.truncated:
                        counts["won"] += int(result.reward > 0)
                        break
            counts["episodes"] += 1

    t = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t
    return {
        "concurrency": concurrency,
        "wall_s": wall,
        **counts,
        "episodes_per_s": counts["episodes"] / wall,
        "steps_per_s": counts["steps"] / wall,
    }


async def pool_parts(trackers: dict[str, _Tracker], *, leases: int, concurrencies: Sequence[int],
                     duration: float) -> tuple[dict[str, list[float]], dict[str, list[dict[str, Any]]]]:
    """Parts 2 and 3 on one warm pool of ``POOL_SIZE`` servers per kind (pools run one at a time)."""
    from forge_env.runtime import EnvPool

    lease_samples: dict[str, list[float]] = {}
    episode_rows: dict[str, list[dict[str, Any]]] = {}
    for kind, tracker in trackers.items():
        pool = EnvPool(tracker.build, size=POOL_SIZE, health_interval=30.0)
        async with pool:
            for runtime in pool.runtimes:
                tracker.started(runtime)
            lease_samples[kind] = await lease_latencies(pool, leases, warmup=min(20, leases))
            episode_rows[kind] = [await episodes(pool, c, duration) for c in concurrencies]
            stats = pool.stats()
            if stats["failures"] or stats["restarts"]:
                raise RuntimeError(f"the {kind} pool lost servers during the bench: {stats}")
    return lease_samples, episode_rows


# --- sandbox ---------------------------------------------------------------------------------


def sandbox_latencies(n: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """``run_code('print(1)')`` per usable backend and a plain ``python -c``; seconds each."""
    from forge_env.sandbox import available_backends, run_code

    samples: dict[str, list[float]] = {}
    unusable = {name: why for name, why in available_backends().items() if why is not None}

    def timed(fn: Callable[[], None]) -> list[float]:
        fn()  # warm-up: page cache, the first-run probes
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return out

    def plain() -> None:
        done = subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, timeout=30)
        assert done.stdout == b"1\n", done

    samples["python -c"] = timed(plain)
    for name, why in available_backends().items():
        if why is not None:
            continue

        def sandboxed(name: str = name) -> None:
            result = run_code("print(1)", backend=name)
            assert result.stdout == "1\n" and result.exit_code == 0, result

        # rlimit warns on every run that it is no security boundary; the table says so once.
        sandbox_logger = logging.getLogger("forge_env.sandbox")
        level = sandbox_logger.level
        sandbox_logger.setLevel(logging.ERROR)
        try:
            samples[name] = timed(sandboxed)
        finally:
            sandbox_logger.setLevel(level)
    return samples, unusable


# --- report ----------------------------------------------------------------------------------


def _f(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_tables(report: dict[str, Any]) -> str:
    lines: list[str] = []
    cs = report["cold_start"]
    runtime = Column("runtime", "runtime")
    lines += ["", "1. cold start to healthy (start() -> /health), ms"]
    lines.append(_table([{"runtime": kind, **cs[kind]} for kind in ("docker", "local")], [
        runtime, Column("n", "n"), Column("median", "median_ms", ".1f"), Column("p90", "p90_ms", ".1f"),
    ]))
    lines.append(f"docker/local: median x{_f(cs['ratio_median'], '.2f')}, p90 x{_f(cs['ratio_p90'], '.2f')}")

    ls = report["warm_lease"]
    lines += ["", f"2. warm lease acquire+release (session open/close), pool of {POOL_SIZE}, ms"]
    lines.append(_table([{"runtime": kind, **ls[kind]} for kind in ("docker", "local")], [
        runtime, Column("n", "n"), Column("median", "median_ms", ".2f"), Column("p99", "p99_ms", ".2f"),
    ]))
    lines.append(f"docker/local: median x{_f(ls['ratio_median'], '.2f')}, p99 x{_f(ls['ratio_p99'], '.2f')}")

    ep = report["episodes"]
    lines += ["", f"3. guess_number episodes through the pool ({POOL_SIZE} servers), scripted solver"]
    lines.append(_table([{"runtime": kind, **row} for kind in ("docker", "local") for row in ep[kind]], [
        runtime, Column("conc", "concurrency"), Column("episodes", "episodes"),
        Column("episodes/s", "episodes_per_s", ".1f"), Column("steps/s", "steps_per_s", ".1f"),
    ]))
    for r in ep["ratios"]:
        lines.append(f"docker/local at {r['concurrency']:>2}: episodes/s x{_f(r['episodes_per_s'], '.2f')}")

    sb = report["sandbox"]
    lines += ["", "4. sandbox exec of print(1), ms"]
    lines.append(_table([{"backend": name, **s} for name, s in sb["backends"].items()], [
        Column("backend", "backend"), Column("n", "n"), Column("median", "median_ms", ".1f"),
        Column("p90", "p90_ms", ".1f"), Column("x python -c", "ratio_median_vs_python", ".2f", ">"),
    ]))
    if "rlimit" in sb["backends"]:
        lines.append("(rlimit is no security boundary: no network or filesystem isolation)")
    for name, why in sb["unusable"].items():
        lines.append(f"{name:<12} unusable here: {why}")
    return "\n".join(lines)


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    trackers = {"docker": _Tracker("docker"), "local": _Tracker("local")}
    t = time.perf_counter()
    starts = await cold_starts(trackers, args.starts)
    cold: dict[str, Any] = {k: _summary(v, 90) for k, v in starts.items()}
    cold["ratio_median"] = _ratio(cold["docker"]["median_ms"], cold["local"]["median_ms"])
    cold["ratio_p90"] = _ratio(cold["docker"]["p90_ms"], cold["local"]["p90_ms"])
    print(f"[bench] cold starts done in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    t = time.perf_counter()
    leases, rows = await pool_parts(trackers, leases=args.leases, concurrencies=args.concurrency,
                                    duration=args.duration)
    lease: dict[str, Any] = {k: _summary(v, 99) for k, v in leases.items()}
    lease["ratio_median"] = _ratio(lease["docker"]["median_ms"], lease["local"]["median_ms"])
    lease["ratio_p99"] = _ratio(lease["docker"]["p99_ms"], lease["local"]["p99_ms"])
    eps: dict[str, Any] = dict(rows)
    eps["ratios"] = [
        {"concurrency": d["concurrency"],
         "episodes_per_s": _ratio(d["episodes_per_s"], lo["episodes_per_s"]),
         "steps_per_s": _ratio(d["steps_per_s"], lo["steps_per_s"])}
        for d, lo in zip(rows["docker"], rows["local"])
    ]
    print(f"[bench] pools done in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    t = time.perf_counter()
    sb_samples, unusable = sandbox_latencies(args.execs)
    backends = {k: _summary(v, 90) for k, v in sb_samples.items()}
    for s in backends.values():
        s["ratio_median_vs_python"] = _ratio(s["median_ms"], backends["python -c"]["median_ms"])
    print(f"[bench] sandbox done in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    pids = sorted(p for tr in trackers.values() for p in tr.pids)
    return {
        "cold_start": cold,
        "warm_lease": lease,
        "episodes": eps,
        "sandbox": {"backends": backends, "unusable": unusable},
        "_server_pids": pids,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few samples of each part (~20 s)")
    p.add_argument("--starts", type=int, default=None, help="cold starts per runtime (default 5; quick 2)")
    p.add_argument("--leases", type=int, default=None, help="timed leases per pool (default 200; quick 30)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of episodes per (pool, concurrency) (default 5; quick 1)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="concurrent episodes (default 1 16)")
    p.add_argument("--execs", type=int, default=None, help="sandbox runs per backend (default 20; quick 5)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    defaults = {"starts": (5, 2), "leases": (200, 30), "duration": (5.0, 1.0), "execs": (20, 5)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if min(args.starts, args.leases, args.execs) < 1 or args.duration <= 0 or min(args.concurrency) < 1:
        raise SystemExit("--starts, --leases, --execs, --concurrency must be >= 1 and --duration > 0")
    began = time.perf_counter()
    run = BenchRun("containers", argv, packages=("docker",))
    try:
        host, started_here, setup = ensure_engine()
    except BenchSetupError as e:
        print(f"bench/containers.py: {e}", file=sys.stderr)
        return 2
    print(f"[bench] docker engine at {host} ({'started here' if started_here else 'already running'}); "
          "setup (s): " + ", ".join(f"{k} {v:.1f}" for k, v in setup.items()), file=sys.stderr)
    report: dict[str, Any] = {}
    try:
        report = asyncio.run(run_all(args))
    finally:
        # Whatever happened, nothing of ours may stay running.
        from forge_env.runtime._proctree import pid_alive

        leftovers = {"containers": _managed_containers(),
                     "processes": [p for p in report.get("_server_pids", []) if pid_alive(p)]}
        if started_here:
            _script("stop", timeout=120)
    report.pop("_server_pids", None)
    import docker

    header = run.header()
    report = {
        **header,
        "settings": {
            "quick": args.quick, "env": ENV_NAME, "image": IMAGE, "pool_size": POOL_SIZE,
            "starts": args.starts, "leases": args.leases, "duration_s": args.duration,
            "concurrency": args.concurrency, "execs": args.execs, "docker_host": host,
            "engine_started_here": started_here, "setup_s": setup,
            "docker_runtime": "DockerRuntime defaults: cpus=1.0, memory=512m, read-only, uid 10001",
        },
        "machine": {**header["machine"], "docker_sdk": docker.__version__,
                    "loadavg": header["machine"]["loadavg_1min_end"]},
        **report,
        "leftovers": leftovers,
        "wall_s": time.perf_counter() - began,
    }
    print(format_tables(report))
    print(f"\nleftovers: {len(leftovers['containers'])} containers, {len(leftovers['processes'])} "
          f"processes; total {report['wall_s']:.1f}s")
    print(f"wrote {run.write(report, args.out)}")
    if leftovers["containers"] or leftovers["processes"]:
        print(f"bench/containers.py: left behind: {leftovers}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
