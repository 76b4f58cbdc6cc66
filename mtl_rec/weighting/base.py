"""The contract every task-weighting method follows, and the base of the loss-based methods.

A weighting method turns the per-task losses of one step into the one scalar that is backpropagated:

    total, weights = weighting.combine(losses, step)     # losses: {task: [] tensor}, step: int
    total.backward()                                      # model and learnable weighting parameters
    weighting.sync_gradients()                            # SUM the weighting parameters' grads over ranks

Rank consistency. Each rank's `losses[k]` is its share of the task loss (in-space SUM over the GLOBAL
in-space count, mtl_rec.losses), so the global task loss is L_k = sum over ranks of L_k^r, and the
dense gradients are SUMMED over ranks (mtl_rec.distributed.sum_gradients_hook). A method that wants
to optimise F(L_1, ..., L_K) of the GLOBAL losses therefore backpropagates, on every rank,

    total^r = sum_k m_k * L_k^r,    m_k = c_k * dF/dL_k evaluated at the all-reduced L_k (detached)

and the summed gradient is exactly dF/dtheta = sum_k m_k sum_r dL_k^r/dtheta. The m_k are what
`combine` reports as weights: computed only from all-reduced values and the method's own
deterministic state, so every rank holds bitwise the same weights at every step. c_k is the task's
static TaskConfig.weight; it multiplies every method's weight.

Learnable weighting parameters (uncertainty weighting's log-variances) live OUTSIDE the model's DDP,
so nothing all-reduces their gradients: call `sync_gradients()` after backward and before the
optimizer step. Their terms that do not involve a loss (regularisers) are divided by the world size
on each rank, so the summed gradient is that of the global objective. With the same initial value
(a deterministic init) and the same optimizer, they then stay identical on every rank.

Adding a method = a new file with a Weighting subclass and its frozen config dataclass + one line in
mtl_rec.weighting.METHODS. Constructors share one signature:

    __init__(tasks: Sequence[TaskConfig], config: <its config dataclass>, label_priors: Mapping | None)

Gradient-based methods (GradNorm, PCGrad, MGDA, ...) need the shared parameters too: they set
`requires_shared = True` and the trainer passes them once with `attach_shared(parameters,
auxiliary=...)`; see mtl_rec.weighting.gradient. The trainer calls `after_backward()` right after the
backward: surgery methods (gradient normalisation, MGDA, PCGrad, GradVac) replace the shared
gradients there and return the weights the shared gradient got, which the run logs instead of the
loss multipliers; a no-op returning None otherwise.

Example::

    >>> weighting = build_weighting(WeightingConfig("dwa", {"window": 50}), cfg.tasks)
    >>> total, weights = weighting.combine(task_losses(outputs, batch, cfg.tasks).losses, step)
    >>> weights
    {'ctr': 1.0, 'cvr': 1.0}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from mtl_rec.config.model import TaskConfig
from mtl_rec.distributed import all_reduce_sum, is_distributed

# A global task loss at or below this counts as absent this step: no row of the task's sample space
# on any rank (mtl_rec.losses makes that loss exactly 0, still in the graph). Methods whose formula
# divides by the loss (or takes its log) give such a task the weight 0 instead of inf / NaN.
ABSENT_BELOW = 1e-12


class Weighting(nn.Module):
    """Combines {task: [] loss} into one [] total; the same weights on every rank.

    task_names:     the tasks, in config order (weights and state are indexed in this order)
    static_weights: [K] float64, each task's TaskConfig.weight (multiplies the method's weight)

    Subclasses implement `combine`. State that must survive a restart is a buffer or parameter, so
    `state_dict()` / `load_state_dict()` checkpoint it; `step` is the global step, so a method that
    depends on time (PLE's schedule) resumes where it stopped.
    """

    # Gradient-based methods set this and receive the shared parameters through attach_shared.
    requires_shared: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[TaskConfig], config=None, label_priors=None) -> None:
        """tasks: the run's tasks; config: the method's frozen config dataclass; label_priors: see
        build_weighting (only methods that need them read them)."""
        super().__init__()
        self.config = config
        self.task_names: tuple[str, ...] = tuple(task.name for task in tasks)
        # Plain tensor, not a buffer: it comes from the config, which is checkpointed separately.
        self.static_weights = torch.tensor([task.weight for task in tasks], dtype=torch.float64)  # [K]
        self.shared: tuple[nn.Parameter, ...] = ()
        # Gradient-based methods: {"a|b": cosine of the global task gradients} of the last step.
        self.last_cosines: dict[str, float] = {}

    def combine(self, losses: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """{task: [] loss on this rank} and the global step (0 on the first step) ->

        total:   [] tensor to backward; differentiable w.r.t. the model and any learnable weighting
                 parameters; summed over ranks its gradient is that of the method's global objective
        weights: {task: float} the multiplier applied to each task's loss this step (static weight
                 included), identical on every rank

        Collective on some methods (one all-reduce of a [K] tensor): call it every step on every rank.
        """
        raise NotImplementedError

    def attach_shared(self, parameters: Iterable[nn.Parameter], auxiliary: bool = False) -> None:
        """Give a gradient-based method the shared parameters it measures; loss-based methods ignore it.
        auxiliary: the step's backward also carries non-task losses (see mtl_rec.weighting.gradient)."""
        self.shared = tuple(parameters)

    def after_backward(self) -> dict[str, float] | None:
        """Called right after the step's backward, before the optimizer step. Surgery methods overwrite
        the shared parameters' summed gradients here and return {task: weight of G_k in the shared
        gradient}, identical on every rank; others do nothing and return None."""
        return None

    def sync_gradients(self) -> None:
        """All-reduce (SUM) the gradients of this module's learnable parameters across ranks.

        Call after backward, before the optimizer step. A no-op without learnable parameters or
        without a process group. One all-reduce of all gradients flattened together; a missing
        gradient counts as zeros, so every rank issues the same collective.
        """
        parameters = [p for p in self.parameters() if p.requires_grad]
        if not parameters or not is_distributed():
            return
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in parameters]
        )  # [P]
        summed = all_reduce_sum(flat)  # [P], identical on every rank
        offset = 0
        for p in parameters:
            p.grad = summed[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    # ------------------------------------------------------------------ helpers for subclasses

    def check_losses(self, losses: Mapping[str, Tensor]) -> None:
        if set(losses) != set(self.task_names):
            raise KeyError(
                f"{type(self).__name__}: losses for {sorted(losses)}, "
                f"but the tasks are {list(self.task_names)}"
            )

    def global_losses(self, losses: Mapping[str, Tensor]) -> Tensor:
        """{task: [] local loss} -> [K] float64 on the CPU: the global loss of each task (sum over ranks).

        Detached; float64 so that ratios, logs and powers of small losses stay accurate.
        """
        local = torch.stack([losses[name].detach().to(torch.float64) for name in self.task_names])  # [K]
        return all_reduce_sum(local).cpu()  # [K], identical on every rank

    def weighted_total(self, losses: Mapping[str, Tensor], weights: Sequence[float]) -> Tensor:
        """sum_k weights[k] * losses[k] -> []. A zero weight keeps the task in the graph (0 * loss),
        so DDP still sees its tower used."""
        terms = [weight * losses[name] for name, weight in zip(self.task_names, weights, strict=True)]
        return torch.stack(terms).sum()  # K x [] -> []

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}"


class LossStatWeighting(Weighting):
    """A method whose weights are detached multipliers computed from the global losses (and state).

    Subclasses implement `multipliers(global_losses [K] float64, step) -> [K] float64` (without the
    static weights) and may update their buffers there. Methods that ignore the losses (fixed, PLE's
    schedule) set `uses_losses = False` and skip the all-reduce.
    """

    uses_losses: ClassVar[bool] = True

    def multipliers(self, global_losses: Tensor | None, step: int) -> Tensor:
        raise NotImplementedError

    def combine(self, losses: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_losses(losses)
        global_losses = self.global_losses(losses) if self.uses_losses else None  # [K] or None
        multipliers = self.multipliers(global_losses, step).to("cpu", torch.float64)  # [K]
        weights = (self.static_weights * multipliers).tolist()  # [K] -> K floats
        total = self.weighted_total(losses, weights)
        return total, dict(zip(self.task_names, weights, strict=True))
