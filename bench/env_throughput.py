"""Env-serving throughput: forge-env's server + client against OpenEnv's, on one echo env.

Measures steps/s and p50/p99 step latency at 1, 16 and 256 concurrent sessions for:

- ``ours/ours``: ``forge_env.server.create_app`` served by uvicorn, stepped by ``forge_env.client.RemoteEnv``;
- ``openenv/openenv``: ``openenv.core.env_server.http_server.create_app``, stepped by
  OpenEnv's ``GenericEnvClient`` (its native async API);
- the cross pairs ``ours/openenv`` and ``openenv/ours`` (server/client), to tell which side wins.

Each server runs in its own process (``python -m uvicorn bench._echo_servers:<app>``, 127.0.0.1,
a free port, log level warning), so client and server never share a GIL; by default each side is
served the way its project serves envs (``--uvicorn-settings shipped``): ours with the settings of
``forge_env.server.serve`` (its WebSocket settings, and uvloop's event loop where installed: a
dependency of forge-env), OpenEnv with plain uvicorn on asyncio's loop (``--loop asyncio``
explicitly: OpenEnv depends on plain ``uvicorn``, without uvloop, while uvicorn's default
``--loop auto`` would pick up the uvloop in this venv). ``--uvicorn-settings tuned`` serves both
with our settings (the like-for-like comparison of the two apps), ``defaults`` both as OpenEnv ships.
Each server reports the event loop it really runs on (``GET /bench/loop``); the JSON records it.
The client side runs all N sessions in one event loop in this process: asyncio's for both
clients, or uvloop's with ``--uvloop`` (which also puts both servers on uvloop). Every
measurement opens N fresh sessions, resets them, warms up for ``--warmup`` seconds, then times each ``await step`` for ``--duration``
seconds (or ``--steps-per-session`` steps). Repeats are interleaved (pair order rotates every
repeat) and the table reports the median over repeats. Server and client CPU seconds per step
are recorded too: on a small machine they show which process is the bottleneck.

Usage (from the repository root)::

    python bench/env_throughput.py                 # full run, ~2-3 minutes
    python bench/env_throughput.py --quick         # 1 and 16 sessions, a few seconds
    python bench/env_throughput.py --sessions 1 64 --repeats 5 --out /tmp/tp.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python bench/env_throughput.py` puts bench/ (not the repo root) on sys.path; the clients
# import forge_env and the server modules from the root.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench._report import BenchRun, Column, format_table as _table  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "env_throughput.json"
SIDES = ("ours", "openenv")
APPS = {"ours": "bench._echo_servers:ours_app", "openenv": "bench._echo_servers:openenv_app"}
ALL_PAIRS = (("ours", "ours"), ("openenv", "openenv"), ("ours", "openenv"), ("openenv", "ours"))
# Versions recorded in the JSON: the serving stack both sides run on.
PACKAGES = ("openenv", "fastapi", "starlette", "uvicorn", "websockets", "pydantic", "uvloop")
# A CPU-second counter of another process: /proc/<pid>/stat fields 14 (utime) and 15 (stime).
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- the two clients behind one tiny interface ----------------------------------------------


class Session(Protocol):
    """One env session as the benchmark drives it; ``step`` returns the episode's ``done``."""

    async def open(self) -> None: ...

    async def reset(self) -> None: ...

    async def step(self, message: str) -> bool: ...

    async def close(self) -> None: ...


class OpenEnvSession:
    """OpenEnv's ``GenericEnvClient`` through its native async API (one WebSocket each)."""

    def __init__(self, url: str) -> None:
        from openenv.core.generic_client import GenericEnvClient

        self._client = GenericEnvClient(base_url=url)

    async def open(self) -> None:
        await self._client.connect()

    async def reset(self) -> None:
        await self._client.reset()

    async def step(self, message: str) -> bool:
        result = await self._client.step({"message": message})
        if result.observation.get("echoed_message") != message:
            raise AssertionError(f"echo mismatch: sent {message!r}, got {result.observation!r}")
        return bool(result.done)

    async def close(self) -> None:
        await self._client.close()


class OursSession:
    """Our ``forge_env.client.RemoteEnv`` (one WebSocket session each)."""

    def __init__(self, url: str) -> None:
        from forge_env.client import RemoteEnv

        self._env: RemoteEnv[Any, Any] = RemoteEnv(url)

    async def open(self) -> None:
        # RemoteEnv would connect on the first reset; connect explicitly so that opening
        # the session is outside the timed steps, exactly as for OpenEnv's client.
        await self._env.connect()

    async def reset(self) -> None:
        await self._env.reset()

    async def step(self, message: str) -> bool:
        result = await self._env.step({"message": message})
        if result.observation.echoed_message != message:
            raise AssertionError(f"echo mismatch: sent {message!r}, got {result.observation!r}")
        return result.terminated or result.truncated

    async def close(self) -> None:
        await self._env.close()


CLIENTS: dict[str, type] = {"ours": OursSession, "openenv": OpenEnvSession}


# --- servers in their own processes ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of process ``pid`` (Linux /proc), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@dataclass
class ServerProcess:
    """A uvicorn subprocess serving one side's echo app on a loopback port."""

    side: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    command: list[str]
    # The event loop class the server runs on, as it reports it ("uvloop.Loop", ...).
    loop: str = "unknown"

    def cpu_seconds(self) -> float | None:
        return _proc_cpu_seconds(self.proc.pid)

    @property
    def loop_kind(self) -> str:
        """``"uvloop"``, ``"asyncio"`` or the reported class name of any other loop."""
        for kind in ("uvloop", "asyncio"):
            if self.loop.startswith(kind + "."):
                return kind
        return self.loop

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def tuned_uvicorn_flags(*, loop: bool = True) -> list[str]:
    """uvicorn CLI flags equal to ``forge_env.server.UVICORN_WS_SETTINGS`` (what ``serve`` uses);
    ``loop=False`` leaves out its ``--loop``."""
    from forge_env.server import UVICORN_WS_SETTINGS

    flags: list[str] = []
    for key, value in UVICORN_WS_SETTINGS.items():
        if key == "loop" and not loop:
            continue
        flag = "--" + key.replace("_", "-")
        flags += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def _uses_our_settings(side: str, settings: str) -> bool:
    return settings == "tuned" or (settings == "shipped" and side == "ours")


def server_loop(side: str, settings: str, *, uvloop: bool = False) -> str:
    """The uvicorn ``--loop`` of one side's server: ``"uvloop"`` or ``"asyncio"``.

    Ours (``shipped``) and both (``tuned``) get the loop of ``UVICORN_WS_SETTINGS`` (uvloop
    where installed); OpenEnv as shipped, and both under ``defaults``, get asyncio's, which
    is what plain ``uvicorn`` runs without uvloop installed (OpenEnv does not depend on it).
    ``uvloop=True`` (the ``--uvloop`` flag) puts every server on uvloop.
    """
    if uvloop:
        return "uvloop"
    if _uses_our_settings(side, settings):
        from forge_env.server import UVICORN_WS_SETTINGS

        return str(UVICORN_WS_SETTINGS.get("loop", "asyncio"))
    return "asyncio"


def uvicorn_flags(side: str, settings: str, *, uvloop: bool = False) -> list[str]:
    """Extra uvicorn flags of one side's server under ``--uvicorn-settings``.

    ``shipped``: each side as its project serves it: ours with the settings of
    ``forge_env.server.serve``, OpenEnv with plain ``uvicorn app`` (its Dockerfiles and
    runtime providers) on asyncio's loop. ``defaults``: both as OpenEnv ships.
    ``tuned``: both with ours. The event loop is always explicit (:func:`server_loop`).
    """
    flags = ["--loop", server_loop(side, settings, uvloop=uvloop)]
    if _uses_our_settings(side, settings):
        flags += tuned_uvicorn_flags(loop=False)
    return flags


@contextlib.contextmanager
def serve(
    side: str,
    *,
    max_sessions: int,
    episode_len: int,
    log_dir: Path,
    extra_flags: Sequence[str] = (),
    timeout: float = 60.0,
) -> Iterator[ServerProcess]:
    """Start ``python -m uvicorn bench._echo_servers:<side>_app`` and wait for ``/health``."""
    import httpx

    port = _free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["BENCH_MAX_SESSIONS"] = str(max_sessions)
    env["BENCH_EPISODE_LEN"] = str(episode_len)
    log_path = log_dir / f"server-{side}.log"
    cmd = [
        sys.executable, "-m", "uvicorn", APPS[side],
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *extra_flags,
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(side=side, url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path, command=cmd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the {side} server exited with code {proc.returncode} before serving "
                    f"({' '.join(cmd)}):\n{server.log_tail()}"
                )
            try:
                if httpx.get(server.url + "/health", timeout=1.0).status_code == 200:
                    server.loop = httpx.get(server.url + "/bench/loop", timeout=5.0).json()["loop"]
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {side} server did not answer /health within {timeout}s:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- one measurement -------------------------------------------------------------------------


@dataclass
class RunResult:
    """One (server, client, sessions) measurement."""

    steps: int
    wall_s: float
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    connect_s: float
    server_cpu_us_per_step: float | None
    client_cpu_us_per_step: float | None


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        raise ValueError("no latencies recorded: the run took no steps (raise --duration)")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


async def measure(
    server: ServerProcess,
    client: str,
    sessions: int,
    *,
    duration: float,
    steps_per_session: int | None,
    warmup: float,
) -> RunResult:
    """Open ``sessions`` sessions with ``client`` against ``server``, warm up, time the steps."""
    factory = CLIENTS[client]
    envs: list[Session] = [factory(server.url) for _ in range(sessions)]
    messages = [f"hello from session {i}" for i in range(sessions)]
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(e.open() for e in envs))
        await asyncio.gather(*(e.reset() for e in envs))
        connect_s = time.perf_counter() - t0

        async def drive(i: int, until: float, max_steps: int | None, record: list[float] | None) -> int:
            env, msg = envs[i], messages[i]
            n = 0
            perf = time.perf_counter
            while (n < max_steps) if max_steps is not None else (perf() < until):
                t = perf()
                done = await env.step(msg)
                if record is not None:
                    record.append(perf() - t)
                n += 1
                if done:
                    await env.reset()
            return n

        if warmup > 0:
            until = time.perf_counter() + warmup
            await asyncio.gather(*(drive(i, until, None, None) for i in range(sessions)))

        gc.collect()
        latencies: list[list[float]] = [[] for _ in range(sessions)]
        server_cpu0, client_cpu0 = server.cpu_seconds(), time.process_time()
        start = time.perf_counter()
        until = start + duration
        counts = await asyncio.gather(
            *(drive(i, until, steps_per_session, latencies[i]) for i in range(sessions))
        )
        wall = time.perf_counter() - start
        server_cpu1, client_cpu1 = server.cpu_seconds(), time.process_time()
    finally:
        await asyncio.gather(*(e.close() for e in envs), return_exceptions=True)

    steps = sum(counts)
    lat = sorted(x for per in latencies for x in per)
    return RunResult(
        steps=steps,
        wall_s=wall,
        steps_per_s=steps / wall,
        p50_ms=_percentile(lat, 50) * 1e3,
        p99_ms=_percentile(lat, 99) * 1e3,
        mean_ms=statistics.fmean(lat) * 1e3,
        connect_s=connect_s,
        server_cpu_us_per_step=(
            (server_cpu1 - server_cpu0) / steps * 1e6
            if server_cpu0 is not None and server_cpu1 is not None
            else None
        ),
        client_cpu_us_per_step=(client_cpu1 - client_cpu0) / steps * 1e6,
    )


# --- the whole benchmark ---------------------------------------------------------------------


@dataclass
class Row:
    """Median over repeats of one (server, client, sessions) configuration."""

    server: str
    client: str
    sessions: int
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_step: float | None
    client_cpu_us_per_step: float | None
    repeats: list[RunResult] = field(default_factory=list)


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(server: str, client: str, sessions: int, runs: list[RunResult]) -> Row:
    return Row(
        server=server,
        client=client,
        sessions=sessions,
        steps_per_s=statistics.median(r.steps_per_s for r in runs),
        p50_ms=statistics.median(r.p50_ms for r in runs),
        p99_ms=statistics.median(r.p99_ms for r in runs),
        server_cpu_us_per_step=_median([r.server_cpu_us_per_step for r in runs]),
        client_cpu_us_per_step=_median([r.client_cpu_us_per_step for r in runs]),
        repeats=runs,
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """ours/ours over openenv/openenv per session count (throughput >1 and latency <1 favour us)."""
    by_key = {(r.server, r.client, r.sessions): r for r in rows}
    out = []
    for n in sorted({r.sessions for r in rows}):
        ours, theirs = by_key.get(("ours", "ours", n)), by_key.get(("openenv", "openenv", n))
        if ours is None or theirs is None:
            continue
        out.append(
            {
                "sessions": n,
                "throughput_ratio": ours.steps_per_s / theirs.steps_per_s,
                "p50_ratio": ours.p50_ms / theirs.p50_ms,
                "p99_ratio": ours.p99_ms / theirs.p99_ms,
                # CPU per step is less sensitive to other load than wall-clock numbers.
                "server_cpu_ratio": _ratio(ours.server_cpu_us_per_step, theirs.server_cpu_us_per_step),
                "client_cpu_ratio": _ratio(ours.client_cpu_us_per_step, theirs.client_cpu_us_per_step),
            }
        )
    return out


async def run_all(
    servers: dict[str, ServerProcess],
    pairs: Sequence[tuple[str, str]],
    session_counts: Sequence[int],
    *,
    repeats: int,
    duration: float,
    steps_per_session: int | None,
    warmup: float,
    settle: float,
    log: Any,
) -> list[Row]:
    runs: dict[tuple[str, str, int], list[RunResult]] = {(s, c, n): [] for s, c in pairs for n in session_counts}
    for rep in range(repeats):
        for n in session_counts:
            # Rotate the pair order every repeat so no pair always runs first (or right
            # after the heaviest one) on a noisy machine.
            order = [pairs[(k + rep) % len(pairs)] for k in range(len(pairs))]
            for server_side, client_side in order:
                result = await asyncio.wait_for(
                    measure(
                        servers[server_side],
                        client_side,
                        n,
                        duration=duration,
                        steps_per_session=steps_per_session,
                        warmup=warmup,
                    ),
                    timeout=120 + duration + warmup,
                )
                runs[(server_side, client_side, n)].append(result)
                print(
                    f"  repeat {rep + 1}/{repeats}  sessions={n:<4} {server_side:>7}/{client_side:<7}"
                    f" {result.steps_per_s:9.0f} steps/s  p50 {result.p50_ms:7.3f} ms  p99 {result.p99_ms:7.3f} ms",
                    file=log,
                    flush=True,
                )
                # Let the closed sessions' teardown finish on the server before the next run.
                await asyncio.sleep(settle)
    return [summarise(s, c, n, runs[(s, c, n)]) for n in session_counts for s, c in pairs]


def format_table(rows: list[Row], ratio_rows: list[dict[str, Any]]) -> str:
    lines = [_table(rows, [
        Column("sessions", "sessions"), Column("server", "server"), Column("client", "client"),
        Column("steps/s", "steps_per_s", ".0f"), Column("p50 ms", "p50_ms", ".3f"),
        Column("p99 ms", "p99_ms", ".3f"), Column("srv us/step", "server_cpu_us_per_step", ".0f", ">"),
        Column("cli us/step", "client_cpu_us_per_step", ".0f", ">"),
    ])]
    if ratio_rows:
        lines += ["", "ours/ours vs openenv/openenv (throughput >1 and latency <1 favour ours):"]
        lines.append(_table(ratio_rows, [
            Column("sessions", "sessions"), Column("throughput x", "throughput_ratio", ".2f"),
            Column("p50 x", "p50_ratio", ".2f"), Column("p99 x", "p99_ratio", ".2f"),
            Column("srv cpu x", "server_cpu_ratio", ".2f", ">"), Column("cli cpu x", "client_cpu_ratio", ".2f", ">"),
        ]))
    return "\n".join(lines)


def run_loop(main: Any, *, uvloop: bool) -> Any:
    """Run the client side's coroutine on asyncio's default loop, or on uvloop's."""
    if uvloop:
        import uvloop as _uvloop

        with asyncio.Runner(loop_factory=_uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


def _parse_pair(text: str) -> tuple[str, str]:
    server, _, client = text.partition("/")
    if server not in SIDES or client not in SIDES:
        raise argparse.ArgumentTypeError(f"pair {text!r} must be SERVER/CLIENT with each of {SIDES}, e.g. ours/openenv")
    return server, client


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 16, 256], help="concurrent session counts (default 1 16 256)")
    p.add_argument("--pairs", type=_parse_pair, nargs="+", default=list(ALL_PAIRS),
                   help="SERVER/CLIENT pairs to run (default: ours/ours openenv/openenv ours/openenv openenv/ours)")
    p.add_argument("--no-cross", action="store_true", help="run only ours/ours and openenv/openenv")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the table shows their median (default 3)")
    p.add_argument("--duration", type=float, default=1.5, help="timed seconds per measurement (default 1.5)")
    p.add_argument("--steps-per-session", type=int, default=None, help="time this many steps per session instead of --duration")
    p.add_argument("--warmup", type=float, default=0.4, help="untimed seconds of stepping before each measurement (default 0.4)")
    p.add_argument("--settle", type=float, default=0.2, help="pause between measurements, seconds (default 0.2)")
    p.add_argument("--episode-len", type=int, default=0, help="steps per episode, then reset; 0 = never done (default)")
    p.add_argument("--uvicorn-settings", choices=("shipped", "defaults", "tuned"), default="shipped",
                   help="shipped (default): ours with forge_env.server.UVICORN_WS_SETTINGS (uvloop where installed), "
                   "OpenEnv with plain uvicorn on asyncio's loop, as each project serves its envs; "
                   "defaults: both as OpenEnv ships; tuned: both with ours (like for like)")
    p.add_argument("--uvloop", action="store_true",
                   help="run both servers and the client on uvloop (must be installed); by default the client "
                   "runs on asyncio's loop and each server on the loop of --uvicorn-settings")
    p.add_argument("--quick", action="store_true", help="tiny run: 1 and 16 sessions, 1 repeat, short measurements")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.sessions, args.repeats, args.duration, args.warmup, args.settle = [1, 16], 1, 0.3, 0.1, 0.05
    pairs: list[tuple[str, str]] = list(dict.fromkeys(args.pairs))
    if args.no_cross:
        pairs = [pq for pq in pairs if pq[0] == pq[1]]
    for name in ("repeats", "duration"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name} must be positive, got {getattr(args, name)!r}")
    if any(n < 1 for n in args.sessions):
        raise SystemExit(f"--sessions must all be >= 1, got {args.sessions}")
    if args.steps_per_session is not None and args.steps_per_session < 1:
        raise SystemExit(f"--steps-per-session must be >= 1, got {args.steps_per_session}")
    session_counts = sorted(set(args.sessions))
    if args.uvloop:
        try:
            import uvloop  # noqa: F401
        except ImportError as e:
            raise SystemExit("--uvloop needs the uvloop package: pip install uvloop") from e
    sides = sorted({side for pq in pairs for side in pq})
    if "ours" in sides:
        try:
            import forge_env.client  # noqa: F401
            import forge_env.server  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"forge_env.server/.client are not importable ({e}); run only OpenEnv with --pairs openenv/openenv") from e

    run = BenchRun("env_throughput", argv, packages=PACKAGES)
    if (note := run.busy_note()) is not None:
        print(note, flush=True)
    print(f"env_throughput: pairs {[f'{s}/{c}' for s, c in pairs]}, sessions {session_counts}, "
          f"{args.repeats} repeats x {args.duration}s (warmup {args.warmup}s)", flush=True)
    with tempfile.TemporaryDirectory(prefix="env-throughput-") as tmp, contextlib.ExitStack() as stack:
        servers = {
            side: stack.enter_context(
                serve(
                    side,
                    max_sessions=max(session_counts) + 64,
                    episode_len=args.episode_len,
                    log_dir=Path(tmp),
                    extra_flags=uvicorn_flags(side, args.uvicorn_settings, uvloop=args.uvloop),
                )
            )
            for side in sorted({pq[0] for pq in pairs})
        }
        server_commands = {side: server.command for side, server in servers.items()}
        server_loops = {side: server.loop_kind for side, server in servers.items()}
        server_loop_classes = {side: server.loop for side, server in servers.items()}
        client_loop = "uvloop" if args.uvloop else "asyncio"
        for side, server in servers.items():
            wanted = server_loop(side, args.uvicorn_settings, uvloop=args.uvloop)
            if server.loop_kind != wanted:
                print(f"warning: the {side} server was started with --loop {wanted} but runs on "
                      f"{server.loop}", flush=True)
        print("event loops: " + ", ".join(f"{side} server {loop}" for side, loop in server_loops.items())
              + f"; clients {client_loop}", flush=True)
        try:
            rows = run_loop(
                run_all(
                    servers,
                    pairs,
                    session_counts,
                    repeats=args.repeats,
                    duration=args.duration,
                    steps_per_session=args.steps_per_session,
                    warmup=args.warmup,
                    settle=args.settle,
                    log=sys.stdout,
                ),
                uvloop=args.uvloop,
            )
        except BaseException:
            for server in servers.values():
                print(f"--- {server.side} server log ---\n{server.log_tail()}", file=sys.stderr)
            raise

    ratio_rows = ratios(rows)
    print()
    print(f"--uvicorn-settings {args.uvicorn_settings}; event loops: "
          + ", ".join(f"{side} server {loop}" for side, loop in server_loops.items())
          + f"; clients {client_loop}")
    print(format_table(rows, ratio_rows))
    report = {
        **run.header(),
        "settings": {
            "sessions": session_counts,
            "pairs": [f"{s}/{c}" for s, c in pairs],
            "repeats": args.repeats,
            "duration_s": args.duration,
            "steps_per_session": args.steps_per_session,
            "warmup_s": args.warmup,
            "episode_len": args.episode_len,
            "quick": args.quick,
            "uvicorn_settings": args.uvicorn_settings,
            "uvloop": args.uvloop,
            "server_loops": server_loops,
            "server_loop_classes": server_loop_classes,
            "client_loop": client_loop,
            "server_commands": {side: " ".join(server_commands[side][1:]) for side in server_commands},
        },
        "rows": [asdict(r) for r in rows],
        "ratios": ratio_rows,
    }
    print(f"\nwrote {run.write(report, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
