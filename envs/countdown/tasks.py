"""Countdown tasks: numbers and a target, generated so that a solution always exists.

A task is made by drawing the numbers, then combining all of them in random order with
random operators into one expression whose value — always a positive integer — becomes the
target. That expression is kept as the reference solution.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["CountdownTask", "generate_task", "make_task_dataset"]

_MAX_TARGET = 1000
_MAX_TRIES = 100


@dataclasses.dataclass(frozen=True, slots=True)
class CountdownTask:
    """One puzzle.

    >>> task = generate_task(random.Random(0))
    >>> len(task.numbers), task.target > 0
    (4, True)
    """

    numbers: tuple[int, ...]
    """The numbers the player may use, each at most once."""
    target: int
    """The value to reach."""
    solution: str = ""
    """A reference expression reaching the target (empty for tasks given from outside)."""

    def __post_init__(self) -> None:
        if not self.numbers or any(isinstance(n, bool) or not isinstance(n, int) for n in self.numbers):
            raise ValueError(f"numbers must be a non-empty list of integers, got {list(self.numbers)!r}")
        if isinstance(self.target, bool) or not isinstance(self.target, int):
            raise ValueError(f"target must be an integer, got {self.target!r}")

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> CountdownTask:
        """Build from a dict / dataset row with ``numbers``, ``target`` and optional ``solution``."""
        try:
            numbers, target = row["numbers"], row["target"]
        except KeyError:
            raise ValueError(
                f"a countdown task needs 'numbers' and 'target'; got keys {sorted(row)}"
            ) from None
        return cls(tuple(int(n) for n in numbers), int(target), str(row.get("solution") or ""))

    def to_dict(self) -> dict[str, Any]:
        return {"numbers": list(self.numbers), "target": self.target, "solution": self.solution}


def generate_task(rng: random.Random, *, n_numbers: int = 4, max_number: int = 10) -> CountdownTask:
    """Draw a solvable task from ``rng``: ``n_numbers`` integers in ``1..max_number``.

    The target is a positive integer up to 1000, different from each of the numbers (so
    no task is solved by writing one number).
    """
    if not 2 <= n_numbers <= 8:
        raise ValueError(f"n_numbers must be between 2 and 8, got {n_numbers}")
    if not 2 <= max_number <= 1000:
        raise ValueError(f"max_number must be between 2 and 1000, got {max_number}")
    numbers = tuple(rng.randint(1, max_number) for _ in range(n_numbers))
    for _ in range(_MAX_TRIES):
        value, expression = _random_expression(rng, numbers)
        if value.denominator == 1 and 0 < value <= _MAX_TARGET and int(value) not in numbers:
            return CountdownTask(numbers, int(value), expression)
    # Bounded retries; the sum of all numbers is always a valid (if easy) target.
    return CountdownTask(numbers, sum(numbers), " + ".join(str(n) for n in numbers))


def _random_expression(rng: random.Random, numbers: tuple[int, ...]) -> tuple[Fraction, str]:
    # Items are (value, expression, is_compound); compound operands get parentheses.
    items: list[tuple[Fraction, str, bool]] = [(Fraction(n), str(n), False) for n in numbers]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        (a, ea, ca), (b, eb, cb) = items[i], items[j]
        pa, pb = (f"({ea})" if ca else ea), (f"({eb})" if cb else eb)
        candidates = [(a + b, f"{pa} + {pb}"), (a * b, f"{pa} * {pb}")]
        if a > b:
            candidates.append((a - b, f"{pa} - {pb}"))
        if b not in (0, 1) and (a / b).denominator == 1:
            candidates.append((a / b, f"{pa} / {pb}"))
        value, expression = rng.choice(candidates)
        items = [item for k, item in enumerate(items) if k not in (i, j)]
        items.append((value, expression, True))
    return items[0][0], items[0][1]


def make_task_dataset(
    n: int, seed: int = 0, *, n_numbers: int = 4, max_number: int = 10
) -> datasets.Dataset:
    """A local ``datasets.Dataset`` of ``n`` tasks drawn from ``random.Random(seed)``.

    Columns: ``index``, ``numbers``, ``target``, ``solution``. Pass it to
    ``CountdownEnv(tasks=...)`` and pick a task with ``reset(options={"index": i})``.
    Needs the ``datasets`` package (``pip install 'forge-env[data]'``); nothing is downloaded.
    """
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("make_task_dataset needs `datasets`: pip install 'forge-env[data]'") from e
    rng = random.Random(seed)
    rows = [generate_task(rng, n_numbers=n_numbers, max_number=max_number).to_dict() for _ in range(n)]
    return datasets.Dataset.from_list([{"index": i, **row} for i, row in enumerate(rows)])
