"""OMoE: one-gate mixture of experts, every task reading the same gated mixture.

Jiaqi Ma, Zhe Zhao, Xinyang Yi, Jilin Chen, Lichan Hong, Ed H. Chi, "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018: the one-gate baseline (OMoE) that
the paper's MMoE improves on by giving each task its own gate (see mmoe.py).

The tasks share one representation, as in Shared-Bottom, but it is an input-dependent mixture of E
experts; only the towers tell the tasks apart.

Example::

    >>> config = OMoEConfig(num_experts=4, expert=MLPConfig(hidden=(16,)))
    >>> backbone = OMoE(32, ["ctr", "cvr"], config)
    >>> out = backbone(torch.randn(8, 32))
    >>> out["ctr"].shape, out["ctr"] is out["cvr"]
    (torch.Size([8, 16]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import Experts, Gate, last_linear_weights, mix_experts


@dataclass(frozen=True)
class OMoEConfig:
    """num_experts: E expert MLPs, each `expert`; one softmax gate over them for all tasks."""

    num_experts: int = 4
    expert: MLPConfig = MLPConfig(hidden=(256, 128))

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ConfigError(f"num_experts must be >= 1, got {self.num_experts}")


class OMoE(nn.Module):
    """[B, In] -> {task: [B, H]}, the same gated mixture for every task (H = expert.hidden[-1])."""

    def __init__(self, input_dim: int, task_names: Sequence[str], config: OMoEConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.experts = Experts(input_dim, config.num_experts, config.expert)
        self.gate = Gate(input_dim, config.num_experts)
        self.output_dims = {task: self.experts.output_dim for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        expert_outputs = self.experts(x)  # [B, In] -> [B, E, H]
        weights = self.gate(x)  # [B, In] -> [B, E]
        mixture = mix_experts(weights, expert_outputs)  # [B, E] x [B, E, H] -> [B, H]
        return {task: mixture for task in self.task_names}  # each task: [B, H], one tensor

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: every expert's last Linear (weights every task depends on)."""
        return last_linear_weights(self.experts)
