"""Cross-Stitch networks: one MLP column per task, mixed after every layer by a learnable T x T matrix.

Ishan Misra, Abhinav Shrivastava, Abhinav Gupta, Martial Hebert, "Cross-stitch Networks for Multi-task
Learning", CVPR 2016.

Every task owns a column of layers; after layer l the columns' activations are recombined by the
stitch matrix alpha^l (T x T): column t continues with sum_s alpha^l[t, s] * h_s. The network learns
how much to share at each depth, from fully separate (alpha = I) to fully shared (equal rows). Rows are
initialised to (alpha_self, (1 - alpha_self) / (T - 1), ...): the paper's (0.9, 0.1) for two tasks,
mostly task-specific at first.

Example::

    >>> config = CrossStitchConfig(column=MLPConfig(hidden=(32, 16)))
    >>> backbone = CrossStitch(24, ["ctr", "cvr"], config)
    >>> {task: tuple(h.shape) for task, h in backbone(torch.randn(8, 24)).items()}
    {'ctr': (8, 16), 'cvr': (8, 16)}
    >>> backbone.stitches[0]
    Parameter containing:
    tensor([[0.9000, 0.1000],
            [0.1000, 0.9000]], requires_grad=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import MLP


@dataclass(frozen=True)
class CrossStitchConfig:
    """column:      each task's column (its activation, dropout and batch norm apply to every layer); a
                    stitch unit follows every hidden layer
    stitch_self_init: the diagonal of every stitch matrix at initialisation; the rest of each row
                    shares 1 - stitch_self_init evenly, so rows start summing to one"""

    column: MLPConfig = MLPConfig(hidden=(256, 128))
    stitch_self_init: float = 0.9

    def __post_init__(self) -> None:
        if not self.column.hidden:
            raise ConfigError("cross_stitch needs at least one column layer (column.hidden is empty)")
        if not 0.0 <= self.stitch_self_init <= 1.0:
            raise ConfigError(f"stitch_self_init must be in [0, 1], got {self.stitch_self_init}")


def stitch_init(num_tasks: int, self_weight: float) -> Tensor:
    """[T, T]: self_weight on the diagonal, (1 - self_weight) / (T - 1) elsewhere; [[1]] for one task."""
    if num_tasks == 1:
        return torch.ones(1, 1)
    other = (1.0 - self_weight) / (num_tasks - 1)
    return torch.full((num_tasks, num_tasks), other) + (self_weight - other) * torch.eye(num_tasks)  # [T, T]


class CrossStitch(nn.Module):
    """[B, In] -> {task: [B, H]}: T columns of len(column.hidden) layers (H = column.hidden[-1]).

    layers[l][task] is task's layer l; stitches[l] is the [T, T] matrix after it, rows and columns in
    task order: output column t of the stitch reads input column s with weight stitches[l][t, s].
    """

    def __init__(self, input_dim: int, task_names: Sequence[str], config: CrossStitchConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        layers, stitches, width = [], [], input_dim
        for hidden in config.column.hidden:
            one_layer = replace(config.column, hidden=(hidden,))  # same activation / dropout / batch norm
            layers.append(nn.ModuleDict({task: MLP(width, one_layer) for task in self.task_names}))
            stitches.append(nn.Parameter(stitch_init(len(self.task_names), config.stitch_self_init)))
            width = hidden
        self.layers = nn.ModuleList(layers)
        self.stitches = nn.ParameterList(stitches)
        self.output_dims = {task: width for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        columns = [x] * len(self.task_names)  # T x [B, In]: every column starts from the input
        for layer, stitch in zip(self.layers, self.stitches):
            hidden = torch.stack(
                [layer[task](column) for task, column in zip(self.task_names, columns)], dim=1
            )  # T x ([B, W] -> [B, H]) -> [B, T, H]
            mixed = torch.einsum("ts,bsh->bth", stitch, hidden)  # [T, T] x [B, T, H] -> [B, T, H]
            columns = list(mixed.unbind(dim=1))  # [B, T, H] -> T x [B, H]
        return dict(zip(self.task_names, columns))  # {task: [B, H]}
