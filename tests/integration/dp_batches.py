"""One small off-policy training batch, shared by the data-parallel learner tests.

Not a test module: test_learner_parity.py (2 gloo processes) and test_monarch_learner.py
(MonarchLearner ranks) compare a distributed learner with one process on it.
"""

from __future__ import annotations

import torch

from forge_env.rollout import Task, Trajectory


def dp_batch(seed: int = 0) -> tuple[list[Trajectory], list[list[float]]]:
    """Six sequences of different lengths (4 prompt tokens each), behaviour logprobs off the
    policy (importance ratios != 1), advantages of both signs and sizes."""
    g = torch.Generator().manual_seed(seed)
    trajs, adv = [], []
    for i, n in enumerate((12, 20, 7, 16, 9, 14)):
        ids = torch.randint(3, 1000, (n,), generator=g).tolist()
        mask = [0] * 4 + [1] * (n - 4)
        lp = (-3 * torch.rand(n, generator=g)).tolist()
        trajs.append(Trajectory(env_name="dp", task=Task(seed=i), token_ids=ids,
                                logprobs=[v * m for v, m in zip(lp, mask)], loss_mask=mask))
        adv.append([(1.0, -1.0, 0.5, -0.5, 2.0, -2.0)[i] * m for m in mask])
    return trajs, adv
