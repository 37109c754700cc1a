"""RemoteEnv without a server: URL forms, argument checks, misuse errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from forge_env import AnyObservation, AsyncEnv, Observation
from forge_env.client import RemoteEnv, ServerEndpoints


@pytest.mark.parametrize(
    ("given", "http_base", "ws_url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("https://me-guess.hf.space", "https://me-guess.hf.space", "wss://me-guess.hf.space/ws"),
        ("ws://127.0.0.1:8000/ws", "http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws"),
        ("wss://host.example/ws/", "https://host.example", "wss://host.example/ws"),
        ("localhost:9000", "http://localhost:9000", "ws://localhost:9000/ws"),
        ("  HTTP://127.0.0.1:1/prefix/env  ", "http://127.0.0.1:1/prefix/env", "ws://127.0.0.1:1/prefix/env/ws"),
        ("ws://127.0.0.1:8000/ws?session_id=abc", "http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws?session_id=abc"),
    ],
)
def test_every_url_form_names_both_endpoints(given: str, http_base: str, ws_url: str) -> None:
    endpoints = ServerEndpoints.parse(given)
    assert (endpoints.http_base, endpoints.ws_url) == (http_base, ws_url)
    env = RemoteEnv(given)
    assert (env.url, env.ws_url) == (http_base, ws_url)


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("ftp://127.0.0.1:8000", "unsupported URL scheme 'ftp'"),
        ("http://", "no host"),
        ("", "needs a server URL"),
        ("http://127.0.0.1:8000/#x", "#fragment"),
        ("http://127.0.0.1:80a0", "bad port in server URL 'http://127.0.0.1:80a0'"),
    ],
)
def test_bad_urls_are_rejected_with_the_value_quoted(given: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        RemoteEnv(given)


def test_loopback_detection_decides_proxy_bypass() -> None:
    assert ServerEndpoints.parse("http://127.0.0.1:1").is_loopback
    assert ServerEndpoints.parse("http://localhost:1").is_loopback
    assert ServerEndpoints.parse("http://[::1]:1").is_loopback
    assert not ServerEndpoints.parse("https://x.hf.space").is_loopback


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"connect_timeout": 0}, "connect_timeout must be a positive number of seconds, got 0"),
        ({"connect_timeout": None}, "connect_timeout must be a positive"),
        ({"message_timeout": -1.0}, "message_timeout must be a positive number of seconds or None, got -1.0"),
        ({"message_timeout": float("inf")}, "message_timeout"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"max_message_size": 0}, "max_message_size must be a positive"),
    ],
)
def test_bad_numbers_are_rejected(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        RemoteEnv("http://127.0.0.1:1", **kwargs)


def test_types_must_be_pydantic_models() -> None:
    with pytest.raises(TypeError, match="observation_type must be a pydantic model class.*dict"):
        RemoteEnv("http://127.0.0.1:1", observation_type=dict)  # type: ignore[arg-type]


def test_typed_binding_sets_instance_types_only() -> None:
    class GuessObservation(Observation):
        hint: str

    typed = RemoteEnv("http://127.0.0.1:1", observation_type=GuessObservation)
    untyped = RemoteEnv("http://127.0.0.1:1")
    assert typed.observation_type is GuessObservation
    assert untyped.observation_type is AnyObservation
    assert RemoteEnv.observation_type is not GuessObservation  # the class default is untouched
    assert isinstance(typed, AsyncEnv)


async def test_step_rejects_non_actions_before_any_network() -> None:
    env = RemoteEnv("http://127.0.0.1:1")
    with pytest.raises(TypeError, match="action model or a dict.*got str"):
        await env.step("guess 5")  # type: ignore[arg-type]
    assert not env.is_connected


async def test_closed_env_cannot_be_reused_and_close_is_idempotent() -> None:
    env = RemoteEnv("http://127.0.0.1:1")
    await env.close()
    await env.close()
    with pytest.raises(RuntimeError, match="was closed; create a new RemoteEnv"):
        await env.reset()
    assert "session=closed" in str(env)


def test_plain_with_points_to_async_with_or_sync() -> None:
    with pytest.raises(TypeError, match="async with env"):
        with RemoteEnv("http://127.0.0.1:1"):
            pass


def test_client_imports_without_heavy_dependencies() -> None:
    code = (
        "import sys, forge_env.client; "
        "bad = [m for m in ('torch', 'numpy', 'gymnasium') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sync_view_runs_on_its_own_loop() -> None:
    with RemoteEnv("http://127.0.0.1:1").sync() as env:
        assert isinstance(env.env, RemoteEnv)
        assert not env._loop.is_closed()
    assert env._loop.is_closed()
