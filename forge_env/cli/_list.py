"""``forge-env list``: the built-in environments and what each one is."""

from __future__ import annotations

import argparse

from forge_env.cli._main import EXIT_OK, CliError

__all__ = ["run_list"]


def run_list(args: argparse.Namespace) -> int:
    """Print one line per built-in env: its name and description."""
    try:
        import envs
    except ImportError as e:
        raise CliError(
            "the built-in envs are not installed (no `envs` package): install forge-env "
            "from its source tree with `pip install -e .`"
        ) from e
    table = envs.describe()
    if not table:
        print("no built-in environments")
        return EXIT_OK
    width = max(len(name) for name in table)
    print(f"{'ENV':<{width}}  DESCRIPTION")
    for name in sorted(table):
        print(f"{name:<{width}}  {table[name]}")
    example = "guess_number" if "guess_number" in table else sorted(table)[0]
    print(f"\nserve one: forge-env serve {example} --port 8000")
    return EXIT_OK
