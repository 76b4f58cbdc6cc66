"""Task towers and entire-space (ESMM) composition: backbone features -> per-task log probabilities.

Every task gets a tower: an MLP, then a Linear to one logit. A root task's logit is its probability
on its own sample space. A chained task (TaskConfig.parent) models p(label | parent positive), and its
entire-space probability is the product along the chain, in log space:

    log p(task)     = log p(parent) + logsigmoid(logit)                            (ESMM)
    log (1 - p)     = log1p(-p)                                              if p <= 1/2
                    = log[(1 - p(parent)) + p(parent) * (1 - p(task | parent))]   if p > 1/2

The two forms of log(1 - p) are each exact where they are used (no epsilon, no clamping): finite
values and gradients for any finite logits; tested against 60-digit references at logits of +-30.

Xiao Ma, Liqin Zhao, Guan Huang, Zhi Wang, Zelin Hu, Xiaoqiang Zhu, Kun Gai, "Entire Space Multi-Task
Model: An Effective Approach for Estimating Post-Click Conversion Rate", SIGIR 2018.

The loss of every task, root or chained, is then the same: -(y * log_p + (1 - y) * log_1mp).

Example::

    >>> tasks = parse_tasks([{"name": "ctr", "label": "click"},
    ...                      {"name": "ctcvr", "label": "conversion", "parent": "ctr"}])
    >>> heads = TaskHeads({"ctr": 16, "ctcvr": 16}, tasks)
    >>> out = heads({"ctr": torch.randn(8, 16), "ctcvr": torch.randn(8, 16)})
    >>> out.logit["ctcvr"].shape, bool((out.log_p["ctcvr"] <= out.log_p["ctr"]).all())
    (torch.Size([8]), True)
    >>> loss = -(labels * out.log_p["ctcvr"] + (1 - labels) * out.log_1mp["ctcvr"]).mean()
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_rec.config.model import MLPConfig, TaskConfig, task_order, validate_tasks
from mtl_rec.models.layers import MLP


@dataclass
class TaskOutputs:
    """What the model returns: per task name, [B] float tensors.

    logit:   the task's own tower logit; for a chained task the conditional p(label | parent positive)
             (ESMM's CVR logit: evaluate it on the parent's positive rows)
    log_p:   log p(label = 1) over the task's space; for a chained task over the entire space (CTCVR)
    log_1mp: log(1 - p) for the same p, computed without cancellation
    aux:     the backbone's auxiliary loss terms (regularisers such as SNR's L0 penalty, AITM's
             calibrator, ESCM2's counterfactual risks): {name: [B] per-row term or [] penalty},
             coefficient already applied; mtl_rec.losses.auxiliary_losses normalises them globally
    pooled:  the pooled embeddings the backbone read, [B, sum_k D_k] in spec feature order (set by
             MultiTaskModel.forward; regularisers of the table rows, mtl_rec.table_l2, read it)
    """

    logit: dict[str, Tensor]
    log_p: dict[str, Tensor]
    log_1mp: dict[str, Tensor]
    aux: dict[str, Tensor] = field(default_factory=dict)
    pooled: Tensor | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.logit)

    def prob(self, task: str) -> Tensor:
        """p(label = 1) over the task's space (entire space for a chained task): [B]."""
        return self.log_p[task].exp()

    def conditional_prob(self, task: str) -> Tensor:
        """sigmoid(logit): for a chained task p(label | parent positive), otherwise equal to prob(): [B]."""
        return torch.sigmoid(self.logit[task])


# A pytree node, so DDP (find_unused_parameters / static_graph) and torch.compile see the tensors inside.
torch.export.register_dataclass(TaskOutputs)

LN2 = math.log(2.0)


def log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a <= 0, accurate over the whole range: [*] -> [*].

    Maechler, "Accurately Computing log(1 - exp(-|a|))", 2012: log(-expm1(a)) near 0, log1p(-exp(a))
    further out. Each branch is evaluated only on inputs where it is accurate (the other gets -ln 2), so
    the branch torch.where discards cannot put inf or NaN into the gradient. a == 0 (p == 1) gives
    -inf: log(1 - p) really is -inf there. For chained tasks TaskHeads avoids even that (_log_1m_chain).
    """
    near_zero = a > -LN2  # [*] bool
    a_near = torch.where(near_zero, a, torch.full_like(a, -LN2))  # [*]
    a_far = torch.where(near_zero, torch.full_like(a, -LN2), a)  # [*]
    return torch.where(near_zero, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))  # [*]


def _log_1m_chain(log_p: Tensor, log_1mp_parent: Tensor, log_p_parent_and_not_task: Tensor) -> Tensor:
    """log(1 - p) of a chained task, p = p_parent q; all arguments and the result are [B].

    log1mexp's two regimes, with its near-zero branch replaced by an exact sum:
      p > 1/2:  1 - p = (1 - p_parent) + p_parent (1 - q), two non-negative terms, so log(1 - p) is a
                logaddexp of finite numbers: no cancellation, and no log(0) even where p rounds to 1
                (log1mexp(log_p) would need an epsilon there).
      p <= 1/2: log1p(-p), accurate when p is tiny, where the sum above would cancel to 1 - tiny.
    """
    near_one = log_p > -LN2  # [B] bool
    as_sum = torch.logaddexp(log_1mp_parent, log_p_parent_and_not_task)  # [B], [B] -> [B]
    safe_log_p = torch.where(near_one, torch.full_like(log_p, -LN2), log_p)  # [B]: keeps log1p's input <= 1/2
    return torch.where(near_one, as_sum, torch.log1p(-torch.exp(safe_log_p)))  # [B]


def entire_space(logits: Mapping[str, Tensor], parent_of: Mapping[str, str | None]) -> tuple[dict, dict]:
    """Per-task logits [B] -> (log_p, log_1mp), each {task: [B]}, composing chains along `parent_of`.

    `parent_of` maps every task to its parent (None for a root) with parents listed before children
    (config.model.task_order).
    """
    log_p: dict[str, Tensor] = {}
    log_1mp: dict[str, Tensor] = {}
    for task, parent in parent_of.items():
        own_log_p = F.logsigmoid(logits[task])  # [B]: log p(label | parent positive), or log p for a root
        own_log_1mp = F.logsigmoid(-logits[task])  # [B]: log(1 - sigmoid(l)) exactly, no subtraction
        if parent is None:
            log_p[task], log_1mp[task] = own_log_p, own_log_1mp
            continue
        log_p[task] = log_p[parent] + own_log_p  # [B] + [B] -> [B]: log p(parent) p(task | parent)
        log_1mp[task] = _log_1m_chain(log_p[task], log_1mp[parent], log_p[parent] + own_log_1mp)  # [B]
    return log_p, log_1mp


class Tower(nn.Module):
    """One task's tower: [B, H_task] -> MLP -> Linear -> [B] logit."""

    def __init__(self, in_dim: int, config: MLPConfig) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, config)
        self.logit = nn.Linear(self.mlp.output_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logit(self.mlp(x)).squeeze(-1)  # [B, H_task] -> [B, H_tower] -> [B, 1] -> [B]


class TaskHeads(nn.Module):
    """{task: [B, H_task]} backbone features -> TaskOutputs (one tower per task, chains composed).

    backbone_dims: {task: H_task}, the backbone's output_dims
    tasks:         the task configs (validated: unique names, parents exist, no cycles)
    """

    def __init__(self, backbone_dims: Mapping[str, int], tasks: Sequence[TaskConfig]) -> None:
        super().__init__()
        tasks = validate_tasks(tasks)
        self.task_names = tuple(task.name for task in tasks)
        missing = [name for name in self.task_names if name not in backbone_dims]
        if missing:
            raise ValueError(f"backbone has no output for tasks {missing}; it has {list(backbone_dims)}")
        self.towers = nn.ModuleDict(
            {task.name: Tower(backbone_dims[task.name], task.tower) for task in tasks}
        )
        parents = {task.name: task.parent for task in tasks}
        self.parent_of = {name: parents[name] for name in task_order(tasks)}  # parents first
        # [T, 2]: each task's logit -> scale * logit + shift, fitted after training on held-out rows
        # (mtl_rec.calibration); the identity (1, 0) until then, which leaves every logit exactly as is
        identity = torch.tensor([[1.0, 0.0]] * len(self.task_names))  # [T, 2]
        self.register_buffer("calibration", identity)

    def calibrate(self, fits: Mapping[str, tuple[float, float]]) -> None:
        """Compose each named task's current calibration with logit -> scale * logit + shift."""
        for task, (scale, shift) in fits.items():
            row = self.task_names.index(task)
            old_scale, old_shift = self.calibration[row].tolist()
            self.calibration[row, 0] = scale * old_scale
            self.calibration[row, 1] = scale * old_shift + shift

    def forward(self, features: Mapping[str, Tensor]) -> TaskOutputs:
        scale, shift = self.calibration.unbind(1)  # [T, 2] -> [T], [T]
        logits = {  # {task: [B]}: tower logit [B] * [] + []
            task: self.towers[task](features[task]) * scale[t] + shift[t]
            for t, task in enumerate(self.task_names)
        }
        log_p, log_1mp = entire_space(logits, self.parent_of)  # {task: [B]} each
        return TaskOutputs(
            logit=logits,
            log_p={task: log_p[task] for task in self.task_names},  # back to config order
            log_1mp={task: log_1mp[task] for task in self.task_names},
        )
