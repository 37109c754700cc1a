"""Argument parsing and error handling for ``forge-env``; each command lives in its own module.

Errors a user can fix (bad URL, no server, unknown env, busy port) print one line naming the
fix and exit with code 2, without a traceback; ``--debug`` shows the traceback too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Sequence

from forge_env._exceptions import ForgeEnvError

__all__ = ["CliError", "build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and found a failure (validate: a required check failed)
EXIT_USAGE = 2  # the command could not run: fix the input or start the server

_DESCRIPTION = """\
forge-env: serve, check and play reinforcement-learning environments that speak the
OpenEnv wire (WebSocket /ws sessions + HTTP), from the command line."""

_EPILOG = """\
examples:
  forge-env list                                  # built-in environments
  forge-env serve guess_number --port 8000        # serve one (Ctrl-C stops it)
  forge-env validate http://127.0.0.1:8000        # conformance checks, exit 0 = pass
  forge-env play http://127.0.0.1:8000 --seed 3   # step it yourself from the terminal
  forge-env build echo && forge-env run echo      # the same env in a Docker container
  forge-env rollout guess_number --episodes 4     # a model-backed agent plays it

run `forge-env COMMAND --help` for a command's options."""


class CliError(Exception):
    """A problem the user can fix; ``main`` prints the message as one line and exits 2.

    >>> str(CliError("port 8000 is in use: pick another with --port"))
    'port 8000 is in use: pick another with --port'
    """


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples' line breaks and show each option's default."""


def build_parser() -> argparse.ArgumentParser:
    """The ``forge-env`` argument parser (subcommands ``serve``, ``validate``, ``play``,
    ``build``, ``run``, ``rollout``, ``list``).

    >>> build_parser().parse_args(["validate", "127.0.0.1:8000", "--json"]).json
    True
    """
    parser = argparse.ArgumentParser(
        prog="forge-env", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=_Formatter
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    from forge_env import __version__

    parser.add_argument("--version", action="version", version=f"forge-env {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_: str, description: str, epilog: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_, description=description, epilog=epilog, formatter_class=_Formatter
        )
        # Accept --debug after the command too (`forge-env play URL --debug`).
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks and debug logs")
        return p

    serve = add(
        "serve",
        "serve an environment over the OpenEnv wire",
        "Serve an environment as an OpenEnv-compatible server (WebSocket /ws sessions, "
        "HTTP /health /metadata /schema /reset /step /state /mcp) until Ctrl-C.",
        "examples:\n"
        "  forge-env serve guess_number                      # a built-in env\n"
        "  forge-env serve ./envs/guess_number --port 9000   # an env folder\n"
        "  forge-env serve my_env.py:MyEnv --max-sessions 64 # a class in a file\n"
        "  forge-env serve my_pkg.server.app:app             # an existing ASGI app",
    )
    serve.add_argument("env", metavar="ENV",
                       help="built-in env name, env folder path, or module:attr (class, "
                            "factory or app)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind; anything but loopback exposes the env to the network")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (0 picks a free one)")
    serve.add_argument("--max-sessions", type=int, default=256,
                       help="most WebSocket sessions at once (one env instance each)")
    serve.add_argument("--idle-timeout", type=float, default=300.0, metavar="S",
                       help="close sessions idle for this many seconds")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug", "trace"],
                       help="server log level")

    validate = add(
        "validate",
        "check a running server against the OpenEnv wire",
        "Run the conformance checks against a running server (ours, OpenEnv's, anyone's): "
        "HTTP routes, a WebSocket session (reset/state/step, error codes, close), "
        "concurrent-session isolation and MCP JSON-RPC. Exit code 0 only if every "
        "required check passes (1 otherwise, 2 when no server answers).",
        "examples:\n"
        "  forge-env validate http://127.0.0.1:8000\n"
        "  forge-env validate 127.0.0.1:8000 --json > report.json\n"
        "  forge-env validate https://me-my-env.hf.space --timeout 30",
    )
    validate.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.add_argument("--timeout", type=float, default=10.0, metavar="S",
                          help="deadline for each request and each WebSocket message")

    play = add(
        "play",
        "step an environment yourself from the terminal",
        "Open one session on a running server and play it: each line you type is an "
        "action, either a JSON object or, when the action has exactly one required field, "
        "a bare value for it (e.g. `42` for guess_number).\n"
        "commands: :reset [SEED]  :state  :schema  :tools  :help  :quit (or EOF / Ctrl-D)",
        "examples:\n"
        "  forge-env play http://127.0.0.1:8000\n"
        "  forge-env play http://127.0.0.1:8000 --seed 7\n"
        "  printf '50\\n25\\n:state\\n:quit\\n' | forge-env play http://127.0.0.1:8000",
    )
    play.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    play.add_argument("--seed", type=int, default=None, help="seed of the first episode")
    play.add_argument("--timeout", type=float, default=60.0, metavar="S",
                      help="deadline for each server reply")

    build = add(
        "build",
        "build an env's Docker image",
        "Build an env's Docker image (needs a Docker engine: `scripts/docker_engine.sh start`). "
        "The build context holds this checkout's pyproject.toml, README.md, forge_env/ and "
        "envs/; an env folder outside envs/ is copied in as envs/<folder name>/, so a "
        "Dockerfile like envs/echo/Dockerfile works for it. Build steps go to stderr, the "
        "tag to stdout.",
        "examples:\n"
        "  forge-env build guess_number                  # -> forge-env/guess_number:latest\n"
        "  forge-env build ./my_env --tag me/my_env:0.1  # your env folder with a Dockerfile\n"
        "  forge-env build echo --base-image python:3.12-slim --no-cache",
    )
    build.add_argument("env", metavar="ENV",
                       help="built-in env name, or a path to an env folder holding a Dockerfile")
    build.add_argument("--base-image", default=None, metavar="IMG",
                       help="BASE_IMAGE build arg (default: local/python-base:bookworm if the "
                            "engine has it, else the Dockerfile's default)")
    build.add_argument("--tag", default=None, metavar="T",
                       help="image tag (default: forge-env/<name>:latest)")
    build.add_argument("--no-cache", action="store_true", help="rebuild every layer")

    run = add(
        "run",
        "serve an env image in a container until Ctrl-C",
        "Run an env image in a locked-down container (no capabilities, read-only root, "
        "memory/CPU/pid limits) published on 127.0.0.1, print its URL, and remove the "
        "container on Ctrl-C.",
        "examples:\n"
        "  forge-env run guess_number --port 8000        # forge-env/guess_number:latest\n"
        "  forge-env run ghcr.io/me/my-env:1 --memory 1g --pull if-missing",
    )
    run.add_argument("env", metavar="ENV|IMAGE",
                     help="built-in env name or env folder (its forge-env/<name>:latest image), "
                          "or any OpenEnv image serving port 8000")
    run.add_argument("--port", type=int, default=None, help="host port on 127.0.0.1 (default: a free one)")
    run.add_argument("--memory", default="512m", help="memory limit (docker syntax)")
    run.add_argument("--cpus", type=float, default=1.0, help="CPU limit")
    run.add_argument("--pull", default="if-missing", choices=["never", "if-missing", "always"],
                     help="when to pull the image from a registry")

    rollout = add(
        "rollout",
        "watch a model-backed agent play episodes",
        "Play episodes of an environment with a language-model agent (vLLM, or plain torch "
        "without it) and print each transcript and a summary: success rate, mean turns, "
        "tokens/s. The trajectories keep the generator's exact token ids and logprobs.",
        "examples:\n"
        "  forge-env rollout guess_number --episodes 8           # the tiny local model\n"
        "  forge-env rollout countdown --model smollm2-135m      # a real pretrained model\n"
        "  forge-env rollout http://127.0.0.1:8000 --out runs/t.jsonl",
    )
    from forge_env.cli._rollout import add_rollout_arguments

    add_rollout_arguments(rollout)

    add(
        "list",
        "list the built-in environments",
        "List the built-in environments with a one-line description each.",
        "example:\n  forge-env list",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``forge-env`` with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    >>> main(["list"]) == 0  # doctest: +ELLIPSIS
    ENV           DESCRIPTION
    ...
    guess_number  Guess a hidden integer in a few turns from higher/lower hints.
    ...
    True
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (argparse printed it)
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("forge-env: interrupted", file=sys.stderr)
        return 130
    except (CliError, ForgeEnvError) as e:
        _report(args, str(e), debug)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the last line of defence: no raw traceback
        _report(args, f"internal error: {type(e).__name__}: {e} (please report it; "
                      "--debug shows the traceback)", debug)
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from forge_env.cli._serve import run_serve

        return run_serve(args)
    if args.command == "validate":
        from forge_env.cli._validate import run_validate

        return run_validate(args)
    if args.command == "play":
        from forge_env.cli._play import run_play_command

        return run_play_command(args)
    if args.command == "build":
        from forge_env.cli._build import run_build

        return run_build(args)
    if args.command == "run":
        from forge_env.cli._run import run_run

        return run_run(args)
    if args.command == "rollout":
        from forge_env.cli._rollout import run_rollout

        return run_rollout(args)
    if args.command == "list":
        from forge_env.cli._list import run_list

        return run_list(args)
    raise CliError(f"unknown command {args.command!r}: run `forge-env --help`")  # pragma: no cover


def _report(args: argparse.Namespace, message: str, debug: bool) -> None:
    lines = message.strip().splitlines() or ["(no message)"]
    first = lines[0]
    if len(lines) > 1 and not debug:
        first += " (--debug shows more)"
    command = getattr(args, "command", None)
    prefix = f"forge-env {command}" if command else "forge-env"
    print(f"{prefix}: error: {first}", file=sys.stderr)
    if debug:
        for line in lines[1:]:
            print(f"  {line}", file=sys.stderr)
        traceback.print_exc()
