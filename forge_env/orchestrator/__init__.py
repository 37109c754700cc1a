"""The training loop: rollout collectors, a replay buffer, a learner, weight pushes.

- :class:`Orchestrator` with :class:`OrchestratorConfig`: ``async`` (generation overlaps
  training, staleness bounded by the buffer's ``max_policy_age``) or ``sync`` (generate, then
  train); weights pushed to the generator every ``weight_push_every`` learner steps, versions
  tracked from the learner through the generator into every trajectory turn.
- :class:`LoopStalledError`: the learner waited too long for a batch (the message says what the
  collectors and the buffer did).

>>> from forge_env.orchestrator import OrchestratorConfig
>>> OrchestratorConfig(mode="sync").groups_in_flight
16
"""

from forge_env.orchestrator._config import OrchestratorConfig, OrchestratorMode
from forge_env.orchestrator._loop import LoopStalledError, Orchestrator, StepReport

__all__ = ["LoopStalledError", "Orchestrator", "OrchestratorConfig", "OrchestratorMode", "StepReport"]

for _obj in (LoopStalledError, Orchestrator, OrchestratorConfig):
    _obj.__module__ = "forge_env.orchestrator"
del _obj
