"""Shared-Bottom: one MLP shared by every task, each task's tower on top of the same representation.

Rich Caruana, "Multitask Learning", Machine Learning 28(1), 1997 (hard parameter sharing).

The baseline every other backbone is measured against: cheap, and strong when tasks are closely
related; when they conflict, the shared bottom's gradients fight (the motivation for MMoE and PLE).

Example::

    >>> backbone = SharedBottom(32, ["ctr", "cvr"], SharedBottomConfig(bottom=MLPConfig(hidden=(64, 16))))
    >>> out = backbone(torch.randn(8, 32))
    >>> {task: tuple(h.shape) for task, h in out.items()}, backbone.output_dims
    ({'ctr': (8, 16), 'cvr': (8, 16)}, {'ctr': 16, 'cvr': 16})
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import MLP, last_linear_weights


@dataclass(frozen=True)
class SharedBottomConfig:
    """bottom: the MLP every task shares."""

    bottom: MLPConfig = MLPConfig(hidden=(256, 128))


class SharedBottom(nn.Module):
    """[B, In] -> {task: [B, H]}, the same tensor for every task (H = bottom.hidden[-1])."""

    def __init__(self, input_dim: int, task_names: Sequence[str], config: SharedBottomConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.bottom = MLP(input_dim, config.bottom)
        self.output_dims = {task: self.bottom.output_dim for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        shared = self.bottom(x)  # [B, In] -> [B, H]
        return {task: shared for task in self.task_names}  # each task: [B, H], one tensor

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: the bottom MLP's last Linear (weights every task depends on)."""
        return last_linear_weights(self.bottom)
