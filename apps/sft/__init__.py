"""``python -m apps.sft``: supervised warm start of a policy on an env's scripted demonstrations.

Demonstrations are episodes played by a scripted policy (for guess_number: binary search,
with a chance of a random legal guess per turn) and tokenized exactly as
:class:`~agents.ChatAgent` would see them; :meth:`forge_env.learner.Learner.sft_step` trains
on the reply tokens. Held-out success is measured before and after with a
:class:`~forge_env.generator.TorchGenerator`. From Python::

    from apps.sft import SFTConfig, run_sft
    result = run_sft(SFTConfig(steps=75, output_dir="runs/sft"))
    result.before.success_rate, result.after.success_rate, result.learner
"""

from apps.sft._sft import TRAIN_SEED_START, EvalResult, SFTConfig, SFTResult, main, run_sft, sft

__all__ = ["TRAIN_SEED_START", "EvalResult", "SFTConfig", "SFTResult", "main", "run_sft", "sft"]
