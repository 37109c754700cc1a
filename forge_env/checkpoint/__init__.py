"""Atomic training checkpoints and resume.

A run saves its learner, replay buffer and loop state every N steps with
:class:`Checkpointer`; each checkpoint is a ``step_NNNNNN`` folder that appears only when
complete (written under a temp name, fsynced, marked with a manifest, renamed), so a run
killed at any moment (``kill -9`` included) resumes from the last complete one.
:func:`rng_state`/:func:`set_rng_state` carry the global RNGs across the restart.

>>> import tempfile
>>> from forge_env.checkpoint import CheckpointConfig, Checkpointer, rng_state
>>> ckpt = Checkpointer(CheckpointConfig(directory=tempfile.mkdtemp()))
>>> ckpt.latest() is None
True
>>> ckpt.save(5, {"loop": {"step": 5}, "rng": rng_state()}).name
'step_000005'
>>> ckpt.load()[1]["loop"]
{'step': 5}
"""

from __future__ import annotations

from forge_env.checkpoint._checkpointer import CheckpointConfig, CheckpointError, Checkpointer
from forge_env.checkpoint._rng import rng_state, set_rng_state

__all__ = ["CheckpointConfig", "CheckpointError", "Checkpointer", "rng_state", "set_rng_state"]

for _obj in (CheckpointConfig, CheckpointError, Checkpointer, rng_state, set_rng_state):
    _obj.__module__ = "forge_env.checkpoint"
del _obj
