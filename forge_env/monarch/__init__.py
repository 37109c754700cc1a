"""``runtime: monarch``: generators, the learner and env pools as Monarch actors in their own processes.

- :class:`Service`: N replicas of one actor class behind one handle — routing (round robin,
  least loaded, sticky sessions), health checks, retry of a failed call once on a healthy
  replica, respawn of a dead replica, metrics.
- :class:`MonarchGenerator`: a :class:`~forge_env.generator.Generator` over a Service of
  :class:`GeneratorActor` replicas (vLLM or torch), with versioned weight pushes.
- :class:`MonarchReplayBuffer`: the replay buffer as an actor in a process of its own, awaited
  by the orchestrator through the same interface as a local buffer.
- :class:`MonarchReference`, :class:`MonarchRewardWorkers`: the reference policy (KL term) and
  a reward function's workers as Services of actors.
- :class:`HostsConfig`: where the processes run: this host, or Monarch workers on other hosts
  (``python -m forge_env.monarch.worker`` on each; a list of addresses, or a SLURM allocation).
- :func:`spawn_procs`, :func:`install_fault_hook`, :func:`stop_procs`, :class:`ProcGroup`:
  local process meshes that cannot take the caller down and leave no process behind.

Importing this package is cheap: Monarch (``pip install 'forge-env[monarch]'``), torch and
vLLM load when one of the names above is first used.

>>> from forge_env.monarch import ServiceConfig
>>> ServiceConfig(replicas=2, routing="least_loaded").max_retries
1
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

# Monarch reads its supervision poll period once, when it is imported; its default (10 s) makes a
# dead process take ~10 s to notice, 1 s takes ~0.1-1 s. Set here, before anything below can
# import Monarch (unless the user set it); _mesh warns if Monarch was imported before us.
SUPERVISION_POLL_ENV = "HYPERACTOR_MESH_SUPERVISION_POLL_FREQUENCY"
_POLL_TOO_LATE = "monarch.actor" in sys.modules and SUPERVISION_POLL_ENV not in os.environ
os.environ.setdefault(SUPERVISION_POLL_ENV, "1s")

from forge_env.monarch._hosts import HostsConfig
from forge_env.monarch._service import (
    ReplicaDiedError,
    ServiceConfig,
    ServiceTimeoutError,
    ServiceUnavailableError,
)

__all__ = [
    "BufferActor",
    "BufferProcessError",
    "EnvPoolActor",
    "GeneratorActor",
    "GeneratorSpec",
    "Hosts",
    "HostsConfig",
    "LearnerActor",
    "LearnerProcessError",
    "MonarchEnv",
    "MonarchEnvPool",
    "MonarchGenerator",
    "MonarchLearner",
    "MonarchReference",
    "MonarchReplayBuffer",
    "MonarchRewardWorkers",
    "ProcGroup",
    "ReferenceActor",
    "Replica",
    "ReplicaDiedError",
    "RewardActor",
    "Service",
    "ServiceConfig",
    "ServiceTimeoutError",
    "ServiceUnavailableError",
    "astop_procs",
    "install_fault_hook",
    "quiet_faults",
    "spawn_procs",
    "start_procs",
    "stop_procs",
]

# name -> the submodule that defines it; loaded on first use so that `import forge_env.monarch`
# needs neither Monarch nor torch, and a submodule missing here breaks only its own names.
_LAZY = {
    "Hosts": "forge_env.monarch._hosts",
    "ProcGroup": "forge_env.monarch._mesh",
    "astop_procs": "forge_env.monarch._mesh",
    "install_fault_hook": "forge_env.monarch._mesh",
    "quiet_faults": "forge_env.monarch._mesh",
    "spawn_procs": "forge_env.monarch._mesh",
    "start_procs": "forge_env.monarch._mesh",
    "stop_procs": "forge_env.monarch._mesh",
    "Replica": "forge_env.monarch._service",
    "Service": "forge_env.monarch._service",
    "GeneratorActor": "forge_env.monarch._generator",
    "GeneratorSpec": "forge_env.monarch._generator",
    "MonarchGenerator": "forge_env.monarch._generator",
    "LearnerActor": "forge_env.monarch._learner",
    "MonarchLearner": "forge_env.monarch._learner",
    "LearnerProcessError": "forge_env.monarch._learner",
    "BufferActor": "forge_env.monarch._buffer",
    "BufferProcessError": "forge_env.monarch._buffer",
    "MonarchReplayBuffer": "forge_env.monarch._buffer",
    "MonarchReference": "forge_env.monarch._reference",
    "ReferenceActor": "forge_env.monarch._reference",
    "MonarchRewardWorkers": "forge_env.monarch._reward",
    "RewardActor": "forge_env.monarch._reward",
    "EnvPoolActor": "forge_env.monarch._envs",
    "MonarchEnvPool": "forge_env.monarch._envs",
    "MonarchEnv": "forge_env.monarch._envs",
}

if TYPE_CHECKING:  # pragma: no cover
    from forge_env.monarch._buffer import BufferActor, BufferProcessError, MonarchReplayBuffer
    from forge_env.monarch._envs import EnvPoolActor, MonarchEnv, MonarchEnvPool
    from forge_env.monarch._hosts import Hosts
    from forge_env.monarch._generator import GeneratorActor, GeneratorSpec, MonarchGenerator
    from forge_env.monarch._learner import LearnerActor, LearnerProcessError, MonarchLearner
    from forge_env.monarch._mesh import (
        ProcGroup,
        astop_procs,
        install_fault_hook,
        quiet_faults,
        spawn_procs,
        start_procs,
        stop_procs,
    )
    from forge_env.monarch._reference import MonarchReference, ReferenceActor
    from forge_env.monarch._reward import MonarchRewardWorkers, RewardActor
    from forge_env.monarch._service import Replica, Service


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'forge_env.monarch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
