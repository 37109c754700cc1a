"""Train against an env shipped as a Docker image: ``python -m apps.agent_grpo env=docker:IMAGE``.

The image is the built-in guess_number one that ``forge-env build`` makes (built by the shared
``engine`` fixture on the test's own engine); the app plays its episodes through a pool of
locked-down containers, runs GRPO steps on them, and leaves no container behind.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("docker", reason="the docker SDK is not installed: pip install docker")

from test_docker_runtime import ENV_IMAGES, MANAGED, engine  # noqa: E402,F401 - the shared engine fixture

pytestmark = [
    pytest.mark.docker,
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: make venv"),
]


@pytest.mark.timeout(900)
async def test_grpo_trains_against_a_container_image(engine, tmp_path: Path) -> None:  # noqa: F811
    from apps.agent_grpo import load_config, train

    image = ENV_IMAGES["guess_number"]
    config = load_config(None, [
        f"env=docker:{image}", "env_pool_size=1", "warm_start.enabled=false", f"output_dir={tmp_path}",
        "orchestrator.steps=2", "orchestrator.groups_per_step=2", "rollout.group_size=2",
        "rollout.max_turns=2", "eval.episodes=4", "checkpoint.every=0", "logging.tensorboard=false",
    ])
    result = await train(config)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == result.steps == 2
    assert summary["collector"]["episodes"] >= 2 * 2 * 2 and summary["collector"]["failed"] == 0
    assert summary["baseline"]["episodes"] == summary["final"]["episodes"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert (tmp_path / "hf" / "config.json").exists()
    assert engine.containers.list(all=True, filters=MANAGED) == []   # the pool's containers are gone
