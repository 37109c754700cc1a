"""The config of ``python -m apps.agent_grpo``: one YAML file, dotted overrides, checked early.

A run is described by :class:`AgentGRPOConfig`, a tree of pydantic sections (``rollout``,
``generator``, ``learner``, ...). :func:`load_config` reads a YAML file (the packaged
``configs/default.yaml`` when none is given, or a packaged config by name such as
``smollm2_cpu``), applies ``key.sub=value`` overrides, and validates everything at once:
a :class:`ConfigError` lists every problem, one line per key, with a suggestion for a
misspelt key and the file line or override it came from. Each section converts itself into
the SDK's config dataclass (``rollout.collector_config()``, ``learner.learner_config(...)``,
...), importing nothing heavy until then.

>>> cfg = load_config(overrides=["learner.lr=3e-4", "orchestrator.steps=5"])
>>> cfg.learner.lr, cfg.orchestrator.steps, cfg.model
(0.0003, 5, 'tiny')
>>> try:
...     load_config(overrides=["learner.lrr=1"])
... except ConfigError as e:
...     print(e)
invalid config (default.yaml + 1 override):
  learner.lrr: unknown key (did you mean 'learner.lr'?) (from override 'learner.lrr=1')
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:  # pragma: no cover
    from apps.sft import SFTConfig
    from forge_env.buffer import BufferConfig
    from forge_env.generator import (
        SamplingParams,
        TorchGenerator,
        TorchGeneratorConfig,
        VLLMGenerator,
        VLLMGeneratorConfig,
    )
    from forge_env.learner import AdvantageConfig, LearnerConfig
    from forge_env.monarch._hosts import HostsConfig
    from forge_env.orchestrator._config import OrchestratorConfig
    from forge_env.reward import RewardConfig
    from forge_env.rollout import CollectorConfig, RolloutConfig

__all__ = [
    "CONFIGS_DIR",
    "AdvantageSection",
    "AgentGRPOConfig",
    "BufferSection",
    "CheckpointSection",
    "ConfigError",
    "EvalSection",
    "GeneratorSection",
    "LearnerSection",
    "LoggingSection",
    "LossSection",
    "OrchestratorSection",
    "RolloutSection",
    "WarmStartSection",
    "dump_keys",
    "load_config",
    "packaged_configs",
]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
"""Folder of the packaged configs (``default.yaml``, ``smollm2_cpu.yaml``, ...)."""

# Held-out evaluation uses env seeds 0..N-1; the SFT warm start trains from 1,000,000 up
# (apps.sft.TRAIN_SEED_START) and GRPO from orchestrator.first_task_seed (2,000,000).
_MAX_EVAL_EPISODES = 1_000_000


class ConfigError(ValueError):
    """A config file or override is invalid; the message lists every problem, key first.

    ``problems`` holds the same lines without the header.

    >>> try:
    ...     load_config(overrides=["orchestrator.steps=0"])
    ... except ConfigError as e:
    ...     print(e.problems[0])
    orchestrator.steps: must be >= 1 (got 0) (from override 'orchestrator.steps=0')
    """

    def __init__(self, header: str, problems: Sequence[str]) -> None:
        self.header = header
        self.problems = list(problems)
        super().__init__("\n  ".join([header, *self.problems]) if self.problems else header)


class _Section(BaseModel):
    # extra="forbid": a misspelt key is an error, never silently ignored.
    # validate_assignment: `cfg.learner.lr = 0` from Python is checked like the YAML.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class WarmStartSection(_Section):
    """Supervised warm start (``apps.sft``) on scripted demonstrations before GRPO.

    A random-init model almost never wins, so GRPO has no signal; a short SFT run gives it one
    (tiny model, 75 steps: held-out success 2% -> ~38%). Needs an env with a demo policy
    (``guess_number`` today).

    >>> WarmStartSection().steps
    150
    """

    enabled: bool = Field(
        default=True, description="Run the SFT warm start before GRPO (needs an env with a demo policy)."
    )
    steps: int = Field(default=150, ge=1, description="SFT optimizer steps.")
    episodes_per_step: int = Field(default=16, ge=1, description="Fresh demonstration episodes per SFT step.")
    lr: float = Field(default=3e-3, gt=0, description="SFT learning rate (constant AdamW).")
    expert_prob: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Chance a demonstrated turn is the expert's move (else a random legal one).",
    )

    def sft_config(self, cfg: AgentGRPOConfig, output_dir: str | os.PathLike[str] | None) -> SFTConfig:
        """The :class:`apps.sft.SFTConfig` of this warm start (no evaluation: the app evaluates).

        ``output_dir``: where the SFT run writes ``hf/`` and ``summary.json``; None writes nothing.

        >>> c = AgentGRPOConfig()
        >>> c.warm_start.sft_config(c, "runs/x/sft").max_tokens
        8
        """
        from apps.sft import SFTConfig

        return SFTConfig(
            env=cfg.env,
            env_kwargs=dict(cfg.env_kwargs),
            model=cfg.model,
            steps=self.steps,
            episodes_per_step=self.episodes_per_step,
            lr=self.lr,
            expert_prob=self.expert_prob,
            eval_episodes=0,
            max_turns=cfg.rollout.max_turns,
            max_tokens=cfg.rollout.max_tokens,
            output_dir=None if output_dir is None else os.fspath(output_dir),
            seed=cfg.seed,
        )


class RolloutSection(_Section):
    """How episodes are played: turns, sampling, deadlines, group size, agent.

    >>> RolloutSection().collector_config().group_size
    8
    """

    max_turns: int = Field(default=6, ge=1, description="Model replies per episode.")
    max_tokens: int = Field(default=8, ge=1, description="Most tokens per reply.")
    temperature: float = Field(
        default=1.0, gt=0, description="Sampling temperature (> 0: the learner divides its logits by it too)."
    )
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling cut (1: off).")
    group_size: int = Field(
        default=8, ge=1, description="Episodes per task (GRPO's G); advantages compare them."
    )
    max_concurrent_episodes: int = Field(default=128, ge=1, description="Episodes in flight at once.")
    step_timeout_s: float | None = Field(
        default=60.0, gt=0, description="Deadline of one env call (null: none)."
    )
    generate_timeout_s: float | None = Field(
        default=300.0, gt=0, description="Deadline of one generation, queueing included (null: none)."
    )
    episode_timeout_s: float | None = Field(
        default=900.0, gt=0, description="Deadline of a whole episode (null: none)."
    )
    agent: Literal["chat", "tool", "auto"] = Field(
        default="chat",
        description="chat: plain replies; tool: <tool_call> JSON; auto: tool when the env offers MCP tools.",
    )
    system_prompt: str | None = Field(
        default=None, description="System message of every episode (null: the agent's own)."
    )

    def sampling_params(self) -> SamplingParams:
        """The per-reply :class:`~forge_env.generator.SamplingParams`."""
        from forge_env.generator import SamplingParams

        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p)

    def rollout_config(self) -> RolloutConfig:
        """The per-episode :class:`~forge_env.rollout.RolloutConfig`."""
        from forge_env.rollout import RolloutConfig

        return RolloutConfig(
            max_turns=self.max_turns,
            sampling=self.sampling_params(),
            step_timeout_s=self.step_timeout_s,
            generate_timeout_s=self.generate_timeout_s,
            episode_timeout_s=self.episode_timeout_s,
        )

    def collector_config(self) -> CollectorConfig:
        """The :class:`~forge_env.rollout.CollectorConfig` (group size, concurrency, rollout)."""
        from forge_env.rollout import CollectorConfig

        return CollectorConfig(
            group_size=self.group_size,
            max_concurrent_episodes=self.max_concurrent_episodes,
            rollout=self.rollout_config(),
        )


class GeneratorSection(_Section):
    """The policy engine that samples episodes: vLLM (CPU or GPU) or plain torch.

    >>> GeneratorSection().generator_config("/models/tiny", seed=0).kv_cache_bytes
    268435456
    """

    kind: Literal["vllm", "torch"] = Field(
        default="vllm", description="vllm: vLLM's AsyncLLM; torch: plain torch batcher."
    )
    max_model_len: int = Field(default=1024, ge=2, description="Longest prompt + completion in tokens.")
    kv_cache_bytes: int | None = Field(
        default=268435456,
        gt=0,
        description="vLLM KV cache bytes (256 MiB); null: vLLM sizes it from gpu_memory_utilization.",
    )
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="vLLM on GPUs: fraction of GPU memory for weights + KV (set kv_cache_bytes: null).",
    )
    dtype: str | None = Field(
        default=None,
        description="Weights dtype; null: float32 on CPU, the checkpoint's (vLLM) / float32 (torch) on GPU.",
    )
    in_flight: Literal["finish", "abort"] = Field(
        default="finish",
        description="On a weight push, requests generating finish on the old weights, or restart.",
    )
    max_batch_size: int = Field(
        default=128, ge=1, description="torch generator only: most requests sampled together."
    )

    def generator_config(
        self, model_path: str | os.PathLike[str], *, seed: int
    ) -> VLLMGeneratorConfig | TorchGeneratorConfig:
        """The generator's config dataclass for ``model_path`` (a local HF folder)."""
        from forge_env.generator import TorchGeneratorConfig, VLLMGeneratorConfig

        model = os.fspath(model_path)
        if self.kind == "vllm":
            return VLLMGeneratorConfig(
                model=model,
                max_model_len=self.max_model_len,
                kv_cache_bytes=self.kv_cache_bytes,
                gpu_memory_utilization=self.gpu_memory_utilization,
                dtype=self.dtype,
                in_flight=self.in_flight,
                seed=seed,
            )
        return TorchGeneratorConfig(
            model=model,
            max_model_len=self.max_model_len,
            dtype=self.dtype or "float32",
            max_batch_size=self.max_batch_size,
            in_flight=self.in_flight,
            seed=seed,
        )

    def build(self, model_path: str | os.PathLike[str], seed: int) -> VLLMGenerator | TorchGenerator:
        """A :class:`~forge_env.generator.VLLMGenerator` or ``TorchGenerator``, not started yet."""
        config = self.generator_config(model_path, seed=seed)
        if self.kind == "vllm":
            from forge_env.generator import VLLMGenerator, VLLMGeneratorConfig

            assert isinstance(config, VLLMGeneratorConfig)
            return VLLMGenerator(config)
        from forge_env.generator import TorchGenerator, TorchGeneratorConfig

        assert isinstance(config, TorchGeneratorConfig)
        return TorchGenerator(config)


class LossSection(_Section):
    """The policy loss. Fields left null take the kind's default (see ``forge_env.learner.LossConfig``).

    ``dr_grpo`` is usually paired with ``advantage.normalize_std: false`` (Dr.GRPO drops the
    std division); leaving it true is allowed.

    >>> LossSection(kind="dapo").kind
    'dapo'
    """

    kind: Literal["grpo", "dapo", "dr_grpo", "gspo"] = Field(
        default="grpo",
        description="grpo, dapo (clip-higher, token mean), dr_grpo (no length norm), gspo (sequence ratio).",
    )
    clip_eps: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Lower clip range (ratio >= 1 - clip_eps); null: 0.2 (gspo 3e-4).",
    )
    clip_eps_high: float | None = Field(
        default=None,
        gt=0,
        description="Upper clip range; null: the kind's (dapo 0.28, gspo 4e-4) or clip_eps.",
    )
    aggregation: (
        Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"] | None
    ) = Field(default=None, description="How token losses become one number; null: the kind's default.")
    kl_coef: float = Field(
        default=0.0, ge=0, description="Weight of the k3 KL to a frozen reference policy (0: off)."
    )
    max_completion_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Dr.GRPO's constant normaliser; null: rollout.max_turns * rollout.max_tokens.",
    )


class LearnerSection(_Section):
    """The GRPO learner: optimizer, schedule, batching, device, loss.

    >>> LearnerSection().lr
    0.001
    """

    lr: float = Field(
        default=1e-3,
        gt=0,
        description="Peak AdamW learning rate (tiny model on guess_number: 1e-3 climbed fastest with per-turn "
        "advantages; 5e-3 collapsed).",
    )
    warmup_steps: int = Field(default=0, ge=0, description="Learner steps of linear LR warmup.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant", description="After warmup: constant, or cosine decay over orchestrator.steps."
    )
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    max_grad_norm: float | None = Field(
        default=1.0, gt=0, description="Clip the gradient norm to this (null: no clipping)."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW decoupled weight decay.")
    micro_batch_tokens: int | None = Field(
        default=None, ge=1,
        description="Most tokens the model runs on per micro-batch (bounds memory); null: no limit.",
    )
    micro_batch_size: int | None = Field(
        default=None, ge=1, description="Most sequences per micro-batch; null: no limit."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: CUDA when available, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Compute dtype; auto: float32 on CPU, bfloat16 on CUDA (fp32 master weights).",
    )
    compile: bool = Field(default=False, description="GPU only: torch.compile each transformer block.")
    activation_checkpointing: Literal["none", "full", "selective"] = Field(
        default="none",
        description="GPU only: activation checkpointing per block (less memory, more compute).",
    )
    layout: Literal["packed", "padded"] = Field(
        default="packed",
        description="packed: a batch runs as one prefix tree (shared prompts once, logits only at loss tokens); "
        "padded: one padded row per sequence (same numbers, slower).",
    )
    loss: LossSection = Field(default_factory=LossSection, description="The policy loss.")

    def learner_config(
        self,
        model_path: str | os.PathLike[str],
        *,
        total_steps: int,
        temperature: float,
        seed: int,
        max_completion_tokens: int | None = None,
    ) -> LearnerConfig:
        """The :class:`~forge_env.learner.LearnerConfig` (imports torch).

        ``total_steps`` is the run's learner steps (the cosine schedule decays over them);
        ``temperature`` the rollout's sampling temperature; ``max_completion_tokens`` the
        completion-token budget per episode (``max_turns * max_tokens``), used by Dr.GRPO when
        ``loss.max_completion_tokens`` is null.
        """
        from forge_env.learner import LearnerConfig, LossConfig

        loss = LossConfig(
            kind=self.loss.kind,
            clip_eps=self.loss.clip_eps,
            clip_eps_high=self.loss.clip_eps_high,
            aggregation=self.loss.aggregation,
            kl_coef=self.loss.kl_coef,
            max_completion_tokens=self.loss.max_completion_tokens or max_completion_tokens,
        )
        return LearnerConfig(
            model=os.fspath(model_path),
            device=self.device,
            dtype=self.dtype,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            lr_schedule=self.lr_schedule,
            total_steps=total_steps,
            min_lr_ratio=self.min_lr_ratio,
            max_grad_norm=self.max_grad_norm,
            micro_batch_size=self.micro_batch_size,
            micro_batch_tokens=self.micro_batch_tokens,
            loss=loss,
            temperature=temperature,
            seed=seed,
            activation_checkpointing=self.activation_checkpointing,
            compile=self.compile,
            layout=self.layout,
        )


class AdvantageSection(_Section):
    """How rewards become advantages (group-relative, no value model).

    >>> AdvantageSection(mode="per_turn", gamma=0.9).advantage_config().gamma
    0.9
    """

    mode: Literal["episode", "per_turn"] = Field(
        default="episode",
        description="episode: one advantage per trajectory; per_turn: discounted returns per turn.",
    )
    gamma: float = Field(
        default=1.0, ge=0, le=1, description="per_turn only: discount of later turns' rewards."
    )
    normalize_std: bool = Field(
        default=True, description="Divide by the group's reward std (Dr.GRPO: false)."
    )

    def advantage_config(self) -> AdvantageConfig:
        """The :class:`~forge_env.learner.AdvantageConfig`."""
        from forge_env.learner import AdvantageConfig

        return AdvantageConfig(mode=self.mode, gamma=self.gamma, normalize_std=self.normalize_std)


class BufferSection(_Section):
    """The replay buffer between collectors and learner: size, staleness, filters.

    >>> BufferSection().buffer_config(seed=0).max_policy_age
    1
    """

    capacity: int = Field(default=1024, ge=1, description="Groups held at most (the oldest is evicted).")
    max_policy_age: int = Field(
        default=1,
        ge=0,
        description="Drop groups more than this many learner versions old (0: on-policy only).",
    )
    sampling: Literal["fifo", "lifo", "uniform"] = Field(
        default="fifo", description="Which groups the learner takes first."
    )
    drop_degenerate: bool = Field(
        default=False,
        description="Drop groups whose rewards are all equal as they arrive (DAPO's dynamic sampling: the "
        "learner waits for informative groups, and can stall once nearly every group is solved). Off: the "
        "loop still leaves them out of each batch, so they cost generation only.",
    )
    drop_failed: bool = Field(
        default=False, description="Remove failed episodes (env/generator error, deadline) from groups."
    )

    def buffer_config(self, seed: int) -> BufferConfig:
        """The :class:`~forge_env.buffer.BufferConfig`; ``seed`` seeds the uniform sampler."""
        from forge_env.buffer import BufferConfig

        return BufferConfig(
            capacity=self.capacity,
            max_policy_age=self.max_policy_age,
            sampling=self.sampling,
            drop_degenerate=self.drop_degenerate,
            drop_failed=self.drop_failed,
            seed=seed,
        )


class RewardSection(_Section):
    """A reward function on top of the env's rewards (a verifier, a judge, a length penalty),
    applied to each finished episode before it enters the buffer; off while ``fn`` is null.

    >>> RewardSection(fn="forge_env.reward:length_penalty", kwargs={"budget": 64}).reward_config().weight
    1.0
    """

    fn: str | None = Field(
        default=None,
        description="'package.module:function' or 'path/file.py:function' taking a Trajectory, returning a "
        "float (sync or async); null: env rewards only.",
    )
    weight: float = Field(default=1.0, description="Reward added to the last turn = weight * fn(trajectory).")
    timeout_s: float = Field(default=30.0, gt=0, description="Deadline of one call (one episode).")
    concurrency: int = Field(default=8, ge=1, description="Episodes scored at once in one process.")
    skip_failed: bool = Field(default=True, description="Leave failed episodes (env/generator error) unscored.")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments of every call, e.g. {budget: 64}."
    )

    @field_validator("fn")
    @classmethod
    def _spec_shape(cls, fn: str | None) -> str | None:
        # Its shape only ("a.b:c"); importing it is the reward workers' job, at startup.
        if fn is not None:
            from forge_env.reward._load import normalize_spec

            normalize_spec(fn)
        return fn

    def reward_config(self) -> RewardConfig | None:
        """The :class:`~forge_env.reward.RewardConfig`, or None while ``fn`` is null."""
        if self.fn is None:
            return None
        from forge_env.reward import RewardConfig

        return RewardConfig(fn=self.fn, weight=self.weight, timeout_s=self.timeout_s,
                            concurrency=self.concurrency, skip_failed=self.skip_failed, kwargs=dict(self.kwargs))


class OrchestratorSection(_Section):
    """The training loop: async or sync, batch shape, weight pushes, length.

    >>> OrchestratorSection(steps=3).orchestrator_config().steps
    3
    """

    mode: Literal["async", "sync"] = Field(
        default="async",
        description="async: generate while the learner trains; sync: generate, train, push, repeat.",
    )
    steps: int = Field(default=150, ge=1, description="Learner steps (optimizer updates) of the run.")
    groups_per_step: int = Field(
        default=16, ge=1, description="Task groups (rollout.group_size episodes each) per learner step."
    )
    weight_push_every: int = Field(
        default=1, ge=1, description="Push the learner's weights to the generator every N steps."
    )
    max_groups_in_flight: int | None = Field(
        default=None, ge=1, description="async: groups generating at once; null: groups_per_step."
    )
    first_task_seed: int = Field(
        default=2_000_000,
        ge=0,
        description="Env seed of the first training task (eval uses 0.., SFT 1,000,000..).",
    )
    batch_timeout_s: float | None = Field(
        default=900.0,
        gt=0,
        description="Longest wait of the learner for a batch before the run fails (null: forever).",
    )
    max_minutes: float | None = Field(
        default=11.0,
        gt=0,
        description="Stop training after this many minutes of wall time (null: run all steps); the default "
        "keeps the CPU default run within 15 minutes on slow machines.",
    )

    def orchestrator_config(self) -> OrchestratorConfig:
        """The :class:`~forge_env.orchestrator.OrchestratorConfig` (``max_minutes`` is the app's)."""
        from forge_env.orchestrator._config import OrchestratorConfig

        return OrchestratorConfig(
            mode=self.mode,
            steps=self.steps,
            groups_per_step=self.groups_per_step,
            weight_push_every=self.weight_push_every,
            max_groups_in_flight=self.max_groups_in_flight,
            first_task_seed=self.first_task_seed,
            batch_timeout_s=self.batch_timeout_s,
        )


class EvalSection(_Section):
    """Held-out evaluation (env seeds 0..episodes-1, never trained on).

    >>> EvalSection().episodes
    256
    """

    episodes: int = Field(
        default=256,
        ge=0,
        description="Held-out episodes per evaluation (0: no evaluation; at most 1,000,000).",
    )
    every: int = Field(
        default=10, ge=0, description="Learner steps between evaluations (0: only before and after)."
    )
    temperature: float = Field(default=1.0, ge=0, description="Evaluation sampling temperature (0: greedy).")

    @field_validator("episodes")
    @classmethod
    def _below_training_seeds(cls, value: int) -> int:
        if value > _MAX_EVAL_EPISODES:
            raise ValueError(
                f"must be <= {_MAX_EVAL_EPISODES:_} (got {value}): held-out seeds 0..episodes-1 must "
                "stay below the warm start's training seeds (1,000,000 up)"
            )
        return value


class LoggingSection(_Section):
    """Where metrics go.

    >>> LoggingSection().wandb
    False
    """

    console: bool = Field(default=True, description="A progress line per learner step.")
    jsonl: bool = Field(default=True, description="output_dir/metrics.jsonl, one JSON object per step.")
    tensorboard: bool = Field(default=True, description="TensorBoard event files under output_dir/tb.")
    wandb: bool = Field(default=False, description="Weights & Biases (needs wandb installed and logged in).")
    wandb_project: str = Field(default="forge-env", min_length=1, description="W&B project name.")
    plot: bool = Field(default=True, description="output_dir/metrics.png at the end of the run.")


class CheckpointSection(_Section):
    """Checkpoints for resuming, and the final HF export.

    >>> CheckpointSection().keep
    2
    """

    every: int = Field(default=10, ge=0, description="Checkpoint every N learner steps (0: never).")
    keep: int = Field(default=2, ge=1, description="Newest checkpoints kept on disk.")
    save_final_hf: bool = Field(
        default=True, description="Save the trained policy as an HF folder at the end."
    )


class MonarchSection(_Section):
    """``runtime: monarch``: where the parts run as Monarch actors (ignored with ``runtime: local``).

    >>> MonarchSection().generator_replicas
    2
    """

    generator_replicas: int = Field(
        default=2, ge=1, description="Generator replicas, one process each, behind one service."
    )
    learner_procs: int = Field(
        default=1, ge=1, description="Learner processes (FSDP2 over gloo on CPU, NCCL on GPUs)."
    )
    env_procs: int = Field(
        default=1, ge=1, description="Env pool processes (not for docker:IMAGE envs, which run in containers)."
    )
    sessions_per_env_proc: int = Field(default=256, ge=1, description="Env sessions one env process serves.")
    routing: Literal["sticky", "least_loaded", "round_robin"] = Field(
        default="sticky",
        description="Generator routing: sticky keeps a multi-turn episode on one replica (prefix cache).",
    )
    respawn: bool = Field(default=True, description="Respawn a dead generator replica / env process.")
    health_check_interval_s: float = Field(
        default=1.0, gt=0, description="Seconds between replica health checks."
    )
    weight_transport: Literal["auto", "rdma", "shm", "message"] = Field(
        default="auto",
        description="Learner -> generator weights: auto (RDMA with ibverbs, else /dev/shm on one host, else "
        "messages), or one of them.",
    )
    threads_per_proc: int | None = Field(
        default=None, ge=1, description="torch threads of each learner/generator process; null: torch's default."
    )
    reward_replicas: int = Field(
        default=1, ge=1, description="Reward-function processes (with reward.fn set), behind one service."
    )
    reference_replicas: int = Field(
        default=1, ge=1, description="Reference-policy processes (with learner.loss.kl_coef > 0), behind one service."
    )
    buffer_process: bool = Field(
        default=True,
        description="The replay buffer in a Monarch process of its own (false: in the orchestrator's process).",
    )
    hosts: str | list[str] | dict[str, Any] = Field(
        default="local",
        description="Where the Monarch processes run: local (this host); [tcp://HOST:PORT, ...], Monarch workers "
        "started on each host with `python -m forge_env.monarch.worker --host HOST --bind 0.0.0.0` (generator "
        "replica / env process i on host i % n, learner ranks spread over the hosts); or slurm[:PORT], a worker "
        "on every node of this SLURM allocation.",
    )

    @field_validator("hosts", mode="before")
    @classmethod
    def _valid_hosts(cls, value: Any) -> Any:
        from forge_env.monarch._hosts import HostsConfig

        HostsConfig.parse(value, key=None)  # raises ValueError naming the problem and the fix
        return value

    def hosts_config(self) -> HostsConfig:
        """``hosts`` as the SDK's :class:`~forge_env.monarch._hosts.HostsConfig`."""
        from forge_env.monarch._hosts import HostsConfig

        return HostsConfig.parse(self.hosts, key="monarch.hosts")


class AgentGRPOConfig(_Section):
    """Everything ``python -m apps.agent_grpo`` needs; the defaults are the CPU default run.

    Cross-field rules (checked after the per-key ones): in async mode
    ``buffer.max_policy_age >= orchestrator.weight_push_every`` (sync: ``>= weight_push_every - 1``),
    ``buffer.capacity >= orchestrator.groups_per_step``, ``learner.warmup_steps < orchestrator.steps``,
    ``generator.max_model_len > rollout.max_turns * rollout.max_tokens``, and a warm start needs
    an env with a demo policy.

    >>> cfg = AgentGRPOConfig()
    >>> cfg.rollout.group_size * cfg.orchestrator.groups_per_step
    128
    >>> AgentGRPOConfig.model_validate(yaml.safe_load(cfg.to_yaml())) == cfg
    True
    """

    env: str = Field(
        default="guess_number",
        min_length=1,
        description="Built-in env name, 'module:Class', env folder, OpenEnv URL (http(s)/ws(s)://...), "
        "or docker:IMAGE.",
    )
    env_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Constructor arguments of a local env, e.g. {hi: 32}."
    )
    env_pool_size: int = Field(
        default=2, ge=1, description="docker:IMAGE envs: containers in the pool (each serves many sessions)."
    )
    model: str = Field(
        default="tiny",
        min_length=1,
        description="tiny, tiny-llama, smollm2-135m, an HF folder, or a hub id (org/name).",
    )
    output_dir: str = Field(
        default="runs/agent_grpo", min_length=1, description="Where metrics, checkpoints, config go."
    )
    seed: int = Field(default=0, ge=0, description="Seeds model init, sampling and the buffer.")
    runtime: Literal["local", "monarch"] = Field(
        default="local",
        description="Where the parts run: local (one process; the engine's own subprocess aside) or monarch "
        "(generator replicas, learner and env pools as Monarch actors in their own processes; see monarch.*).",
    )
    monarch: MonarchSection = Field(
        default_factory=MonarchSection, description="runtime: monarch settings (processes, routing)."
    )
    warm_start: WarmStartSection = Field(default_factory=WarmStartSection, description="SFT warm start.")
    rollout: RolloutSection = Field(default_factory=RolloutSection, description="Episodes and sampling.")
    generator: GeneratorSection = Field(default_factory=GeneratorSection, description="Policy engine.")
    learner: LearnerSection = Field(default_factory=LearnerSection, description="GRPO learner.")
    advantage: AdvantageSection = Field(
        default_factory=AdvantageSection, description="Rewards -> advantages."
    )
    buffer: BufferSection = Field(default_factory=BufferSection, description="Replay buffer.")
    reward: RewardSection = Field(
        default_factory=RewardSection, description="A reward function on top of the env's rewards (off by default)."
    )
    orchestrator: OrchestratorSection = Field(
        default_factory=OrchestratorSection, description="Training loop."
    )
    eval: EvalSection = Field(default_factory=EvalSection, description="Held-out evaluation.")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="Metrics sinks.")
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection, description="Checkpoints.")

    @model_validator(mode="after")
    def _cross_field(self) -> AgentGRPOConfig:
        # One line per problem, "dotted.key: message"; load_config splits them back into keys.
        problems = self.cross_field_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def cross_field_problems(self) -> list[str]:
        """Rules between keys of different sections, as ``"key: problem and fix"`` lines."""
        problems: list[str] = []
        orch, buf = self.orchestrator, self.buffer
        if orch.mode == "async":
            need_age, rule = orch.weight_push_every, "orchestrator.weight_push_every"
            why = (
                "the samples generating while the learner trains come from weights up to "
                "weight_push_every versions behind it"
            )
        else:
            need_age, rule = orch.weight_push_every - 1, "orchestrator.weight_push_every - 1"
            why = "the steps between two pushes train on samples up to weight_push_every - 1 versions old"
        if buf.max_policy_age < need_age:
            problems.append(
                f"buffer.max_policy_age: {orch.mode} mode needs buffer.max_policy_age >= {rule} "
                f"({buf.max_policy_age} < {need_age}): {why}, so every one would be dropped as stale and "
                f"the learner would wait forever; set buffer.max_policy_age={need_age} or lower "
                "orchestrator.weight_push_every"
            )
        if buf.capacity < orch.groups_per_step:
            problems.append(
                "buffer.capacity: must be >= orchestrator.groups_per_step "
                f"({buf.capacity} < {orch.groups_per_step}): the learner takes groups_per_step groups per "
                f"step; set buffer.capacity={orch.groups_per_step} or more"
            )
        if self.learner.warmup_steps >= orch.steps:
            problems.append(
                "learner.warmup_steps: must be < orchestrator.steps "
                f"({self.learner.warmup_steps} >= {orch.steps}): the run would end before the learning "
                "rate warms up; lower learner.warmup_steps"
            )
        budget = self.rollout.max_turns * self.rollout.max_tokens
        if self.generator.max_model_len <= budget:
            problems.append(
                "generator.max_model_len: must exceed rollout.max_turns * rollout.max_tokens "
                f"({self.generator.max_model_len} <= {budget}): the replies alone would not fit in the "
                "context; raise generator.max_model_len or lower rollout.max_tokens"
            )
        mon = self.monarch
        if self.runtime == "monarch" and mon.weight_transport == "shm" and not mon.hosts_config().on_this_machine():
            problems.append(
                "monarch.weight_transport: shm writes the weights to this machine's /dev/shm, which processes "
                "on the other hosts of monarch.hosts cannot read; set monarch.weight_transport=auto (messages, "
                "or RDMA where there is ibverbs hardware) or message"
            )
        problems += self._env_kwargs_problems()
        if self.warm_start.enabled:
            from apps.sft._demos import DEMO_POLICIES

            if self.env not in DEMO_POLICIES:
                problems.append(
                    "warm_start.enabled: the SFT warm start plays scripted demonstrations, which exist "
                    f"only for {', '.join(sorted(DEMO_POLICIES))} (env is {self.env!r}); "
                    "set warm_start.enabled=false"
                )
        return problems

    def _env_kwargs_problems(self) -> list[str]:
        """env_kwargs a local env's constructor does not take (default.yaml's guess_number
        shaping left in place after ``env=`` names another env is the usual case)."""
        if not self.env_kwargs or self.env.startswith(("http://", "https://", "ws://", "wss://", "docker:")):
            return []
        import inspect

        from forge_env.runtime import EnvSpecError, resolve_env_factory

        try:
            signature = inspect.signature(resolve_env_factory(self.env))
        except (EnvSpecError, TypeError, ValueError):
            return []  # an unknown env is reported when the run opens it; no signature: cannot tell
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            return []
        unknown = sorted(set(self.env_kwargs) - set(signature.parameters))
        if not unknown:
            return []
        takes = ", ".join(n for n, p in signature.parameters.items()
                          if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)) or "no arguments"
        return [
            f"env_kwargs: {self.env} does not take {', '.join(unknown)} (it takes: {takes}); the default "
            "config's env_kwargs={progress_reward: 0.5} is guess_number's reward shaping: set env_kwargs={} "
            "(or that env's own arguments)"
        ]

    # -- conversions that need values from several sections ----------------------------------

    def learner_config(self, model_path: str | os.PathLike[str]) -> LearnerConfig:
        """``learner.learner_config`` with the run's steps, temperature, seed and completion budget."""
        return self.learner.learner_config(
            model_path,
            total_steps=self.orchestrator.steps,
            temperature=self.rollout.temperature,
            seed=self.seed,
            max_completion_tokens=self.rollout.max_turns * self.rollout.max_tokens,
        )

    def buffer_config(self) -> BufferConfig:
        """``buffer.buffer_config`` seeded with the run's seed."""
        return self.buffer.buffer_config(seed=self.seed)

    def to_yaml(self) -> str:
        """The resolved config as YAML; :func:`load_config` reads it back to an equal config."""
        body = yaml.safe_dump(
            self.model_dump(mode="json"), sort_keys=False, default_flow_style=False, width=110
        )
        return "# Resolved config of python -m apps.agent_grpo (load it with --config FILE).\n" + body


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def packaged_configs() -> dict[str, Path]:
    """The packaged configs by name (``default``, ``smollm2_cpu``, ...).

    >>> "default" in packaged_configs()
    True
    """
    return {p.stem: p for p in sorted(CONFIGS_DIR.glob("*.yaml"))}


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> AgentGRPOConfig:
    """Read a YAML config, apply ``key.sub=value`` overrides, validate.

    ``path``: a YAML file, the name of a packaged config (``smollm2_cpu``), or None for
    ``configs/default.yaml``. Keys missing from the file take their defaults. Each override's
    value is parsed as YAML (``lr=1e-3``, ``wandb=true``, ``max_minutes=null``,
    ``env_kwargs={hi: 32}``); one that is not valid YAML, and any value of a text key, stays
    a string. ``section={key: value}`` merges into a section; ``env_kwargs.hi=32`` sets one
    constructor argument.

    >>> load_config("smollm2_cpu", ["orchestrator.steps=2"]).model
    'smollm2-135m'

    Raises:
        ConfigError: a missing file, a YAML syntax error, a malformed or unknown override key,
            or invalid values; the message lists every problem, dotted key first.
    """
    file = _resolve_path(path)
    raw, lines = _read_yaml(file)
    source = file.name + (
        f" + {len(overrides)} override{'s' if len(overrides) != 1 else ''}" if overrides else ""
    )
    origin: dict[str, str] = {}  # dotted key -> the override that set it
    problems: list[str] = []
    for text in overrides:
        problem = _apply_override(raw, text, origin)
        if problem:
            problems.append(problem)
    # Validate even when an override was malformed, so one message lists every problem.
    try:
        config = AgentGRPOConfig.model_validate(raw)
    except ValidationError as e:
        problems += _problems(e, file.name, lines, origin)
    if problems:
        raise ConfigError(f"invalid config ({source}):", problems)
    return config


def _resolve_path(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        return CONFIGS_DIR / "default.yaml"
    file = Path(path).expanduser()
    if file.is_file():
        return file
    packaged = packaged_configs()
    name = os.fspath(path).removesuffix(".yaml")
    if name in packaged:  # a packaged config by name: `smollm2_cpu`
        return packaged[name]
    hint = f"; packaged configs: {', '.join(packaged)}" if packaged else ""
    what = "is a folder, not a file" if file.is_dir() else "not found"
    raise ConfigError(f"config file {os.fspath(path)} {what}{hint}", [])


def _read_yaml(file: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The file's mapping and the 1-based line of each key path (for error messages)."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"config file {file} cannot be read: {e.strerror or e}", []) from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} started at line {context_mark.line + 1})"
        raise ConfigError(f"config file {file}: YAML syntax error{where}: {problem}", []) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {file}: the top level must be a mapping of keys (env: ..., learner: ...), "
            f"got a {type(data).__name__}",
            [],
        )
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _key_lines(node, (), lines)
    return data, lines


def _key_lines(node: yaml.Node, prefix: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*prefix, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _key_lines(value_node, key, out)


# -- overrides ---------------------------------------------------------------------------------


def _section_of(annotation: Any) -> type[_Section] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, _Section) else None


def _is_text(annotation: Any) -> bool:
    """Whether a field holds text (str, a Literal of strings, optionally | None)."""
    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_is_text(a) for a in args)
    return False


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


def _all_keys(model: type[_Section] | None = None, prefix: str = "") -> Iterator[str]:
    for name, field in (model or AgentGRPOConfig).model_fields.items():
        section = _section_of(field.annotation)
        if section is None:
            yield prefix + name
        else:
            yield from _all_keys(section, f"{prefix}{name}.")


def _suggest(parts: Sequence[str], model: type[_Section]) -> str:
    """`` (did you mean 'x.y'?)`` for the unknown last part, or ''."""
    prefix = "".join(p + "." for p in parts[:-1])
    close = difflib.get_close_matches(parts[-1], list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{prefix}{close[0]}'?)"
    # The right name in another section (`lr` at the top level -> `learner.lr`).
    elsewhere = [k for k in _all_keys() if k.rsplit(".", 1)[-1] == parts[-1]]
    if not elsewhere:
        leaves = {k.rsplit(".", 1)[-1]: k for k in _all_keys()}
        elsewhere = [leaves[m] for m in difflib.get_close_matches(parts[-1], list(leaves), n=1, cutoff=0.75)]
    if elsewhere:
        return " (did you mean " + " or ".join(f"'{k}'" for k in sorted(elsewhere)) + "?)"
    return ""


def _apply_override(raw: dict[str, Any], text: str, origin: dict[str, str]) -> str | None:
    """Set one ``key.sub=value`` in ``raw``; a problem line, or None when it applied."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        return f"override {text!r} is not key=value (e.g. learner.lr=1e-4)"
    parts = key.split(".")
    if any(not p for p in parts):
        return f"override {text!r}: {key!r} is not a dotted key (e.g. learner.lr)"
    model: type[_Section] = AgentGRPOConfig
    target = raw
    for i, part in enumerate(parts):
        dotted = ".".join(parts[: i + 1])
        field = model.model_fields.get(part)
        if field is None:
            return f"{dotted}: unknown key{_suggest(parts[: i + 1], model)} (from override {text!r})"
        section = _section_of(field.annotation)
        last = i == len(parts) - 1
        if section is not None and not last:
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            if not isinstance(child, dict):
                return f"{dotted}: is a section but the config gives it {child!r} (from override {text!r})"
            model, target = section, child
            continue
        if not last:
            if _is_mapping(field.annotation):
                # env_kwargs.hi=32: one entry of a free-form mapping, any depth.
                mapping = target.setdefault(part, {})
                if not isinstance(mapping, dict):
                    return f"{dotted}: is not a mapping (got {mapping!r}) (from override {text!r})"
                for sub in parts[i + 1 : -1]:
                    mapping = mapping.setdefault(sub, {})
                    if not isinstance(mapping, dict):
                        return f"{key}: {sub!r} is not a mapping (from override {text!r})"
                mapping[parts[-1]] = _parse_value(value_text, text_field=False)
                origin[dotted] = text
                return None
            return f"{text}: {dotted!r} is not a section (it holds a single value; set it with {dotted}=...)"
        value = _parse_value(value_text, text_field=_is_text(field.annotation))
        if section is not None:
            if not isinstance(value, dict):
                example = next(iter(section.model_fields))
                return (
                    f"{dotted}: is a section: set one of its keys (e.g. {dotted}.{example}=...) or give a "
                    f"mapping (from override {text!r})"
                )
            existing = target.get(part)
            target[part] = _merge(existing if isinstance(existing, dict) else {}, value)
        else:
            target[part] = value
        origin[dotted] = text
    return None


def _parse_value(text: str, *, text_field: bool) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not valid YAML: the string as typed
    # A text key keeps the string as typed (`system_prompt=Answer: a number` is not a mapping),
    # except null, which means None.
    if text_field and value is not None and not isinstance(value, str):
        return text.strip()
    return value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- error messages ----------------------------------------------------------------------------


def _problems(
    error: ValidationError, file_name: str, lines: dict[tuple[str, ...], int], origin: dict[str, str]
) -> list[str]:
    out = []
    for err in error.errors(include_url=False):
        loc = tuple(str(p) for p in err["loc"])
        if not loc and err["type"] == "value_error":
            # Cross-field problems: one "key: message" per line (AgentGRPOConfig._cross_field).
            for line in str(err["ctx"]["error"]).splitlines():
                key = line.split(":", 1)[0]
                out.append(line + _where(tuple(key.split(".")), file_name, lines, origin))
            continue
        out.append(
            f"{'.'.join(loc) or '(top level)'}: {_describe(err, loc)}" + _where(loc, file_name, lines, origin)
        )
    return out


def _where(
    loc: tuple[str, ...], file_name: str, lines: dict[tuple[str, ...], int], origin: dict[str, str]
) -> str:
    for n in range(len(loc), 0, -1):  # the key itself, else the nearest section set
        dotted = ".".join(loc[:n])
        if dotted in origin:
            return f" (from override {origin[dotted]!r})"
        if loc[:n] in lines:
            return f" ({file_name} line {lines[loc[:n]]})"
    return ""


def _got(err: Any) -> str:
    return f" (got {err['input']!r})"


def _describe(err: Any, loc: tuple[str, ...]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        model: type[_Section] = AgentGRPOConfig
        for part in loc[:-1]:
            model = _section_of(model.model_fields[part].annotation) or model
        return "unknown key" + _suggest(loc, model)
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # "> 0", not "> 0.0"
        return f"must be {bounds[kind]} {bound}{_got(err)}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}{_got(err)}"
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of keys{_got(err)}"
    if kind == "string_too_short":
        return f"must not be empty{_got(err)}"
    simple = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string"}
    for prefix, what in simple.items():
        if kind.startswith(prefix + "_"):
            return f"must be {what}{_got(err)}"
    return f"{err['msg']}{_got(err)}"


# -- help ---------------------------------------------------------------------------------------


def _inline(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def dump_keys(config: AgentGRPOConfig | None = None) -> list[str]:
    """Every key as ``"dotted.key: value  # description"`` (for ``--help``).

    Values are ``config``'s, or the defaults. Each section starts with a ``# section: ...`` line.

    >>> [k.split("  #")[0] for k in dump_keys() if k.startswith("learner.lr:")]
    ['learner.lr: 0.001']
    """
    out: list[str] = []

    def walk(obj: BaseModel, prefix: str) -> None:
        for name, field in type(obj).model_fields.items():
            value = getattr(obj, name)
            if isinstance(value, _Section):
                out.append(f"# {prefix}{name}: {field.description or ''}".rstrip())
                walk(value, f"{prefix}{name}.")
            else:
                out.append(f"{prefix}{name}: {_inline(value)}  # {field.description or ''}".rstrip())

    walk(config if config is not None else AgentGRPOConfig(), "")
    return out
