"""``forge-env build ENV``: build an env's Docker image (``forge-env/<name>:latest``)."""

from __future__ import annotations

import argparse
import sys
import time

from forge_env.cli._main import EXIT_OK, EXIT_USAGE

__all__ = ["run_build"]


def run_build(args: argparse.Namespace) -> int:
    """Build the image, streaming the build steps to stderr; print the tag on stdout.

    On a failed build: one error line, then the last build-log lines, exit 2.
    """
    from forge_env.runtime import ImageBuildError, build_env_image

    started = time.monotonic()

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    print(f"forge-env build: building {args.env} ...", file=sys.stderr, flush=True)
    try:
        tag = build_env_image(
            args.env,
            base_image=args.base_image,
            tag=args.tag,
            no_cache=args.no_cache,
            progress=progress,
        )
    except ImageBuildError as e:
        print(f"forge-env build: error: {e}", file=sys.stderr)
        if e.log_tail:
            print("last lines of the build log:", file=sys.stderr)
            for line in e.log_tail:
                print(f"  | {line}", file=sys.stderr)
        return EXIT_USAGE
    took = time.monotonic() - started
    print(
        f"forge-env build: built {tag} in {took:.1f}s\n"
        f"  run it: forge-env run {tag} --port 8000",
        file=sys.stderr,
    )
    print(tag, flush=True)
    return EXIT_OK
