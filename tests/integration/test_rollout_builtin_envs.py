"""Every built-in env through the rollout with a real generator (TorchGenerator, tiny model):
in-process and served over the OpenEnv wire, the agent picked as `forge-env rollout` does."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio

from conftest import running_server
from envs import BUILTIN_ENVS, load_env_factory
from forge_env.generator import SamplingParams
from forge_env.rollout import CollectorConfig, RolloutCollector, RolloutConfig, Task

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def generator(tiny_model_path: str) -> Any:
    from forge_env.generator import TorchGenerator, TorchGeneratorConfig

    gen = TorchGenerator(TorchGeneratorConfig(model=tiny_model_path, max_model_len=1024, seed=0))
    await gen.start()
    yield gen
    await gen.close()


async def _agent_for(env: Any, tokenizer: Any) -> Any:
    from agents import ChatAgent, ToolCallingAgent

    tools = await env.list_tools()
    return ToolCallingAgent(tokenizer) if tools else ChatAgent(tokenizer)


def _marks(name: str) -> list[Any]:
    return [pytest.mark.sandbox] if name == "python_code" else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in sorted(BUILTIN_ENVS)])
@pytest.mark.parametrize("where", ["inprocess", "remote"])
async def test_rollout_plays_every_builtin_env(name: str, where: str, generator: Any, tiny_model_path: str) -> None:
    import importlib

    from transformers import AutoTokenizer

    from forge_env.client import RemoteEnv

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    config = CollectorConfig(group_size=2, rollout=RolloutConfig(
        max_turns=2, sampling=SamplingParams(max_tokens=12, temperature=1.0)))
    if where == "inprocess":
        factory = load_env_factory(name)
        agent = await _agent_for(factory(), tokenizer)
        groups = await RolloutCollector(agent, generator, factory, config).collect([Task(seed=1)])
    else:
        app = importlib.import_module(f"envs.{name}.server.app").app
        with running_server(app) as url:
            agent = await _agent_for(RemoteEnv(url), tokenizer)
            groups = await RolloutCollector(agent, generator, lambda: RemoteEnv(url), config).collect([Task(seed=1)])
    trajs = groups[0].trajectories
    assert len(trajs) == 2
    for t in trajs:
        assert not t.failed, (t.termination, t.error)
        assert t.env_name == name
        assert 1 <= t.num_turns <= 2 and t.termination in ("terminated", "truncated", "max_turns")
        assert len(t.token_ids) == len(t.loss_mask) == len(t.logprobs)
        assert sum(t.loss_mask) == sum(u.num_completion_tokens for u in t.turns) > 0
