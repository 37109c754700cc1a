"""``forge-env play URL``: a person steps a remote environment from the terminal.

Reads one line at a time (a TTY or a pipe), so the same loop serves a human and a test
that pipes a script of actions into stdin. Input is read in a worker thread: the event
loop stays free to answer the WebSocket's keepalive pings while a person thinks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, TextIO

from forge_env._exceptions import ConnectionClosedError, ForgeEnvError, ServerError, TransportError
from forge_env.cli._main import EXIT_OK, CliError

__all__ = ["ActionInputError", "parse_action_line", "run_play", "run_play_command"]

_HELP = "commands: :reset [SEED]  :state  :schema  :tools  :help  :quit (or EOF)"
# A terminal session is bounded by EOF; this only stops a runaway input stream.
_MAX_LINES = 1_000_000


class ActionInputError(ValueError):
    """The typed line is not an action for this env; the message shows what to type."""


def parse_action_line(line: str, action_schema: dict[str, Any]) -> dict[str, Any]:
    """Turn a typed line into an action dict.

    A JSON object is the action. Anything else is the value of the action's single
    required field (JSON-decoded when it parses, else the raw text; a string field
    always gets the raw text, so ``42`` is the string ``"42"`` there).

    >>> schema = {"type": "object", "required": ["guess"],
    ...           "properties": {"guess": {"type": "integer"}}}
    >>> parse_action_line("42", schema)
    {'guess': 42}
    >>> parse_action_line('{"guess": 7}', schema)
    {'guess': 7}

    Raises:
        ActionInputError: a bare value, but the action does not have exactly one
            required field; the message shows an example JSON action.
    """
    from forge_env.conformance import example_from_schema, required_fields

    text = line.strip()
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, dict):
        return value
    required = required_fields(action_schema)
    if len(required) != 1:
        example = json.dumps(example_from_schema(action_schema))
        fields = f"required fields {required}" if required else "no required field"
        raise ActionInputError(
            f"this env's action has {fields}: type a JSON object, e.g. {example}"
        )
    field = required[0]
    field_schema = _property_schema(action_schema, field)
    if _is_string_field(field_schema, action_schema) and not isinstance(value, str):
        value = text
    return {field: value}


def _property_schema(schema: dict[str, Any], field: str) -> dict[str, Any]:
    props = schema.get("properties") or {}
    found = props.get(field)
    return found if isinstance(found, dict) else {}


def _is_string_field(field_schema: dict[str, Any], root: dict[str, Any]) -> bool:
    types: set[Any] = set()
    stack = [field_schema]
    for _ in range(16):  # bounded walk over anyOf/$ref
        if not stack:
            break
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
            target: Any = root
            for part in node["$ref"][2:].split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            stack.append(target)
        kind = node.get("type")
        types.update(kind if isinstance(kind, list) else [kind])
        for key in ("anyOf", "oneOf"):
            stack.extend(node.get(key) or [])
    types.discard(None)
    types.discard("null")
    return types == {"string"}


def _action_hint(action_schema: dict[str, Any]) -> str:
    from forge_env.conformance import example_from_schema, required_fields

    example = example_from_schema(action_schema)
    required = required_fields(action_schema)
    hint = f"action: a JSON object like {json.dumps(example)}"
    if len(required) == 1:
        bare = example.get(required[0]) if isinstance(example, dict) else None
        hint += f", or a bare value for `{required[0]}` (e.g. {json.dumps(bare)})"
    return hint


class _Player:
    """The play loop's state: one RemoteEnv session, the current episode, the output."""

    def __init__(self, env: Any, out: TextIO, schema: dict[str, Any]) -> None:
        self.env = env
        self.out = out
        self.schema = schema
        action = schema.get("action")
        self.action_schema: dict[str, Any] = action if isinstance(action, dict) else {}
        self.episode = 0
        self.turns = 0
        self.total_reward = 0.0
        self.done = False
        self.seed: int | None = None

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def show(self, observation: Any, reward: float | None, done: bool, note: str = "") -> None:
        self.say(self.env.render_text(observation))
        reward_text = "-" if reward is None else f"{reward:g}"
        self.say(f"[turn {self.turns}] reward {reward_text}  return {self.total_reward:g}  "
                 f"done {done}{note}")

    async def reset(self, seed: int | None) -> None:
        observation, info = await self.env.reset(seed=seed)
        self.episode += 1
        self.turns = 0
        self.total_reward = 0.0
        self.done = bool(info.get("done", False))
        self.seed = seed
        self.say(f"== episode {self.episode}" + (f" (seed {seed})" if seed is not None else "")
                 + " ==")
        self.show(observation, info.get("reward"), self.done)

    async def step(self, action: dict[str, Any]) -> None:
        if self.done:
            self.say("the episode is over: type :reset [SEED] to start another, or :quit")
            return
        result = await self.env.step(action)
        self.turns += 1
        self.total_reward += result.reward
        self.done = result.done
        note = " (truncated)" if result.truncated else ""
        self.show(result.observation, result.reward, result.done, note)
        if self.done:
            self.say(f"== episode {self.episode} over after {self.turns} turn(s): "
                     f"return {self.total_reward:g}. :reset [SEED] plays again, :quit ends ==")

    async def command(self, line: str) -> bool:
        """Run a ``:command``; return False to stop."""
        name, _, rest = line[1:].strip().partition(" ")
        name = name.lower()
        if name in ("quit", "q", "exit"):
            return False
        if name == "reset":
            seed: int | None = None
            if rest.strip():
                try:
                    seed = int(rest.strip())
                except ValueError:
                    self.say(f"error: :reset takes an integer seed, got {rest.strip()!r}")
                    return True
            await self.reset(seed)
        elif name == "state":
            state = await self.env.state()
            self.say(json.dumps(state.model_dump(mode="json"), indent=2, default=repr))
        elif name == "schema":
            self.say(json.dumps(self.schema, indent=2))
        elif name == "tools":
            tools = await self.env.list_tools()
            if not tools:
                self.say("this env offers no tools")
            for tool in tools:
                self.say(f"{tool.name}: {tool.description}  args {json.dumps(tool.input_schema)}")
        elif name == "help":
            self.say(_action_hint(self.action_schema))
            self.say(_HELP)
        else:
            self.say(f"error: unknown command :{name}. {_HELP}")
        return True


async def run_play(
    url: str,
    *,
    seed: int | None = None,
    input_stream: TextIO | None = None,
    output: TextIO | None = None,
    message_timeout: float = 60.0,
) -> int:
    """Play the env at ``url`` with lines from ``input_stream`` until ``:quit`` or EOF.

    >>> # import io; await run_play("http://127.0.0.1:8000", seed=1,
    >>> #                           input_stream=io.StringIO("50\\n:quit\\n"))

    Returns:
        0 (server-side errors on single actions are shown and play goes on).

    Raises:
        ConnectError: no server at ``url`` (the CLI turns it into a one-line error).
    """
    from forge_env.client import RemoteEnv

    stdin = input_stream if input_stream is not None else sys.stdin
    out = output if output is not None else sys.stdout
    echo = not (hasattr(stdin, "isatty") and stdin.isatty())
    env: RemoteEnv[Any, Any] = RemoteEnv(
        url, message_timeout=message_timeout, connect_timeout=10.0
    )
    async with env:
        meta = await env.metadata()
        schema = await env.schema()
        player = _Player(env, out, schema if isinstance(schema, dict) else {})
        player.say(f"forge-env play: {meta.name} at {env.url}")
        if meta.description:
            player.say(f"  {meta.description}")
        player.say(f"  {_action_hint(player.action_schema)}")
        player.say(f"  {_HELP}")
        await player.reset(seed)
        for _ in range(_MAX_LINES):
            if not echo:
                out.write("> ")
                out.flush()
            line = await asyncio.to_thread(stdin.readline)
            if not line:  # EOF
                break
            line = line.rstrip("\r\n")
            if echo:
                player.say(f"> {line}")
            if not line.strip():
                continue
            try:
                if line.lstrip().startswith(":"):
                    if not await player.command(line.strip()):
                        break
                    continue
                try:
                    action = parse_action_line(line, player.action_schema)
                except ActionInputError as e:
                    player.say(f"error: {e}")
                    continue
                await player.step(action)
            except ServerError as e:
                player.say(f"error from the server: {_server_error_text(e)}")
            except ConnectionClosedError as e:
                player.done = True
                player.say(f"error: {e.message} (type :reset to reconnect)")
            except (TransportError, ForgeEnvError) as e:
                player.say(f"error: {e.message}")
        player.say("bye")
    return EXIT_OK


def _server_error_text(error: ServerError) -> str:
    text = error.message
    errors = error.data.get("errors")
    if isinstance(errors, list) and errors:
        parts = []
        for item in errors[:3]:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ())) or "(action)"
                parts.append(f"{loc}: {item.get('msg')}")
        if parts:
            text += " (" + "; ".join(parts) + ")"
    return text


def run_play_command(args: argparse.Namespace) -> int:
    """The ``play`` subcommand: validate arguments, then :func:`run_play` on stdin/stdout."""
    from forge_env.client import ServerEndpoints

    if not args.timeout > 0:
        raise CliError(f"--timeout must be > 0 seconds, got {args.timeout}")
    try:
        ServerEndpoints.parse(args.url)
    except ValueError as e:
        raise CliError(str(e)) from e
    return asyncio.run(run_play(args.url, seed=args.seed, message_timeout=args.timeout))
