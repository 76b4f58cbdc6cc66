"""Task weights per row group: one weight vector per value of the group column, not one for all rows.

Yichao Xie et al., "Personalized Approximate Pareto-Efficient Recommendation", WWW 2021: users weigh
the objectives differently (click versus watch-through), so one weight vector for the whole
population is a compromise; one per user group (new users: guide clicks; returning users: guide
purchases; one per industry) is the practical form they suggest.

Each row's loss gets its group's weights. With S_gt = the sum of the BCE over group g's rows in
task t's sample space divided by the task's GLOBAL in-space count over all groups
(mtl_rec.losses.group_task_losses), so that sum_g S_gt is ungrouped training's loss L_t:

    total = sum_g total_g,      total_g, w_g = method_g.combine({t: S_gt}, step)

One instance of the configured method per group, fed its group's part of every task loss, with its
own state (DWA's history, uncertainty's log-variances, GradNorm's weights). With the same weights in
every group the objective is exactly ungrouped training's, sum_t w_t L_t. A method that normalises
by the loss (uncertainty, initial or real-time loss) therefore balances (group, task) cells as it
balances tasks: S_gt carries the group's share of the task's rows.

Gradient methods measure each group's task gradients G_gt = dS_gt / d shared (K autograd passes per
present group) and each group's `after_backward` adds its change sum_t (w_gt - c_t) G_gt to the
shared gradient, which becomes sum_g sum_t w_gt G_gt. None of them derives a task gradient from the
summed backward (the K - 1 trick): that gradient holds every group's.

A group with no row on any rank this step (global counts: the same decision on every rank) is not
shown to its method: its weights stay the last ones it had (`weights`, a [G, K] buffer, so a resumed
run keeps them), and its losses, exactly 0, still enter the total (in the graph: DDP sees every
parameter used). Every rank holds the same [G, K] weights each step.

Example::

    >>> weighting = build_weighting(WeightingConfig("dwa", groups=WeightGroupsConfig("segment")), tasks,
    ...                             num_groups=2)
    >>> groups = group_task_losses(outputs, batch, tasks, batch.meta["segment"], 2)
    >>> total, weights = weighting.combine_groups(groups, step)   # weights: each task's mean row weight
    >>> weighting.weights                                         # [G, K] float64
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from mtl_rec.config.model import TaskConfig
from mtl_rec.losses import GroupLosses
from mtl_rec.weighting.base import Weighting


class GroupedWeighting(Weighting):
    """`num_groups` instances of one method, each weighting its group's part of the task losses.

    column:  the Batch.meta column holding each row's group id, in [0, num_groups)
    weights: [G, K] float64 buffer, the weight each group's rows of each task got at its last step
    """

    def __init__(
        self, tasks: Sequence[TaskConfig], make_method: Callable[[], Weighting], num_groups: int, column: str
    ) -> None:
        super().__init__(tasks)
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.column, self.num_groups = column, num_groups
        self.methods = nn.ModuleList([make_method() for _ in range(num_groups)])
        self.requires_shared = self.methods[0].requires_shared
        self.register_buffer("weights", self.static_weights.repeat(num_groups, 1))  # [K] -> [G, K]
        self.shares = torch.zeros(num_groups, len(self.task_names), dtype=torch.float64)  # [G, T] this step

    def shared_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        return self.methods[0].shared_parameters(backbone)

    def attach_shared(self, parameters: Iterable[nn.Parameter], auxiliary: bool = False) -> None:
        parameters = list(parameters)
        for method in self.methods:  # auxiliary: the backward holds other groups' gradients as well
            method.attach_shared(parameters, auxiliary=True)

    def combine(self, losses: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        raise TypeError("GroupedWeighting weighs each group's losses: call combine_groups")

    def combine_groups(self, losses: GroupLosses, step: int) -> tuple[Tensor, dict[str, float]]:
        """Each present group's method on {task: S_gt} -> (total [], {task: mean weight of its rows})."""
        self.check_losses(losses.losses)
        present = (losses.counts.sum(dim=1) > 0).tolist()  # [G, T] -> G bools, identical on every rank
        totals = []
        for group, method in enumerate(self.methods):
            group_losses = {task: losses.losses[task][group] for task in self.task_names}  # {task: []}
            if present[group]:
                total, weights = method.combine(group_losses, step)
                self._set_weights(group, weights)
            else:  # absent everywhere: keep its weights; its zero losses stay in the graph
                total = self.weighted_total(group_losses, self.weights[group].tolist())
            totals.append(total)
        # each group's share of each task's rows: the effective weight of a task is its rows' mean weight
        self.shares = losses.counts / losses.counts.sum(dim=0).clamp(min=1)  # [G, T]
        self.last_cosines = self._cosines()
        return torch.stack(totals).sum(), self.mean_weights()  # G x [] -> []

    def after_backward(self) -> dict[str, float] | None:
        """Each present group's surgery on the shared gradients (additive, see module doc)."""
        changed = False
        for group, method in enumerate(self.methods):
            weights = method.after_backward()
            if weights is not None:
                self._set_weights(group, weights)
                changed = True
        if changed:
            self.last_cosines = self._cosines()
        return self.mean_weights() if changed else None

    def mean_weights(self) -> dict[str, float]:
        """{task: sum_g share_gt w_gt}: the mean weight of the step's rows of each task (a task with no
        row this step: the groups' plain mean)."""
        shares = torch.where(self.shares.sum(dim=0) > 0, self.shares, 1.0 / self.num_groups)  # [G, T]
        return dict(zip(self.task_names, (shares * self.weights).sum(dim=0).tolist(), strict=True))  # [T]

    def group_weights(self) -> dict[str, dict[str, float]]:
        """{group id: {task: weight}} of the last step, for metrics.json."""
        rows = self.weights.tolist()  # [G, K]
        return {str(g): dict(zip(self.task_names, row, strict=True)) for g, row in enumerate(rows)}

    def _set_weights(self, group: int, weights: Mapping[str, float]) -> None:
        self.weights[group] = torch.tensor([weights[t] for t in self.task_names], dtype=torch.float64)  # [K]

    def _cosines(self) -> dict[str, float]:
        """{"<group>:<a>|<b>": cosine of the group's global task gradients} (gradient methods)."""
        per_group = [method.last_cosines for method in self.methods]
        return {f"{g}:{pair}": c for g, cosines in enumerate(per_group) for pair, c in cosines.items()}

    def extra_repr(self) -> str:
        return f"column={self.column!r}, num_groups={self.num_groups}, tasks={list(self.task_names)}"
