"""Per-task masked losses, normalised by the GLOBAL in-space count across ranks.

Every task's loss is binary cross-entropy on its entire-space prediction (TaskOutputs.log_p /
log_1mp, already exact in log space), summed over the rows of the task's sample space and divided by
the number of such rows on ALL ranks:

    loss_t = sum_{rank, i in space_t} bce_i / N_t,    N_t = sum over ranks of |space_t on that rank|

One all-reduce of a [T] count tensor per step gives every N_t. No rank divides by its own count and
no rank averages over the world: the DDP comm hook sums gradients (mtl_rec.distributed), so two ranks
on uneven slices of a batch give exactly the gradient of one rank on the whole batch, even when a
slice holds no row of some space. A task with N_t == 0 (no row anywhere) gets a loss of exactly 0
that is still connected to the graph, so DDP sees every parameter used and no NaN appears.

Example::

    >>> tasks = parse_tasks([{"name": "ctr", "label": "click"},
    ...                      {"name": "cvr", "label": "conversion", "space": "click == 1"}])
    >>> result = task_losses(model(batch), batch, tasks)   # batch.masks has "all" and "click == 1"
    >>> result.counts                                       # global in-space rows
    {'ctr': 4096.0, 'cvr': 171.0}
    >>> weighted_sum(result.losses, {t.name: t.weight for t in tasks}).backward()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_rec.batch import Batch
from mtl_rec.config.model import TaskConfig
from mtl_rec.config.spaces import space_key
from mtl_rec.distributed import all_reduce_sum, world_size
from mtl_rec.models.heads import TaskOutputs


@dataclass
class TaskLosses:
    """losses: {task: scalar} differentiable, sum over local in-space rows / global in-space count
    counts: {task: global in-space row count} (the same on every rank; 0.0 where the space is empty)
    """

    losses: dict[str, Tensor]
    counts: dict[str, float]


def row_bce(log_p: Tensor, log_1mp: Tensor, label: Tensor) -> Tensor:
    """Binary cross-entropy per row from log p and log(1 - p): [B], [B], [B] -> [B].

    -(y log p + (1 - y) log(1 - p)); exact for any finite logits since both logs come from log space.
    """
    return -(label * log_p + (1.0 - label) * log_1mp)  # [B]


def _mask_of(batch: Batch, task: TaskConfig) -> Tensor:
    key = space_key(task.space)
    if key not in batch.masks:
        raise KeyError(
            f"task {task.name!r}: the batch has no mask for sample space {key!r} "
            f"(it has {sorted(batch.masks)}); build the pipeline with metrics.required_spaces(...)"
        )
    return batch.masks[key]  # [B] bool


def task_losses(outputs: TaskOutputs, batch: Batch, tasks: Sequence[TaskConfig]) -> TaskLosses:
    """Per-task masked BCE over each task's sample space, divided by the global in-space count.

    outputs: the model's TaskOutputs ({task: [B]} log_p and log_1mp)
    batch:   labels {label: [B]} and masks {space key: [B] bool}
    tasks:   the task configs (name, label, space)

    Collective: one all_reduce of a [T] int64 tensor, so every rank must call this every step.
    """
    masks = {task.name: _mask_of(batch, task) for task in tasks}  # {task: [B] bool}
    local_counts = torch.stack([mask.sum() for mask in masks.values()])  # T x [] -> [T] int64
    global_counts = all_reduce_sum(local_counts).tolist()  # [T] -> T ints, identical on every rank

    losses: dict[str, Tensor] = {}
    counts: dict[str, float] = {}
    for task, global_count in zip(tasks, global_counts, strict=True):
        name = task.name
        label = batch.labels[task.label].to(outputs.log_p[name].dtype)  # [B]
        per_row = row_bce(outputs.log_p[name], outputs.log_1mp[name], label)  # [B]
        # where, not a multiply: a row outside the space contributes exactly 0 and no gradient.
        in_space = torch.where(masks[name], per_row, torch.zeros_like(per_row))  # [B]
        # count 0: in_space.sum() is exactly 0 and still in the graph; dividing by 1 keeps it so.
        losses[name] = in_space.sum() / max(global_count, 1)  # [B] -> []
        counts[name] = float(global_count)
    return TaskLosses(losses=losses, counts=counts)


@dataclass
class GroupLosses:
    """Each group's part of every task loss (mtl_rec.weighting.groups).

    losses: {task: [G]} differentiable: sum over group g's local in-space rows / the task's GLOBAL
            in-space count over all groups, so that summed over groups (and ranks) it is task_losses'
    counts: [G, T] float64 global in-space rows of each group and task (identical on every rank)
    """

    losses: dict[str, Tensor]
    counts: Tensor

    def task_losses(self) -> TaskLosses:
        """Summed over the groups: each task's loss and global in-space count, as task_losses gives."""
        counts = self.counts.sum(dim=0).tolist()  # [G, T] -> T floats
        return TaskLosses(
            losses={task: parts.sum() for task, parts in self.losses.items()},  # [G] -> []
            counts=dict(zip(self.losses, counts, strict=True)),
        )


def group_task_losses(
    outputs: TaskOutputs, batch: Batch, tasks: Sequence[TaskConfig], groups: Tensor, num_groups: int
) -> GroupLosses:
    """task_losses split by row group: groups [B] int in [0, num_groups) -> GroupLosses.

    Collective: one all_reduce of a [G, T] int64 tensor, so every rank must call this every step.
    """
    groups = groups.to(torch.int64)  # [B]
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= num_groups):
        raise ValueError(f"group ids must lie in [0, {num_groups}), got {groups.min()}..{groups.max()}")
    masks = {task.name: _mask_of(batch, task) for task in tasks}  # {task: [B] bool}
    local_counts = torch.stack(
        [torch.bincount(groups[mask], minlength=num_groups) for mask in masks.values()], dim=1
    )  # T x [G] -> [G, T] int64
    counts = all_reduce_sum(local_counts).to("cpu", torch.float64)  # [G, T], identical on every rank
    task_counts = counts.sum(dim=0).tolist()  # [G, T] -> T floats, N_t over all groups
    losses: dict[str, Tensor] = {}
    for task, global_count in zip(tasks, task_counts, strict=True):
        name = task.name
        label = batch.labels[task.label].to(outputs.log_p[name].dtype)  # [B]
        per_row = row_bce(outputs.log_p[name], outputs.log_1mp[name], label)  # [B]
        in_space = torch.where(masks[name], per_row, torch.zeros_like(per_row))  # [B], 0 outside the space
        sums = in_space.new_zeros(num_groups).index_add(0, groups, in_space)  # [B] -> [G], in the graph
        losses[name] = sums / max(global_count, 1)  # [G]
    return GroupLosses(losses=losses, counts=counts)


def auxiliary_losses(aux: Mapping[str, Tensor], spaces: Mapping[str, str], batch: Batch) -> dict[str, Tensor]:
    """The backbone's auxiliary terms (TaskOutputs.aux) -> {name: [] this rank's share}, same convention
    as the task losses: summed over ranks, each is the term of the global batch.

    aux:    {name: [B] per-row term, or [] parameter penalty}; coefficients already applied
    spaces: {name: sample-space key} for per-row terms (default "all"); rows outside it contribute 0
    batch:  its masks

    A per-row term is summed over its in-space rows and divided by the space's GLOBAL row count; a
    penalty is divided by the world size (every rank adds it, the gradients are summed, so the
    global objective holds it once). Collective when any per-row term exists: one all-reduce.
    """
    per_row = {name: term for name, term in aux.items() if term.dim() == 1}
    keys = {name: space_key(spaces.get(name, "all")) for name in per_row}
    for name, key in keys.items():
        if key not in batch.masks:
            raise KeyError(
                f"auxiliary loss {name!r}: the batch has no mask {key!r} (it has {sorted(batch.masks)})"
            )
    result: dict[str, Tensor] = {}
    if per_row:
        masks = [batch.masks[keys[name]] for name in per_row]  # n x [B] bool
        global_counts = all_reduce_sum(torch.stack([mask.sum() for mask in masks])).tolist()  # [n]
        for (name, term), mask, count in zip(per_row.items(), masks, global_counts, strict=True):
            result[name] = torch.where(mask, term, torch.zeros_like(term)).sum() / max(count, 1)  # [B] -> []
    for name, term in aux.items():
        if term.dim() == 0:
            result[name] = term / world_size()  # []
        elif term.dim() != 1:
            raise ValueError(f"auxiliary loss {name!r} must be [B] or [], got shape {tuple(term.shape)}")
    return result


def weighted_sum(losses: Mapping[str, Tensor], weights: Mapping[str, float | Tensor]) -> Tensor:
    """sum_t weights[t] * losses[t] -> scalar; every loss needs a weight (extra weights are ignored).

    A zero weight keeps the task in the graph (0 * loss), so DDP still sees its tower used.
    """
    missing = [name for name in losses if name not in weights]
    if missing:
        raise KeyError(f"no weight for tasks {missing}; weights given for {sorted(weights)}")
    if not losses:
        raise ValueError("weighted_sum needs at least one loss")
    terms = [weights[name] * loss for name, loss in losses.items()]  # T x []
    return torch.stack(terms).sum()  # [T] -> []
