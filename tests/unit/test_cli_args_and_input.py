"""Unit tests of the CLI's pure parts: argument parsing, play's action input, schema examples,
report formatting, and the exit-code/one-line-error contract."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pydantic import BaseModel, Field

from forge_env.cli import build_parser, main
from forge_env.cli._play import ActionInputError, parse_action_line
from forge_env.cli._serve import is_loopback_host
from forge_env.conformance import (
    CheckResult,
    ConformanceReport,
    example_from_schema,
    normalize_url,
    required_fields,
)

# --- schema examples --------------------------------------------------------------------


class _Inner(BaseModel):
    x: float = Field(ge=-1.0, le=3.0)


class _Kind(BaseModel):
    kind: str = Field(min_length=10)


class _Complex(BaseModel):
    guess: int = Field(ge=1, le=100)
    name: str
    flag: bool
    maybe: int | None
    choice: str = Field(json_schema_extra={"enum": ["a", "b"]})
    inner: _Inner
    items: list[int] = Field(min_length=2)
    optional: str = "kept default"


def test_example_from_pydantic_schema_validates_against_the_model():
    schema = _Complex.model_json_schema()
    example = example_from_schema(schema)
    assert example == {
        "guess": 50, "name": "example", "flag": False, "maybe": 0, "choice": "a",
        "inner": {"x": 1.0}, "items": [0, 0],
    }
    _Complex.model_validate(example)  # type-correct, bounds respected
    assert "optional" not in example  # optional fields keep the server's default


def test_example_respects_string_length_and_exclusive_bounds():
    assert example_from_schema(_Kind.model_json_schema()) == {"kind": "examplexxx"}
    assert example_from_schema({"type": "integer", "exclusiveMinimum": 5}) == 6
    assert example_from_schema({"type": "integer", "maximum": -3}) == -3
    assert example_from_schema({"type": "string", "maxLength": 3}) == "exa"
    assert example_from_schema({"const": "fixed"}) == "fixed"
    assert example_from_schema({"type": ["null", "boolean"]}) is False


def test_example_survives_recursive_and_remote_refs():
    recursive = {"$ref": "#/$defs/Node", "$defs": {"Node": {
        "type": "object", "required": ["child"], "properties": {"child": {"$ref": "#/$defs/Node"}}}}}
    value = example_from_schema(recursive)
    depth = 0
    while isinstance(value, dict):
        value, depth = value.get("child"), depth + 1
    assert 3 < depth < 20  # bounded, not infinite
    assert example_from_schema({"$ref": "https://elsewhere/schema.json"}) is None


def test_required_fields():
    assert required_fields(_Complex.model_json_schema()) == [
        "guess", "name", "flag", "maybe", "choice", "inner", "items"]
    assert required_fields({"type": "object"}) == []


# --- play input -------------------------------------------------------------------------

GUESS = {"type": "object", "required": ["guess"], "properties": {"guess": {"type": "integer"}}}
TEXT = {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}
TWO = {"type": "object", "required": ["row", "col"],
       "properties": {"row": {"type": "integer"}, "col": {"type": "integer"}}}


@pytest.mark.parametrize(
    ("line", "schema", "expected"),
    [
        ("42", GUESS, {"guess": 42}),
        ("  -7 ", GUESS, {"guess": -7}),
        ('{"guess": 3}', GUESS, {"guess": 3}),
        ("abc", GUESS, {"guess": "abc"}),  # sent as typed: the server's VALIDATION_ERROR explains
        ("42", TEXT, {"message": "42"}),  # a string field gets the raw text
        ("hello world", TEXT, {"message": "hello world"}),
        ('"quoted"', TEXT, {"message": "quoted"}),  # a JSON string literal is decoded
        ('{"row": 1, "col": 2}', TWO, {"row": 1, "col": 2}),
    ],
)
def test_parse_action_line(line: str, schema: dict[str, Any], expected: dict[str, Any]):
    assert parse_action_line(line, schema) == expected


def test_bare_value_needs_exactly_one_required_field():
    with pytest.raises(ActionInputError, match=r"required fields \['row', 'col'\].*\{\"row\": 0, \"col\": 0\}"):
        parse_action_line("3", TWO)
    with pytest.raises(ActionInputError, match="no required field"):
        parse_action_line("3", {"type": "object", "properties": {}})


# --- arguments --------------------------------------------------------------------------


def test_parser_defaults_and_options():
    parser = build_parser()
    serve = parser.parse_args(["serve", "guess_number"])
    assert (serve.host, serve.port, serve.max_sessions, serve.idle_timeout, serve.log_level) == (
        "127.0.0.1", 8000, 256, 300.0, "info")
    play = parser.parse_args(["play", "http://127.0.0.1:1", "--seed", "5"])
    assert play.seed == 5 and play.command == "play"
    validate = parser.parse_args(["validate", "u", "--json", "--timeout", "2.5", "--debug"])
    assert validate.json and validate.timeout == 2.5 and validate.debug


def test_help_shows_examples(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("serve", "validate", "play", "list"):
        assert f"forge-env {command}" in out
    assert main(["play", "--help"]) == 0
    out = capsys.readouterr().out
    assert ":reset [SEED]" in out and "printf" in out


def test_usage_error_exits_2(capsys):
    assert main(["serve"]) == 2
    assert "ENV" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_loopback_hosts():
    assert is_loopback_host("127.0.0.1") and is_loopback_host("::1") and is_loopback_host("localhost")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("10.0.0.1")
    assert not is_loopback_host("example.org")


# --- errors: one line, exit 2, no traceback ---------------------------------------------


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["validate", "ftp://127.0.0.1:1"], "is not a server URL; pass one like http://127.0.0.1:8000"),
        (["validate", "http://127.0.0.1:{port}"], "no server answers at http://127.0.0.1:"),
        (["play", "http://127.0.0.1:{port}"], "could not connect"),
        (["play", "gopher://x"], "unsupported URL scheme"),
        (["validate", "http://127.0.0.1:{port}", "--timeout", "0"], "--timeout must be > 0"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, expected, capsys):
    port = _dead_port()
    code = main([a.format(port=port) for a in argv])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_debug_shows_the_traceback(capsys):
    assert main(["--debug", "validate", f"http://127.0.0.1:{_dead_port()}"]) == 2
    assert "Traceback" in capsys.readouterr().err


# --- report -----------------------------------------------------------------------------


def test_report_table_and_verdict():
    report = ConformanceReport(
        "http://127.0.0.1:1",
        [
            CheckResult("health", True, True, "ok", 0.0012),
            CheckResult("schema", False, True, "GET /schema answered 404", 0.002),
            CheckResult("ws_concurrent", False, False, "shared state", 0.01),
            CheckResult("http_step", True, False, "no route", 0.0, skipped=True),
        ],
        duration_s=0.5,
    )
    assert not report.passed
    assert [c.status for c in report.checks] == ["PASS", "FAIL", "WARN", "SKIP"]
    table = report.format_table()
    schema_line = next(line for line in table.splitlines() if line.startswith("schema "))
    assert schema_line.split() == ["schema", "FAIL", "2.0", "ms", "GET", "/schema", "answered", "404"]
    assert table.splitlines()[-1] == (
        "FAILED: 1/2 required checks passed (1 optional warning(s), 1 skipped) in 0.50 s")
    d = report.to_dict()
    assert d["summary"] == {"checks": 4, "required": 2, "required_passed": 1,
                            "failed": ["schema"], "warnings": ["ws_concurrent"]}
    with pytest.raises(KeyError, match="checks are"):
        report.check("nope")


def test_normalize_url_forms():
    assert normalize_url("localhost:9000") == "http://localhost:9000"
    assert normalize_url("wss://x.hf.space/ws") == "https://x.hf.space"
    assert normalize_url("http://h:1/prefix/") == "http://h:1/prefix"
    with pytest.raises(ValueError, match="empty"):
        normalize_url("  ")
