"""Replay buffer of trajectory groups, with a bound on how old their policy may be.

Every sample carries the policy version that produced each turn; :class:`ReplayBuffer` drops
groups older than ``max_policy_age`` when sampling and counts every drop. Its
``state_dict()`` is plain JSON data for checkpoints. Importing it does not import torch.

The training loop awaits its buffer through :class:`AsyncBuffer`, so the buffer may live in
another process (``forge_env.monarch.MonarchReplayBuffer``); :func:`as_async_buffer` wraps a
local :class:`ReplayBuffer` in that interface (:class:`InProcessBuffer`).

>>> from forge_env.buffer import BufferConfig, ReplayBuffer
>>> len(ReplayBuffer(BufferConfig(capacity=8)))
0
"""

from __future__ import annotations

from forge_env.buffer._async import AsyncBuffer, InProcessBuffer, as_async_buffer
from forge_env.buffer._buffer import BufferConfig, BufferStats, ReplayBuffer, SamplingMode

__all__ = ["AsyncBuffer", "BufferConfig", "BufferStats", "InProcessBuffer", "ReplayBuffer", "SamplingMode",
           "as_async_buffer"]

for _obj in (AsyncBuffer, BufferConfig, BufferStats, InProcessBuffer, ReplayBuffer, as_async_buffer):
    _obj.__module__ = "forge_env.buffer"
del _obj
