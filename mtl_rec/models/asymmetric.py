"""Asymmetric sharing: a task reads other tasks' representations, detached, and never the reverse.

Hae Beom Lee, Eunho Yang, Sung Ju Hwang, "Deep Asymmetric Multi-task Feature Learning", ICML 2018:
knowledge should flow from reliable tasks (plenty of clean labels: CTR over every impression) to
unreliable ones (sparse labels: conversions over clicks), not back, so the noisy task cannot damage
the reliable task's features. Here the direction is declared in the config and enforced with a
stop-gradient: task B's features are [own column | detach(column of each task it reads)], so B
uses A's representation as it is, B's loss never reaches A's column, and A's loss never sees B's.

Every task owns a column (an MLP over the input). `reads` must be acyclic: two tasks reading each
other would be symmetric sharing.

Example::

    >>> config = AsymmetricConfig(column=MLPConfig(hidden=(32, 16)), reads={"cvr": ("ctr",)})
    >>> backbone = Asymmetric(24, ["ctr", "cvr"], config)
    >>> backbone.output_dims
    {'ctr': 16, 'cvr': 32}
    >>> out = backbone(torch.randn(8, 24))
    >>> torch.equal(out["cvr"][:, 16:], out["ctr"])   # cvr carries ctr's representation, detached
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import MLP


@dataclass(frozen=True)
class AsymmetricConfig:
    """column: each task's own MLP over the input
    reads:  {task: tasks whose column output it reads (detached)}; empty: every task after the first
            reads the first (in the presets the first is CTR, the task with the most labels)"""

    column: MLPConfig = MLPConfig(hidden=(256, 128))
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)


def resolve_reads(
    reads: Mapping[str, Sequence[str]], task_names: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    """{task: tasks it reads} for every task (empty tuples included), checked: known names, no cycle."""
    if not reads:
        return {task: (task_names[0],) if i else () for i, task in enumerate(task_names)}
    unknown = sorted({t for reader, sources in reads.items() for t in (reader, *sources)} - set(task_names))
    if unknown:
        raise ConfigError(f"asymmetric reads names unknown tasks {unknown}; tasks: {', '.join(task_names)}")
    resolved = {task: tuple(dict.fromkeys(reads.get(task, ()))) for task in task_names}
    done: set[str] = set()

    def visit(task: str, path: tuple[str, ...]) -> None:
        if task in path:
            cycle = " -> ".join((*path[path.index(task) :], task))
            raise ConfigError(f"asymmetric reads form a cycle ({cycle}): sharing must go one way")
        if task not in done:
            for source in resolved[task]:
                visit(source, (*path, task))
            done.add(task)

    for task in task_names:
        visit(task, ())
    return resolved


class Asymmetric(nn.Module):
    """[B, In] -> {task: [B, H * (1 + len(reads[task]))]}: own column ++ the detached columns it reads.

    H = column.hidden[-1] (the input width when column.hidden is empty).
    """

    def __init__(self, input_dim: int, task_names: Sequence[str], config: AsymmetricConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.reads = resolve_reads(config.reads, self.task_names)
        self.columns = nn.ModuleDict({task: MLP(input_dim, config.column) for task in self.task_names})
        width = self.columns[self.task_names[0]].output_dim
        self.output_dims = {task: width * (1 + len(self.reads[task])) for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        own = {task: self.columns[task](x) for task in self.task_names}  # {task: [B, In] -> [B, H]}
        return {
            # [B, H] ++ k x [B, H] -> [B, H (1 + k)]; detach: the reader's loss stops at the source's output
            task: torch.cat([own[task], *(own[source].detach() for source in self.reads[task])], dim=1)
            for task in self.task_names
        }
