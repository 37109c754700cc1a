"""The config system of ``python -m apps.agent_grpo``: YAML, overrides, errors, SDK conversions.

No model is built here: the conversions produce config dataclasses only.
"""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from apps.agent_grpo._config import (
    AgentGRPOConfig,
    ConfigError,
    dump_keys,
    load_config,
    packaged_configs,
)


def _error(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value


def _write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- loading -----------------------------------------------------------------------------------


def test_default_file_equals_model_defaults_but_the_guess_number_shaping() -> None:
    # default.yaml adds what only suits guess_number: its progress reward, credited per turn.
    assert load_config() == load_config("default")
    shaped = AgentGRPOConfig().model_copy(update={
        "env_kwargs": {"progress_reward": 0.5},
        "advantage": AgentGRPOConfig().advantage.model_copy(update={"mode": "per_turn", "gamma": 0.0}),
    })
    assert load_config() == shaped


def test_default_is_the_cpu_default_run() -> None:
    cfg = load_config()
    assert (cfg.env, cfg.model, cfg.runtime) == ("guess_number", "tiny", "local")
    assert cfg.warm_start.enabled and cfg.warm_start.steps == 150 and cfg.warm_start.lr == 3e-3
    assert (cfg.rollout.group_size, cfg.rollout.max_turns, cfg.rollout.max_tokens) == (8, 6, 8)
    assert cfg.orchestrator.groups_per_step == 16 and cfg.orchestrator.steps == 150
    assert cfg.learner.lr == 1e-3 and cfg.eval.episodes == 256 and cfg.orchestrator.max_minutes == 11
    assert cfg.generator.kind == "vllm" and cfg.generator.kv_cache_bytes == 256 << 20


def test_missing_keys_take_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "learner:\n  lr: 2.0e-4\n"))
    assert cfg.learner.lr == 2e-4
    assert cfg.model_dump(exclude={"learner"}) == AgentGRPOConfig().model_dump(exclude={"learner"})
    assert load_config(_write(tmp_path, "", "empty.yaml")) == AgentGRPOConfig()


def test_packaged_configs_listed() -> None:
    assert {"default", "smollm2_cpu", "qwen3_0.6b_gpu", "qwen3_1.7b_gpu"} <= set(packaged_configs())


@pytest.mark.parametrize("name", sorted(packaged_configs()))
def test_packaged_config_validates_and_converts(name: str) -> None:
    cfg = load_config(name)
    learner = cfg.learner_config("/models/policy")
    assert learner.model == "/models/policy" and learner.lr == cfg.learner.lr
    assert learner.total_steps == cfg.orchestrator.steps and learner.temperature == cfg.rollout.temperature
    assert learner.loss.kind == cfg.learner.loss.kind
    collector = cfg.rollout.collector_config()
    assert collector.group_size == cfg.rollout.group_size
    assert collector.rollout.max_turns == cfg.rollout.max_turns
    assert collector.rollout.sampling.max_tokens == cfg.rollout.max_tokens
    assert cfg.buffer_config().max_policy_age == cfg.buffer.max_policy_age
    orch = cfg.orchestrator.orchestrator_config()
    assert (orch.steps, orch.groups_per_step, orch.mode) == (
        cfg.orchestrator.steps,
        cfg.orchestrator.groups_per_step,
        cfg.orchestrator.mode,
    )
    assert cfg.advantage.advantage_config().mode == cfg.advantage.mode
    gen = cfg.generator.generator_config("/models/policy", seed=cfg.seed)
    assert gen.max_model_len == cfg.generator.max_model_len
    if cfg.warm_start.enabled:
        sft = cfg.warm_start.sft_config(cfg, "/tmp/out/sft")
        assert (sft.env, sft.env_kwargs, sft.model, sft.steps, sft.eval_episodes) == (
            cfg.env,
            cfg.env_kwargs,   # demonstrations on the env that will be trained on
            cfg.model,
            cfg.warm_start.steps,
            0,
        )
    # Resolved config round-trips through YAML.
    assert AgentGRPOConfig.model_validate(yaml.safe_load(cfg.to_yaml())) == cfg


def test_gpu_configs_use_cuda_bf16_and_vllm_memory_fraction() -> None:
    for name in ("qwen3_0.6b_gpu", "qwen3_1.7b_gpu"):
        cfg = load_config(name)
        assert cfg.model.startswith("Qwen/Qwen3-") and not cfg.warm_start.enabled
        assert (cfg.learner.device, cfg.learner.dtype, cfg.learner.lr) == ("cuda", "bfloat16", 1e-6)
        assert cfg.generator.kv_cache_bytes is None and cfg.generator.gpu_memory_utilization == 0.3
        gen = cfg.generator.generator_config("/m", seed=0)
        assert gen.kv_cache_bytes is None and gen.gpu_memory_utilization == 0.3  # type: ignore[union-attr]


# -- overrides ---------------------------------------------------------------------------------


def test_overrides_of_each_type() -> None:
    cfg = load_config(
        overrides=[
            "learner.lr=1e-3",  # YAML 1.1 reads 1e-3 as text; pydantic makes it a float
            "orchestrator.steps=5",  # int
            "logging.wandb=true",  # bool
            "orchestrator.max_minutes=null",  # None
            "rollout.step_timeout_s=null",
            "env_kwargs={hi: 32}",  # mapping
            "learner.loss.kind=dapo",  # nested section, Literal
            "rollout.system_prompt=Answer: a number",  # text stays text although it looks like a mapping
            "generator.dtype=bfloat16",
            "output_dir=/tmp/run 1",
        ]
    )
    assert cfg.learner.lr == 1e-3 and isinstance(cfg.learner.lr, float)
    assert cfg.orchestrator.steps == 5 and cfg.logging.wandb is True
    assert cfg.orchestrator.max_minutes is None and cfg.rollout.step_timeout_s is None
    assert cfg.env_kwargs == {"hi": 32} and cfg.learner.loss.kind == "dapo"
    assert cfg.rollout.system_prompt == "Answer: a number" and cfg.generator.dtype == "bfloat16"
    assert cfg.output_dir == "/tmp/run 1"


def test_override_mapping_entry_section_merge_and_last_wins() -> None:
    cfg = load_config(
        overrides=[
            "env_kwargs.hi=32",
            "env_kwargs.lo=2",
            "learner={lr: 2e-4, loss: {kind: gspo}}",
            "orchestrator.steps=3",
            "orchestrator.steps=4",
        ]
    )
    assert cfg.env_kwargs == {"progress_reward": 0.5, "hi": 32, "lo": 2}  # merged into default.yaml's
    assert cfg.learner.lr == 2e-4 and cfg.learner.loss.kind == "gspo" and cfg.learner.max_grad_norm == 1.0
    assert cfg.orchestrator.steps == 4


def test_override_value_that_is_not_yaml_stays_a_string() -> None:
    cfg = load_config(overrides=["env=a: b: c", "model=[unclosed", "warm_start.enabled=false"])
    assert cfg.env == "a: b: c" and cfg.model == "[unclosed"
    # A non-text key given invalid YAML gets the string, and the error quotes it.
    err = _error(overrides=["orchestrator.steps=[1"])
    assert "orchestrator.steps: must be an integer (got '[1')" in str(err)


def test_overrides_apply_on_top_of_a_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: tiny-llama\nlearner:\n  lr: 0.5\n")
    cfg = load_config(path, ["learner.lr=0.25"])
    assert cfg.model == "tiny-llama" and cfg.learner.lr == 0.25


# -- error messages ----------------------------------------------------------------------------


def test_unknown_key_in_override_suggests_the_right_one() -> None:
    err = _error(overrides=["learner.lrr=1"])
    assert "learner.lrr: unknown key (did you mean 'learner.lr'?)" in str(err)
    assert "override 'learner.lrr=1'" in str(err)


def test_unknown_key_in_file_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: tiny\nlearner:\n  lrr: 0.1\n", "x.yaml")
    err = _error(path)
    assert "x.yaml" in err.header
    assert err.problems == ["learner.lrr: unknown key (did you mean 'learner.lr'?) (x.yaml line 3)"]


def test_key_in_the_wrong_section_suggests_where_it_lives() -> None:
    assert "steps: unknown key (did you mean 'orchestrator.steps' or 'warm_start.steps'?)" in str(
        _error(overrides=["steps=3"])
    )
    assert "did you mean 'learner.loss.kl_coef'?" in str(_error(overrides=["learner.kl_coef=0.1"]))


def test_number_bounds_name_the_key() -> None:
    assert "orchestrator.steps: must be >= 1 (got 0)" in str(_error(overrides=["orchestrator.steps=0"]))
    assert "learner.lr: must be > 0 (got -1)" in str(_error(overrides=["learner.lr=-1"]))
    assert "rollout.temperature: must be > 0 (got 0)" in str(_error(overrides=["rollout.temperature=0"]))
    assert "warm_start.expert_prob: must be <= 1" in str(_error(overrides=["warm_start.expert_prob=2"]))


def test_override_not_key_value() -> None:
    assert "override 'foo' is not key=value" in str(_error(overrides=["foo"]))
    assert "is not a dotted key" in str(_error(overrides=["learner..lr=1"]))


def test_file_not_found_lists_packaged_configs(tmp_path: Path) -> None:
    err = _error(tmp_path / "x.yaml")
    assert "config file" in str(err) and "x.yaml not found" in str(err) and "smollm2_cpu" in str(err)


def test_yaml_syntax_error_has_line_number(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: tiny\nlearner:\n  lr: [1,\n  x: 2\n", "bad.yaml")
    message = str(_error(path))
    assert "bad.yaml: YAML syntax error at line 5" in message and "started at line 3" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "top level must be a mapping" in str(_error(_write(tmp_path, "- a\n- b\n")))


def test_subkey_of_a_scalar() -> None:
    assert "model.x=1: 'model' is not a section" in str(_error(overrides=["model.x=1"]))


def test_section_given_a_scalar(tmp_path: Path) -> None:
    assert "learner: is a section" in str(_error(overrides=["learner=3"]))
    assert "generator: must be a mapping of keys (got 5) (run.yaml line 1)" in str(
        _error(_write(tmp_path, "generator: 5\n"))
    )


def test_all_errors_in_one_message(tmp_path: Path) -> None:
    path = _write(tmp_path, "learner:\n  lrr: 0.1\n  lr: -1\norchestrator:\n  steps: 0\n  mode: asink\n")
    err = _error(path, ["generator.kind=jax", "foo"])
    keys = [p.split(":", 1)[0] for p in err.problems]
    assert len(err.problems) == 6
    assert {"learner.lrr", "learner.lr", "orchestrator.steps", "orchestrator.mode", "generator.kind"} <= set(
        keys
    )
    assert "orchestrator.mode: must be 'async' or 'sync' (got 'asink') (run.yaml line 6)" in err.problems
    assert (
        "generator.kind: must be 'vllm' or 'torch' (got 'jax') (from override 'generator.kind=jax')"
        in err.problems
    )


def test_wrong_types_name_the_key() -> None:
    assert "logging.wandb: must be true or false (got 'maybe')" in str(
        _error(overrides=["logging.wandb=maybe"])
    )
    assert "rollout.group_size: must be an integer (got 2.5)" in str(
        _error(overrides=["rollout.group_size=2.5"])
    )
    assert "env_kwargs: must be a mapping" in str(_error(overrides=["env_kwargs=3"]))


def test_runtime_monarch_and_its_section() -> None:
    cfg = load_config(overrides=["runtime=monarch", "monarch.generator_replicas=3", "monarch.routing=least_loaded"])
    assert (cfg.runtime, cfg.monarch.generator_replicas, cfg.monarch.routing) == ("monarch", 3, "least_loaded")
    assert load_config().monarch.generator_replicas == 2  # the default section, unused by runtime: local
    message = str(_error(overrides=["runtime=ray"]))
    assert "runtime:" in message and "'local'" in message and "'monarch'" in message
    assert "monarch.generator_replicas" in str(_error(overrides=["runtime=monarch", "monarch.generator_replicas=0"]))
    assert "monarch.routing" in str(_error(overrides=["monarch.routing=random"]))


def test_eval_episodes_stay_below_training_seeds() -> None:
    assert load_config(overrides=["eval.episodes=1000000"]).eval.episodes == 1_000_000
    message = str(_error(overrides=["eval.episodes=1000001"]))
    assert "eval.episodes: must be <= 1_000_000" in message and "training seeds" in message


# -- cross-field rules -------------------------------------------------------------------------


def test_async_needs_policy_age_at_least_push_interval() -> None:
    err = _error(overrides=["orchestrator.weight_push_every=2"])  # max_policy_age stays 1
    (problem,) = err.problems
    assert problem.startswith(
        "buffer.max_policy_age: async mode needs buffer.max_policy_age >= "
        "orchestrator.weight_push_every (1 < 2)"
    )
    assert "wait forever" in problem and "set buffer.max_policy_age=2" in problem
    assert load_config(overrides=["orchestrator.weight_push_every=2", "buffer.max_policy_age=2"])


def test_sync_needs_policy_age_at_least_push_interval_minus_one() -> None:
    ok = load_config(overrides=["orchestrator.mode=sync", "orchestrator.weight_push_every=2"])
    assert ok.buffer.max_policy_age == 1
    assert load_config(overrides=["orchestrator.mode=sync", "buffer.max_policy_age=0"])
    message = str(_error(overrides=["orchestrator.mode=sync", "orchestrator.weight_push_every=3"]))
    assert "buffer.max_policy_age: sync mode needs" in message and "(1 < 2)" in message
    assert "from override 'orchestrator.weight_push_every=3'" not in message  # located at the key it names


def test_other_cross_field_rules() -> None:
    assert "buffer.capacity: must be >= orchestrator.groups_per_step (8 < 16)" in str(
        _error(overrides=["buffer.capacity=8"])
    )
    assert "learner.warmup_steps: must be < orchestrator.steps" in str(
        _error(overrides=["learner.warmup_steps=150"])
    )
    assert "generator.max_model_len: must exceed rollout.max_turns * rollout.max_tokens (40 <= 48)" in str(
        _error(overrides=["generator.max_model_len=40"])
    )
    message = str(_error(overrides=["env=countdown"]))
    assert (
        "warm_start.enabled:" in message
        and "guess_number" in message
        and "warm_start.enabled=false" in message
    )
    assert "env_kwargs: countdown does not take progress_reward" in message and "env_kwargs={}" in message
    cfg = load_config(overrides=["env=countdown", "warm_start.enabled=false", "env_kwargs={}"])
    assert cfg.env == "countdown"
    # guess_number's own arguments pass; a typo in them is named
    assert load_config(overrides=["env_kwargs.hi=32"]).env_kwargs["hi"] == 32
    assert "does not take hii" in str(_error(overrides=["env_kwargs.hii=32"]))


def test_shm_weights_with_other_hosts_are_refused_up_front() -> None:
    remote = "monarch.hosts=[tcp://node1:26600, tcp://node2:26600]"
    message = str(_error(overrides=["runtime=monarch", remote, "monarch.weight_transport=shm"]))
    assert "monarch.weight_transport: shm" in message and "weight_transport=auto" in message
    # auto picks a transport that reaches other hosts; shm is fine when every worker is on this machine
    assert load_config(overrides=["runtime=monarch", remote]).monarch.weight_transport == "auto"
    local_workers = "monarch.hosts=[tcp://127.0.0.1:26600]"
    assert load_config(overrides=["runtime=monarch", local_workers, "monarch.weight_transport=shm"]).runtime == "monarch"
    # the local runtime ignores the monarch section
    assert load_config(overrides=[remote, "monarch.weight_transport=shm"]).runtime == "local"


def test_dr_grpo_with_std_normalisation_is_allowed() -> None:
    cfg = load_config(overrides=["learner.loss.kind=dr_grpo"])
    assert cfg.advantage.normalize_std is True
    assert cfg.learner_config("/m").loss.max_completion_tokens == 6 * 8  # max_turns * max_tokens
    cfg = load_config(overrides=["learner.loss.kind=dr_grpo", "learner.loss.max_completion_tokens=100"])
    assert cfg.learner_config("/m").loss.max_completion_tokens == 100


def test_python_construction_and_assignment_are_validated() -> None:
    with pytest.raises(pydantic.ValidationError, match="buffer.max_policy_age"):
        AgentGRPOConfig(buffer={"max_policy_age": 0})  # type: ignore[arg-type]
    cfg = AgentGRPOConfig()
    with pytest.raises(pydantic.ValidationError):
        cfg.learner.lr = 0
    with pytest.raises(pydantic.ValidationError):
        AgentGRPOConfig(lrr=1)  # type: ignore[call-arg]


# -- conversions -------------------------------------------------------------------------------


def test_learner_config_fields() -> None:
    cfg = load_config(
        overrides=[
            "learner.lr_schedule=cosine",
            "learner.warmup_steps=3",
            "orchestrator.steps=30",
            "rollout.temperature=0.7",
            "seed=5",
            "learner.micro_batch_tokens=2048",
        ]
    )
    lc = cfg.learner_config("/m")
    assert (lc.lr_schedule, lc.warmup_steps, lc.total_steps) == ("cosine", 3, 30)
    assert (lc.temperature, lc.seed, lc.micro_batch_tokens) == (0.7, 5, 2048)


def test_generator_config_per_kind() -> None:
    from forge_env.generator import TorchGeneratorConfig, VLLMGeneratorConfig

    vllm = load_config().generator.generator_config("/m", seed=3)
    assert isinstance(vllm, VLLMGeneratorConfig) and vllm.seed == 3 and vllm.max_model_len == 1024
    torch_cfg = load_config(overrides=["generator.kind=torch", "generator.max_batch_size=16"])
    gen = torch_cfg.generator.generator_config("/m", seed=0)
    assert isinstance(gen, TorchGeneratorConfig) and gen.max_batch_size == 16 and gen.dtype == "float32"


def test_collector_rollout_and_sampling() -> None:
    cfg = load_config(overrides=["rollout.top_p=0.9", "rollout.episode_timeout_s=null"])
    collector = cfg.rollout.collector_config()
    assert collector.max_concurrent_episodes == 128 and collector.rollout.episode_timeout_s is None
    assert collector.rollout.sampling.top_p == 0.9 and collector.rollout.sampling.temperature == 1.0


def test_buffer_and_orchestrator_configs() -> None:
    cfg = load_config(overrides=["buffer.sampling=uniform", "seed=7", "orchestrator.max_minutes=5"])
    buf = cfg.buffer_config()
    assert (buf.sampling, buf.seed, buf.drop_degenerate) == ("uniform", 7, False)
    assert cfg.orchestrator.max_minutes == 5.0
    assert cfg.orchestrator.orchestrator_config().first_task_seed == 2_000_000


# -- round trip and help -----------------------------------------------------------------------


def test_to_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        overrides=[
            "learner.lr=1e-6",
            "env_kwargs={hi: 32, lo: 2}",
            "rollout.system_prompt=Say: 8",
            "orchestrator.max_minutes=2.5",
            "generator.kv_cache_bytes=null",
            "learner.loss.clip_eps=0.1",
            "seed=3",
        ]
    )
    path = _write(tmp_path, cfg.to_yaml(), "config.yaml")
    assert load_config(path) == cfg


def test_dump_keys_lists_every_key_with_description() -> None:
    lines = dump_keys()
    keys = [line.split(":", 1)[0] for line in lines if not line.startswith("#")]
    assert "learner.loss.kind" in keys and "orchestrator.max_minutes" in keys and "env_kwargs" in keys

    def leaves(d: dict, prefix: str = "") -> list[str]:
        return [
            k
            for name, v in d.items()
            for k in (
                leaves(v, f"{prefix}{name}.")
                if isinstance(v, dict) and name not in ("env_kwargs", "kwargs", "hosts")  # dict-valued keys
                else [prefix + name]
            )
        ]

    assert keys == leaves(AgentGRPOConfig().model_dump()) and len(keys) == 96
    for line in lines:
        if not line.startswith("#"):
            assert "  # " in line and not line.endswith("#"), line  # every key has a description
    assert "orchestrator.steps: 150  # Learner steps (optimizer updates) of the run." in lines
    assert "orchestrator.steps: 3  # Learner steps (optimizer updates) of the run." in dump_keys(
        load_config(overrides=["orchestrator.steps=3"])
    )
