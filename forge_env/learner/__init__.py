"""The GRPO learner's pure parts: policy losses and group-relative advantages.

- :func:`policy_loss` with :class:`LossConfig`: GRPO, DAPO, Dr.GRPO, GSPO, optional k3 KL to a
  reference; :func:`loss_normalizer` for data-parallel-correct normalisation.
- :func:`group_advantages` with :class:`AdvantageConfig`: per-token advantages of a
  :class:`~forge_env.rollout.TrajectoryGroup`, per episode or per turn; :func:`is_degenerate`.

The advantage functions are pure Python; the losses (and torch) load on first use, so
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
    "LossConfig",
    "LossKind",
    "group_advantages",
    "is_degenerate",
    "loss_normalizer",
    "policy_loss",
]

# Names whose module imports torch: loaded on first access.
_LAZY = {name: "forge_env.learner._losses" for name in ("Aggregation", "LossConfig", "LossKind",
                                                         "loss_normalizer", "policy_loss")}

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.learner._losses import Aggregation, LossConfig, LossKind, loss_normalizer, policy_loss


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
