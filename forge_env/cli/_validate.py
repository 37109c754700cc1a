"""``forge-env validate URL``: run the conformance checks and print a pass/fail table."""

from __future__ import annotations

import argparse
import asyncio
import json

from forge_env.cli._main import EXIT_FAILED, EXIT_OK, CliError

__all__ = ["run_validate"]


def run_validate(args: argparse.Namespace) -> int:
    """Validate the server at ``args.url``; exit 0 only if every required check passed."""
    from forge_env.conformance import normalize_url, validate

    if not args.timeout > 0:
        raise CliError(f"--timeout must be > 0 seconds, got {args.timeout}")
    try:
        url = normalize_url(args.url)
    except ValueError as e:
        raise CliError(str(e)) from e
    report = asyncio.run(validate(url, timeout=args.timeout))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        title = f"forge-env validate {report.url}"
        if report.env_name:
            title += f"  (env {report.env_name!r}, API version {report.api_version})"
        print(title)
        print(report.format_table())
        for check in report.failures:
            print(f"  FAIL {check.name}: {check.detail}")
        for check in report.warnings:
            print(f"  WARN {check.name} (optional): {check.detail}")
    return EXIT_OK if report.passed else EXIT_FAILED
