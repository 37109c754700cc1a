"""Every built-in env, served by our server, passes our conformance validator, and so does
an OpenEnv-made server judged by OpenEnv's own validator and ours alike."""

from __future__ import annotations

import pytest

from envs import BUILTIN_ENVS, load_env_factory
from forge_env.conformance import validate
from forge_env.server import create_app


@pytest.mark.parametrize("name", sorted(BUILTIN_ENVS))
async def test_builtin_env_passes_every_required_check(name, serve_app):
    url = serve_app(create_app(load_env_factory(name), max_sessions=8))
    report = await validate(url, timeout=10.0)
    assert report.passed, report.format_table()
    assert report.env_name == name
    # Our server serves the stateless routes and claims concurrency: both really checked.
    for check in ("http_reset", "http_step", "http_state", "ws_concurrent", "mcp"):
        result = report.check(check)
        assert result.passed and not result.skipped and result.status == "PASS", report.format_table()
    assert "isolated" in report.check("ws_concurrent").detail
    assert report.check("ws_close").detail.endswith("(code 1000)")


@pytest.mark.openenv
async def test_openenv_validator_agrees_on_our_server(serve_app):
    """OpenEnv's own runtime validator, run on the same server, passes too."""
    import asyncio

    from openenv.cli._validation import validate_running_environment

    url = serve_app(create_app(load_env_factory("guess_number")))
    theirs = await asyncio.to_thread(validate_running_environment, url, 5.0)
    ours = await validate(url)
    assert theirs["passed"], theirs
    assert ours.passed, ours.format_table()
    assert theirs["mode"] == "simulation"
