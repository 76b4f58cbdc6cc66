"""Fixed weights: total = sum_k c_k L_k with c_k the task's static TaskConfig.weight.

The baseline every dynamic method is measured against (a hand-tuned linear scalarisation). No state,
no collective: the weights are the config's, so they are the same on every rank by construction.

Example::

    >>> weighting = Fixed(tasks, FixedConfig())       # tasks: ctr (weight 1.0), cvr (weight 0.5)
    >>> weighting.combine({"ctr": l_ctr, "cvr": l_cvr}, step=0)[1]
    {'ctr': 1.0, 'cvr': 0.5}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_rec.weighting.base import LossStatWeighting


@dataclass(frozen=True)
class FixedConfig:
    """No parameters: the weights are each task's `weight` in the task list."""


class Fixed(LossStatWeighting):
    """weights [K] = c (the static weights), every step."""

    uses_losses = False

    def multipliers(self, global_losses: Tensor | None, step: int) -> Tensor:
        return torch.ones(len(self.task_names), dtype=torch.float64)  # [K]
