"""CGC: Customized Gate Control, shared experts plus experts of each task's own, mixed per task.

Hongyan Tang, Junning Liu, Ming Zhao, Xudong Gong, "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020: the single-level
model of section 4.2. PLE (ple.py) stacks CGCLayer.

Task t's gate mixes only its own specific experts and the shared ones, so no task's representation is
built from another task's specific experts: the separation that reduces MMoE's "seesaw" between tasks.

Example::

    >>> config = CGCConfig(shared_experts=2, specific_experts={"ctr": 2, "cvr": 1},
    ...                    expert=MLPConfig(hidden=(16,)))
    >>> backbone = CGC(32, ["ctr", "cvr"], config)
    >>> {task: tuple(h.shape) for task, h in backbone(torch.randn(8, 32)).items()}
    {'ctr': (8, 16), 'cvr': (8, 16)}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import Experts, Gate, last_linear_weights, mix_experts


def experts_per_task(specific_experts: int | Mapping[str, int], task_names: Sequence[str]) -> dict[str, int]:
    """`specific_experts` (one count for every task, or {task: count}) -> {task: count}, each >= 1."""
    if isinstance(specific_experts, int):
        counts = {task: specific_experts for task in task_names}
    else:
        unknown = sorted(set(specific_experts) - set(task_names))
        missing = [task for task in task_names if task not in specific_experts]
        if unknown or missing:
            raise ConfigError(
                f"specific_experts must give a count for each task ({', '.join(task_names)}) or be one int; "
                f"unknown: {unknown}, missing: {missing}"
            )
        counts = {task: specific_experts[task] for task in task_names}
    bad = {task: n for task, n in counts.items() if n < 1}
    if bad:
        raise ConfigError(f"specific_experts must be >= 1 per task, got {bad}")
    return counts


@dataclass(frozen=True)
class CGCConfig:
    """shared_experts: S experts every task's gate sees; specific_experts: each task's own experts
    (one int, or {task: count}); expert: the MLP of every expert."""

    shared_experts: int = 2
    specific_experts: int | dict[str, int] = 1
    expert: MLPConfig = MLPConfig(hidden=(256, 128))

    def __post_init__(self) -> None:
        if self.shared_experts < 1:
            raise ConfigError(f"shared_experts must be >= 1, got {self.shared_experts}")


class CGCLayer(nn.Module):
    """One extraction level: per-task inputs and a shared input -> per-task outputs (and a shared one).

    task t:  gate_t(x_t) over [specific_t(x_t), shared(x_s)]              -> [B, H]
    shared:  gate_s(x_s) over [specific_1..T(x_1..T), shared(x_s)]        -> [B, H]   (if shared_gate)

    The shared gate feeds the next level's shared experts, so only PLE's inner levels have one.
    """

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        shared_experts: int,
        specific_experts: Mapping[str, int],
        expert: MLPConfig,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.shared_experts = Experts(input_dim, shared_experts, expert)
        self.specific_experts = nn.ModuleDict(
            {task: Experts(input_dim, specific_experts[task], expert) for task in self.task_names}
        )
        self.task_gates = nn.ModuleDict(
            {task: Gate(input_dim, specific_experts[task] + shared_experts) for task in self.task_names}
        )
        all_experts = sum(specific_experts[task] for task in self.task_names) + shared_experts
        self.shared_gate = Gate(input_dim, all_experts) if shared_gate else None
        self.output_dim = self.shared_experts.output_dim

    def forward(
        self, task_inputs: Mapping[str, Tensor], shared_input: Tensor
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        shared = self.shared_experts(shared_input)  # [B, In] -> [B, S, H]
        specific, task_outputs = {}, {}
        for task in self.task_names:
            x = task_inputs[task]  # [B, In]
            specific[task] = self.specific_experts[task](x)  # [B, In] -> [B, E_t, H]
            candidates = torch.cat([specific[task], shared], dim=1)  # -> [B, E_t + S, H]
            weights = self.task_gates[task](x)  # [B, In] -> [B, E_t + S]
            task_outputs[task] = mix_experts(weights, candidates)  # [B, E_t+S] x [B, E_t+S, H] -> [B, H]
        if self.shared_gate is None:
            return task_outputs, None
        every_expert = torch.cat([*specific.values(), shared], dim=1)  # -> [B, A, H], A = sum_t E_t + S
        weights = self.shared_gate(shared_input)  # [B, In] -> [B, A]
        shared_output = mix_experts(weights, every_expert)  # [B, A] x [B, A, H] -> [B, H]
        return task_outputs, shared_output


class CGC(nn.Module):
    """[B, In] -> {task: [B, H]}: one CGCLayer over the same input for every task (H = expert.hidden[-1])."""

    def __init__(self, input_dim: int, task_names: Sequence[str], config: CGCConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        counts = experts_per_task(config.specific_experts, self.task_names)
        self.layer = CGCLayer(
            input_dim, self.task_names, config.shared_experts, counts, config.expert, shared_gate=False
        )
        self.output_dims = {task: self.layer.output_dim for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        task_outputs, _ = self.layer({task: x for task in self.task_names}, x)  # {task: [B, H]}
        return task_outputs

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: every shared expert's last Linear (weights every task depends on)."""
        return last_linear_weights(self.layer.shared_experts)
