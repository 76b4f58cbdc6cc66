"""MMoE: multi-gate mixture of experts, one softmax gate per task over shared experts.

Jiaqi Ma, Zhe Zhao, Xinyang Yi, Jilin Chen, Lichan Hong, Ed H. Chi, "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018.

Every task mixes the same E experts with its own input-dependent weights, so loosely related tasks
can lean on different experts instead of fighting over one shared bottom.

Example::

    >>> config = MMoEConfig(num_experts=4, expert=MLPConfig(hidden=(16,)))
    >>> backbone = MMoE(32, ["ctr", "cvr"], config)
    >>> out = backbone(torch.randn(8, 32))
    >>> out["ctr"].shape, backbone.gates["cvr"](torch.randn(8, 32)).sum(-1)[:2]
    (torch.Size([8, 16]), tensor([1.0000, 1.0000], grad_fn=<SliceBackward0>))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import Experts, Gate, last_linear_weights, mix_experts


@dataclass(frozen=True)
class MMoEConfig:
    """num_experts: E expert MLPs, each `expert`, shared by all tasks; each task has its own gate."""

    num_experts: int = 4
    expert: MLPConfig = MLPConfig(hidden=(256, 128))

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ConfigError(f"num_experts must be >= 1, got {self.num_experts}")


class MMoE(nn.Module):
    """[B, In] -> {task: [B, H]}, a task-specific mixture of shared experts (H = expert.hidden[-1])."""

    def __init__(self, input_dim: int, task_names: Sequence[str], config: MMoEConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.experts = Experts(input_dim, config.num_experts, config.expert)
        self.gates = nn.ModuleDict({task: Gate(input_dim, config.num_experts) for task in self.task_names})
        self.output_dims = {task: self.experts.output_dim for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        expert_outputs = self.experts(x)  # [B, In] -> [B, E, H], computed once for all tasks
        return {
            task: mix_experts(self.gates[task](x), expert_outputs)  # [B, E] x [B, E, H] -> [B, H]
            for task in self.task_names
        }

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: every expert's last Linear (weights every task depends on)."""
        return last_linear_weights(self.experts)
