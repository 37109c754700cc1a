"""apps.sft demonstrations: ChatAgent's exact tokens, masks on replies only, expert wins."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from agents import ChatAgent
from apps.sft import SFTConfig
from apps.sft._demos import bare_value, demo_policy, demonstration, guess_number_policy
from envs import load_env_factory
from forge_env.generator import Completion, Generator, SamplingParams
from forge_env.rollout import RolloutConfig, Task, run_episode


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoTokenizer

    from forge_env.models import build_tiny_model

    return AutoTokenizer.from_pretrained(build_tiny_model(tmp_path_factory.mktemp("sft_demos") / "tiny"))


class ReplayGenerator(Generator):
    """Returns given completions in order (as a model that wrote the demo's replies)."""

    def __init__(self, replies: Sequence[list[int]]) -> None:
        self.replies = list(replies)
        self.prompts: list[list[int]] = []

    @property
    def version(self) -> int:
        return 0

    @property
    def max_model_len(self) -> int:
        return 4096

    async def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Completion:
        ids = self.replies[len(self.prompts)]
        self.prompts.append(list(prompt_ids))
        return Completion(token_ids=ids, logprobs=[-1.0] * len(ids), finish_reason="stop", version=0,
                          prompt_len=len(prompt_ids))

    async def update_weights(self, named_tensors: Iterable[tuple[str, Any]], version: int) -> None:
        raise NotImplementedError


async def test_demo_tokens_equal_what_chat_agent_produces(tokenizer: Any) -> None:
    agent = ChatAgent(tokenizer)
    make_env = load_env_factory("guess_number")
    for seed in (1_000_000, 1_000_001, 1_000_002):
        demo = await demonstration(agent, make_env(), guess_number_policy, Task(seed=seed),
                                   rng=random.Random(seed), expert_prob=0.5)
        replies = [demo.token_ids[t.completion_start:t.completion_end] for t in demo.turns]
        assert all(r[-1] == tokenizer.eos_token_id for r in replies)
        texts = [str((t.action or {}).get("guess")) for t in demo.turns]
        assert [tokenizer.decode(r[:-1]) for r in replies] == texts
        # The same replies sampled by a "model" through run_episode: identical conversation.
        played = await run_episode(agent, make_env(), ReplayGenerator(replies), Task(seed=seed),
                                   config=RolloutConfig(max_turns=16))
        assert played.token_ids == demo.token_ids
        assert played.loss_mask == demo.loss_mask
        assert played.prompt_len == demo.prompt_len
        assert [t.action for t in played.turns] == [t.action for t in demo.turns]
        assert played.success == demo.success and played.rewards == demo.rewards
        assert set(demo.logprobs) == {0.0}


async def test_mask_is_on_reply_tokens_only(tokenizer: Any) -> None:
    agent = ChatAgent(tokenizer)
    demo = await demonstration(agent, load_env_factory("guess_number")(), guess_number_policy, Task(seed=7),
                               rng=random.Random(0), expert_prob=1.0)
    reply_positions = {i for t in demo.turns for i in range(t.completion_start, t.completion_end)}
    assert {i for i, m in enumerate(demo.loss_mask) if m} == reply_positions
    assert demo.loss_mask[: demo.prompt_len] == [0] * demo.prompt_len
    assert len(demo.token_ids) == len(demo.loss_mask) == len(demo.logprobs)


async def test_every_expert_episode_wins(tokenizer: Any) -> None:
    agent = ChatAgent(tokenizer)
    make_env = load_env_factory("guess_number")
    rng = random.Random(0)
    demos = [await demonstration(agent, make_env(), guess_number_policy, Task(seed=s), rng=rng,
                                 expert_prob=1.0) for s in range(1_000_000, 1_000_040)]
    assert all(d.success and d.termination == "terminated" for d in demos)
    assert max(d.num_turns for d in demos) <= 5  # binary search over 1..16
    assert all(t.error is None for d in demos for t in d.turns)


def test_noisy_policy_stays_in_interval() -> None:
    rng = random.Random(1)
    guesses = [guess_number_policy({"lo": 5, "hi": 9}, rng, 0.0)["guess"] for _ in range(200)]
    assert set(guesses) == {5, 6, 7, 8, 9}
    assert guess_number_policy({"lo": 5, "hi": 9}, rng, 1.0) == {"guess": 7}


def test_bare_value_renders_what_the_parser_reads() -> None:
    assert bare_value({"guess": 8}) == "8"
    assert bare_value({"message": "hi"}) == "hi"
    assert bare_value({"a": 1, "b": [2]}) == '{"a":1,"b":[2]}'


async def test_render_that_does_not_round_trip_raises(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="parses the rendered reply"):
        await demonstration(ChatAgent(tokenizer), load_env_factory("guess_number")(), guess_number_policy,
                            Task(seed=1), rng=random.Random(0), render=lambda action: "seven")


def test_unknown_env_names_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"no demonstration policy for env 'nope'; supported: guess_number"):
        demo_policy("nope")
    with pytest.raises(ValueError, match="supported: guess_number"):
        SFTConfig(env="nope")


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="--expert-prob"):
        SFTConfig(expert_prob=1.5)
    with pytest.raises(ValueError, match="--steps"):
        SFTConfig(steps=0)
