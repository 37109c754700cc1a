"""The GRPO learner: torchtitan's models trained with GRPO-family losses, and its pure parts.

- :class:`Learner` with :class:`LearnerConfig`: builds torchtitan's Qwen3/Llama3 decoder from an
  HF folder, trains it (micro-batches, clipping, LR schedule, FSDP2 across ranks), exports
  HF-named weights for the generator and HF folders; :class:`TitanModel` is the HF <->
  torchtitan bridge underneath (``from_hf`` / ``to_hf``), :func:`read_hf_shape` its config reader.
- :func:`policy_loss` with :class:`LossConfig`: GRPO, DAPO, Dr.GRPO, GSPO, optional k3 KL to a
  reference; :func:`loss_normalizer` for data-parallel-correct normalisation.
- :class:`ReferencePolicy`: a frozen copy of the starting model whose logprobs feed that KL term.
- :func:`group_advantages` with :class:`AdvantageConfig`: per-token advantages of a
  :class:`~forge_env.rollout.TrajectoryGroup`, per episode or per turn; :func:`is_degenerate`.

The advantage functions are pure Python; the losses, the learner (and torch) load on first use, so
``forge_env.buffer`` can use :func:`is_degenerate` without torch.

>>> from forge_env.learner import AdvantageConfig
>>> AdvantageConfig().mode
'episode'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forge_env.learner._advantages import AdvantageConfig, AdvantageMode, group_advantages, is_degenerate

__all__ = [
    "AdvantageConfig",
    "AdvantageMode",
    "Aggregation",
    "HFShape",
    "Learner",
    "LearnerConfig",
    "LossConfig",
    "LossKind",
    "ReferencePolicy",
    "TitanModel",
    "group_advantages",
    "is_degenerate",
    "loss_normalizer",
    "policy_loss",
    "read_hf_shape",
]

# Names whose module imports torch: loaded on first access.
_LAZY = {name: "forge_env.learner._losses" for name in ("Aggregation", "LossConfig", "LossKind",
                                                         "loss_normalizer", "policy_loss")}
_LAZY.update({name: "forge_env.learner._learner" for name in ("Learner", "LearnerConfig")})
_LAZY.update({name: "forge_env.learner._model" for name in ("HFShape", "TitanModel", "read_hf_shape")})
_LAZY["ReferencePolicy"] = "forge_env.learner._reference"

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.learner._learner import Learner, LearnerConfig
    from forge_env.learner._losses import Aggregation, LossConfig, LossKind, loss_normalizer, policy_loss
    from forge_env.learner._model import HFShape, TitanModel, read_hf_shape
    from forge_env.learner._reference import ReferencePolicy


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'forge_env.learner' has no attribute {name!r}")
    import importlib
    import inspect

    value = getattr(importlib.import_module(module), name)
    if inspect.isclass(value) or inspect.isfunction(value):  # not the Literal aliases
        value.__module__ = "forge_env.learner"
    globals()[name] = value
    return value


for _obj in (AdvantageConfig, group_advantages, is_degenerate):
    _obj.__module__ = "forge_env.learner"
del _obj
