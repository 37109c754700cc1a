"""Replay buffer of trajectory groups, with a bound on how old their policy may be.

Every sample carries the policy version that produced each turn; :class:`ReplayBuffer` drops
groups older than ``max_policy_age`` when sampling and counts every drop. Its
``state_dict()`` is plain JSON data for checkpoints. Importing it does not import torch.

>>> from forge_env.buffer import BufferConfig, ReplayBuffer
>>> len(ReplayBuffer(BufferConfig(capacity=8)))
0
"""

from __future__ import annotations

from forge_env.buffer._buffer import BufferConfig, BufferStats, ReplayBuffer, SamplingMode

__all__ = ["BufferConfig", "BufferStats", "ReplayBuffer", "SamplingMode"]

for _obj in (BufferConfig, BufferStats, ReplayBuffer):
    _obj.__module__ = "forge_env.buffer"
del _obj
