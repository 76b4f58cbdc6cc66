"""One training step: `TrainPipeline.progress(batches)`, the shape of TorchRec's TrainPipelineBase.

    next(batches) -> to(device) -> model(batch) -> per-task losses on their sample spaces, divided
    by the global in-space counts (mtl_rec.losses) -> weighting.combine (identical weights on every
    rank) -> + the backbone's auxiliary losses, unweighted -> zero_grad -> one backward (the fused
    table optimizer runs inside it) -> weighting.after_backward (gradient surgery on the shared
    parameters) -> weighting.sync_gradients (learnable loss weights live outside DDP) -> optimizer step

The training worker (jobs.worker.train), the weighting benchmark and the tests all train through
this one class, so none of them can drift from what a run does.

`progress` pulls exactly one item per step, at the start of the step: an iterator may therefore set
the step's learning rates as it yields (the fused table optimizer reads them inside backward).
Items are Batches or StepBatches (a Batch and what lockstep knows of it: whether it is a padding
batch, and the step's rows on all ranks).

Example::

    >>> pipeline = TrainPipeline(sharded.model, sharded.module, sharded, weighting, cfg.tasks)
    >>> result = pipeline.progress(iter(batches))      # StopIteration once `batches` is exhausted
    >>> result.step, result.weights, float(result.total)
    (0, {'ctr': 1.0, 'cvr': 1.0}, 0.71)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor

from mtl_rec.batch import Batch
from mtl_rec.config.model import TaskConfig
from mtl_rec.losses import TaskLosses, auxiliary_losses, group_task_losses, task_losses
from mtl_rec.models.heads import TaskOutputs
from mtl_rec.weighting.base import Weighting
from mtl_rec.weighting.groups import GroupedWeighting


class Optimizer(Protocol):
    """A torch optimizer, or mtl_rec.sharding.ShardedModel (dense and data-parallel table optimizers)."""

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...


@dataclass(frozen=True)
class StepBatch:
    """A batch and what lockstep knows of it.

    real:        False for a padding batch (1 row in no sample space: zero loss, zero gradient)
    global_rows: the step's real rows on all ranks (0: not known, e.g. outside a Ray Train worker)
    """

    batch: Batch
    real: bool = True
    global_rows: int = 0


@dataclass
class StepResult:
    """What one step did. Tensors are this rank's; `losses.counts` and `weights` are global."""

    step: int  # the index of the step trained (0 for a run's first)
    batch: Batch  # on the model's device
    real: bool
    global_rows: int
    outputs: TaskOutputs
    losses: TaskLosses  # {task: [] differentiable}, normalised by the global in-space counts
    aux: dict[str, Tensor]  # {name: []} auxiliary losses, added unweighted
    total: Tensor  # [] what was backpropagated
    weights: dict[str, float]  # the weight each task's shared gradient got (surgery) or its loss got
    cosines: dict[str, float]  # gradient methods: {"a|b": cosine of the global task gradients}; else {}
    group_weights: dict[str, dict[str, float]] | None = None  # weighting.groups: {group: {task: weight}}


class TrainPipeline:
    """Trains `model` one batch per `progress` call.

    model:     what maps a Batch to TaskOutputs: DMP(MultiTaskModel), or the MultiTaskModel itself
    module:    the MultiTaskModel inside (its backbone for gradient methods, its auxiliary spaces)
    optimizer: zero_grad() / step() of everything outside the fused tables
    weighting: mtl_rec.weighting.build_weighting(...); a gradient method is attached to the
               backbone's parameters here
    step:      the index of the next step (a resumed run's position), the weighting's step argument

    `table_regulariser`, when set (train.table_l2, mtl_rec.table_l2), maps the pooled
    embeddings and the batch's KJT to a per-row term added as the auxiliary loss "table_l2".
    """

    def __init__(
        self,
        model: nn.Module,
        module: nn.Module,
        optimizer: Optimizer,
        weighting: Weighting,
        tasks: Sequence[TaskConfig],
        device: torch.device | str = "cpu",
        step: int = 0,
    ) -> None:
        self.model, self.module, self.optimizer = model, module, optimizer
        self.weighting, self.tasks = weighting, tuple(tasks)
        self.device = torch.device(device)
        self.step = step
        self.table_regulariser: Callable[[Tensor, KeyedJaggedTensor], Tensor] | None = None
        self.aux_spaces = module.auxiliary_spaces()
        if weighting.requires_shared:  # gradient methods measure the per-task gradients on the backbone
            weighting.attach_shared(weighting.shared_parameters(module.backbone), bool(self.aux_spaces))

    def progress(self, batches: Iterator[Batch | StepBatch]) -> StepResult:
        """Train one step on next(batches); raises StopIteration when there is none."""
        item = next(batches)
        item = item if isinstance(item, StepBatch) else StepBatch(item, True, item.batch_size)
        batch = item.batch.to(self.device, non_blocking=True)  # a no-op for a batch already there
        outputs = self.model(batch)
        if isinstance(self.weighting, GroupedWeighting):  # one weight vector per row group
            group_ids, num_groups = self._group_ids(batch), self.weighting.num_groups  # [B], G
            groups = group_task_losses(outputs, batch, self.tasks, group_ids, num_groups)
            losses = groups.task_losses()  # the groups' parts summed: no second BCE pass or all-reduce
            total, weights = self.weighting.combine_groups(groups, self.step)
        else:
            losses = task_losses(outputs, batch, self.tasks)
            total, weights = self.weighting.combine(losses.losses, self.step)  # identical on every rank
        if self.table_regulariser is not None:
            outputs.aux["table_l2"] = self.table_regulariser(outputs.pooled, batch.sparse)  # [B]
        aux = auxiliary_losses(outputs.aux, self.aux_spaces, batch)  # regularisers, added unweighted
        if aux:
            total = total + torch.stack(list(aux.values())).sum()  # A x [] -> []
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()  # the fused table optimizer runs in here
        # surgery methods replace the (summed) shared gradients; their weights are those they got
        weights = self.weighting.after_backward() or weights
        self.weighting.sync_gradients()
        self.optimizer.step()
        cosines = dict(self.weighting.last_cosines)
        grouped = self.weighting.group_weights() if isinstance(self.weighting, GroupedWeighting) else None
        result = StepResult(
            self.step,
            batch,
            item.real,
            item.global_rows,
            outputs,
            losses,
            aux,
            total,
            weights,
            cosines,
            grouped,
        )
        self.step += 1
        return result

    def _group_ids(self, batch: Batch) -> Tensor:
        column = self.weighting.column
        if column not in batch.meta:
            raise KeyError(
                f"weighting.groups.column {column!r} is not in the batch (meta: {sorted(batch.meta)}); it "
                "must be the feature spec's domain_column"
            )
        return batch.meta[column]  # [B]
