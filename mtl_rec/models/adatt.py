"""AdaTT: Adaptive Task-to-Task Fusion, task-specific expert units fused per task by a gate, plus a
residual from the task's own units.

Danwei Li, Zhengyu Zhang, Siyang Yuan, Mingze Gao, Weilin Zhang, Chaofei Yang, Xi Liu, Jiyan Yang,
"AdaTT: Adaptive Task-to-Task Fusion Network for Multitask Learning in Recommendations", KDD 2023
(section 3; Meta's public implementation also has MMoE, PLE and Cross-Stitch).

Per level, every task t has m_t expert units and, optionally, S shared units. Task t's fusion unit
reads all N = sum_t m_t + S unit outputs and adds a residual of its own units:

    V      = [E_1(x_1), ..., E_T(x_T), S(x_s)]                    [B, N, H]
    g_t    = softmax(W_t x_t)                                      [B, N]      (gate, all units)
    y_t    = g_t . V  +  sum_j w_tj E_tj(x_t)                      [B, H]      (w_t: learned, m_t > 1;
                                                                                 m_t = 1: the unit itself)

so each task learns how much to borrow from the others (the gate) while its own units always reach
it (the residual): AdaTT-sp has S = 0; with S > 0, as in PLE, inner levels also fuse a shared output
(a gate over all units, no residual) that feeds the next level's shared units. Level 1 reads the
input everywhere; level k reads y_t of level k-1 for task t's units and gate.

Example::

    >>> config = AdaTTConfig(num_levels=2, task_experts={"ctr": 2, "cvr": 1}, shared_experts=1,
    ...                      expert=MLPConfig(hidden=(16,)))
    >>> backbone = AdaTT(32, ["ctr", "cvr"], config)
    >>> {task: tuple(h.shape) for task, h in backbone(torch.randn(8, 32)).items()}
    {'ctr': (8, 16), 'cvr': (8, 16)}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.cgc import experts_per_task
from mtl_rec.models.layers import Experts, Gate, last_linear_weights, mix_experts


@dataclass(frozen=True)
class AdaTTConfig:
    """num_levels: stacked fusion levels; task_experts: each task's own units (one int, or {task:
    count}); shared_experts: S shared units per level (0: AdaTT-sp); expert: the MLP of every unit;
    residual: add the task's own units' linear combination (the paper's default; off: gate only)."""

    num_levels: int = 2
    task_experts: int | dict[str, int] = 2
    shared_experts: int = 1
    expert: MLPConfig = MLPConfig(hidden=(256, 128))
    residual: bool = True

    def __post_init__(self) -> None:
        if self.num_levels < 1:
            raise ConfigError(f"num_levels must be >= 1, got {self.num_levels}")
        if self.shared_experts < 0:
            raise ConfigError(f"shared_experts must be >= 0, got {self.shared_experts}")


class AdaTTLevel(nn.Module):
    """One fusion level: {task: [B, In]} and a shared [B, In] -> {task: [B, H]} and a shared [B, H]
    (the latter only where `shared_gate`, i.e. below the top level with shared units)."""

    def __init__(
        self,
        input_dim: int,
        task_names: Sequence[str],
        task_experts: Mapping[str, int],
        shared_experts: int,
        expert: MLPConfig,
        residual: bool,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.task_units = nn.ModuleDict(
            {t: Experts(input_dim, task_experts[t], expert) for t in self.task_names}
        )
        self.shared_units = Experts(input_dim, shared_experts, expert) if shared_experts else None
        units = sum(task_experts.values()) + shared_experts  # N
        self.gates = nn.ModuleDict({t: Gate(input_dim, units) for t in self.task_names})
        self.shared_gate = Gate(input_dim, units) if shared_gate and shared_experts else None
        # The residual's weights over a task's own units, uniform in +-sqrt(1 / m_t) as in the
        # paper's code; a task with one unit adds that unit itself (no weight to learn).
        self.residual_weights = nn.ParameterDict(
            {
                t: nn.Parameter(torch.empty(task_experts[t]).uniform_(-1, 1) / math.sqrt(task_experts[t]))
                for t in self.task_names
                if residual and task_experts[t] > 1
            }
        )
        self.residual = residual
        self.output_dim = self.task_units[self.task_names[0]].output_dim

    def own_units(self, task: str, units: Tensor) -> Tensor:
        """The residual of task `task` from its own units' outputs [B, m_t, H] -> [B, H]."""
        if task in self.residual_weights:
            return torch.einsum("m,bmh->bh", self.residual_weights[task], units)  # [m] x [B, m, H] -> [B, H]
        return units[:, 0]  # [B, 1, H] -> [B, H]

    def forward(self, task_inputs: Mapping[str, Tensor], shared_input: Tensor) -> tuple[dict, Tensor | None]:
        own = {t: self.task_units[t](task_inputs[t]) for t in self.task_names}  # {t: [B, In] -> [B, m_t, H]}
        every_unit = list(own.values())
        if self.shared_units is not None:
            every_unit.append(self.shared_units(shared_input))  # [B, In] -> [B, S, H]
        units = torch.cat(every_unit, dim=1)  # -> [B, N, H]
        outputs = {}
        for t in self.task_names:
            fused = mix_experts(self.gates[t](task_inputs[t]), units)  # [B, N] x [B, N, H] -> [B, H]
            outputs[t] = fused + self.own_units(t, own[t]) if self.residual else fused  # + [B, H]
        if self.shared_gate is None:
            return outputs, None
        return outputs, mix_experts(self.shared_gate(shared_input), units)  # [B, N] x [B, N, H] -> [B, H]


class AdaTT(nn.Module):
    """[B, In] -> {task: [B, H]} through num_levels fusion levels (H = expert.hidden[-1])."""

    def __init__(self, input_dim: int, task_names: Sequence[str], config: AdaTTConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        counts = experts_per_task(config.task_experts, self.task_names)
        levels, width = [], input_dim
        for level in range(config.num_levels):
            is_top = level == config.num_levels - 1
            levels.append(
                AdaTTLevel(
                    width,
                    self.task_names,
                    counts,
                    config.shared_experts,
                    config.expert,
                    config.residual,
                    shared_gate=not is_top,
                )
            )
            width = levels[-1].output_dim
        self.levels = nn.ModuleList(levels)
        self.output_dims = {task: width for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        task_inputs, shared = {task: x for task in self.task_names}, x  # level 1: [B, In] everywhere
        for level in self.levels:
            task_inputs, shared = level(task_inputs, shared)  # {task: [B, H]}, [B, H] or None
        return task_inputs

    def last_shared_layer(self) -> list[nn.Parameter]:
        """GradNorm's W: the top level's units, every one of which every task's gate reads."""
        return last_linear_weights(self.levels[-1])
