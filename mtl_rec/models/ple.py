"""PLE: Progressive Layered Extraction, several CGC levels stacked.

Hongyan Tang, Junning Liu, Ming Zhao, Xudong Gong, "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020, section 4.3.

Each level is a CGCLayer (cgc.py). Level 1 reads the input everywhere; level k reads task t's output
of level k-1 for task t's experts and gate, and the shared gate's output for the shared experts. Inner
levels therefore carry a shared gate over all experts; the last level does not need one.

Example::

    >>> config = PLEConfig(num_levels=2, shared_experts=1, specific_experts={"ctr": 2, "cvr": 1},
    ...                    expert=MLPConfig(hidden=(16,)))
    >>> backbone = PLE(32, ["ctr", "cvr"], config)
    >>> {task: tuple(h.shape) for task, h in backbone(torch.randn(8, 32)).items()}
    {'ctr': (8, 16), 'cvr': (8, 16)}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.cgc import CGCLayer, experts_per_task
from mtl_rec.models.layers import last_linear_weights


@dataclass(frozen=True)
class PLEConfig:
    """num_levels: stacked extraction levels; shared_experts, specific_experts (int or {task: count})
    and expert: per level, as in CGCConfig."""

    num_levels: int = 2
    shared_experts: int = 2
    specific_experts: int | dict[str, int] = 1
    expert: MLPConfig = MLPConfig(hidden=(256, 128))

    def __post_init__(self) -> None:
        if self.num_levels < 1:
            raise ConfigError(f"num_levels must be >= 1, got {self.num_levels}")
        if self.shared_experts < 1:
            raise ConfigError(f"shared_experts must be >= 1, got {self.shared_experts}")


class PLE(nn.Module):
    """[B, In] -> {task: [B, H]} through num_levels CGC levels (H = expert.hidden[-1])."""

    def __init__(self, input_dim: int, task_names: Sequence[str], config: PLEConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        counts = experts_per_task(config.specific_experts, self.task_names)
        levels = []
        for level in range(config.num_levels):
            is_last = level == config.num_levels - 1
            levels.append(
                CGCLayer(
                    input_dim,
                    self.task_names,
                    config.shared_experts,
                    counts,
                    config.expert,
                    shared_gate=not is_last,
                )
            )
            input_dim = levels[-1].output_dim
        self.levels = nn.ModuleList(levels)
        self.output_dims = {task: input_dim for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        task_inputs, shared_input = {task: x for task in self.task_names}, x  # {task: [B, In]}, [B, In]
        for level in self.levels:
            # {task: [B, In]}, [B, In] -> {task: [B, H]}, [B, H] (None after the last level)
            task_inputs, shared_input = level(task_inputs, shared_input)
        return task_inputs

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: every shared expert's last Linear, last level (weights every task depends on)."""
        return last_linear_weights(self.levels[-1].shared_experts)
