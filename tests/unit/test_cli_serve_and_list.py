"""``forge-env serve`` and ``list`` in-process, with the blocking server call replaced (unit
speed): the banner, the non-loopback warning, argument checks, the list table."""

from __future__ import annotations

from typing import Any

import pytest

import forge_env.server
from envs import describe
from forge_env.cli import main
from forge_env.cli import _serve as serve_module


@pytest.fixture
def fake_serve(monkeypatch):
    """Record serve() calls instead of blocking; never bind a socket."""
    calls: list[dict[str, Any]] = []

    def _serve(app: Any, **kwargs: Any) -> None:
        calls.append({"app": app, **kwargs})

    monkeypatch.setattr(forge_env.server, "serve", _serve)
    monkeypatch.setattr(serve_module, "_claim_port", lambda host, port: port or 43210)
    return calls


def test_serve_banner_and_arguments(fake_serve, capsys):
    code = main(["serve", "guess_number", "--port", "8123", "--max-sessions", "3",
                 "--idle-timeout", "9", "--log-level", "warning"])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.splitlines()[0] == (
        "Serving guess_number on http://127.0.0.1:8123  (WebSocket sessions at "
        "ws://127.0.0.1:8123/ws, up to 3 at once)")
    assert "forge-env validate http://127.0.0.1:8123" in out
    assert "forge-env play http://127.0.0.1:8123" in out
    assert err == ""  # loopback: no warning
    (call,) = fake_serve
    assert (call["host"], call["port"], call["log_level"]) == ("127.0.0.1", 8123, "warning")
    assert call["app"].state.stats.max_sessions == 3  # the app was built with our limits


def test_serve_warns_for_a_non_loopback_host(fake_serve, capsys):
    assert main(["serve", "guess_number", "--host", "0.0.0.0", "--port", "8124"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("warning: binding 0.0.0.0 exposes this env to the network")
    assert "--host 127.0.0.1" in err
    # The commands shown must reach the server: a wildcard bind is reached on loopback.
    assert "forge-env validate http://127.0.0.1:8124" in out
    assert fake_serve[0]["host"] == "0.0.0.0"


def test_serve_port_zero_picks_one(fake_serve, capsys):
    assert main(["serve", "echo", "--port", "0"]) == 0
    assert "http://127.0.0.1:43210" in capsys.readouterr().out
    assert fake_serve[0]["port"] == 43210


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "guess_number", "--port", "70000"], "--port must be 0..65535, got 70000"),
        (["serve", "guess_number", "--max-sessions", "0"], "--max-sessions must be >= 1"),
        (["serve", "guess_number", "--idle-timeout", "-1"], "--idle-timeout must be > 0"),
        (["serve", "./no/such/folder"], "Run `forge-env list` for the built-in envs"),
    ],
)
def test_serve_bad_arguments_exit_2(fake_serve, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert fake_serve == []


def test_list_prints_every_builtin_env(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ENV", "DESCRIPTION"]
    table = describe()
    for name, description in table.items():
        assert any(line.split(None, 1) == [name, description] for line in lines), (name, lines)
    assert lines[-1] == "serve one: forge-env serve guess_number --port 8000"
