"""``python -m apps.agent_grpo``: train an LLM agent with GRPO on a multi-turn environment.

The default config (no arguments) runs on a CPU: the locally built tiny model gets a short
supervised warm start on guess_number demonstrations (``apps.sft``), a held-out baseline, async
GRPO (vLLM generator, torchtitan learner, replay buffer with bounded staleness) and a held-out
final evaluation, with metrics, checkpoints, a plot and ``summary.json`` in ``output_dir``.
From Python::

    from apps.agent_grpo import load_config, run
    result = run(load_config(None, ["orchestrator.steps=10", "output_dir=runs/try"]))
    result.summary["baseline_success"], result.summary["final_success"]
"""

from apps.agent_grpo._app import RunError, TrainResult, main, run, train
from apps.agent_grpo._config import AgentGRPOConfig, ConfigError, load_config

__all__ = ["AgentGRPOConfig", "ConfigError", "RunError", "TrainResult", "load_config", "main", "run", "train"]
