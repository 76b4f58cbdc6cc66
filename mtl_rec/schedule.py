"""Learning-rate schedules for the dense optimizer and the fused table optimizer together.

The multiplier is a function of training progress, the share of the planned rows trained so far
(all ranks' rows, so identical on every rank): linear warm-up over the first `warmup_fraction`,
then constant, cosine or linear decay to `min_ratio` at the end. The schedule spans the whole run
(`cycle="run"`), or restarts its decay every epoch (`cycle="epoch"`: warm-up in the first epoch
only, then each epoch decays from the base rate to `min_ratio`; SGDR's warm restarts with a period
of one epoch, Loshchilov & Hutter, ICLR 2017), so every epoch ends on an annealed model that
validation can keep, however many epochs early stopping lets the run take. Progress counts rows, not steps:
a step count planned up front is wrong whenever ranks receive uneven shares of the blocks (the
lockstep then runs more, smaller steps) or a hold-out removes rows, and a schedule that ends early
trains the rest at the final (zero) rate. Both optimizers follow it: the dense one through its
param_groups, FBGEMM's fused one through its param_groups too, pushed into the kernel by its
zero_grad() (TorchRec's EmbeddingFusedOptimizer calls set_learning_rate there).

Example::

    >>> schedule = LRSchedule(warmup_fraction=0.1, decay="cosine")
    >>> [round(schedule.multiplier(p), 3) for p in (0.05, 0.1, 0.55, 1.0)]
    [0.5, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

Decay = Literal["constant", "cosine", "linear"]


@dataclass(frozen=True)
class LRSchedule:
    warmup_fraction: float = 0.0
    decay: Decay = "constant"
    min_ratio: float = 0.0

    def multiplier(self, progress: float, warmup: bool = True) -> float:
        """The learning-rate multiplier at `progress` in [0, 1] (the share of planned rows at the end
        of this step; beyond 1, e.g. more rows than planned, it stays at the end value). warmup=False:
        a restarted cycle, which decays over its whole length from the base rate."""
        progress = min(max(progress, 0.0), 1.0)
        if not warmup:
            return self._decayed(progress)
        if progress < self.warmup_fraction:
            return progress / self.warmup_fraction
        if self.decay == "constant" or self.warmup_fraction >= 1.0:
            return 1.0
        return self._decayed((progress - self.warmup_fraction) / (1.0 - self.warmup_fraction))

    def _decayed(self, done: float) -> float:
        """The decay's multiplier after `done` in [0, 1] of the decay phase."""
        if self.decay == "constant":
            return 1.0
        shape = 0.5 * (1.0 + math.cos(math.pi * done)) if self.decay == "cosine" else 1.0 - done
        return self.min_ratio + (1.0 - self.min_ratio) * shape


class ScheduledLR:
    """Applies an LRSchedule to optimizers whose param_groups hold their base learning rate.

    Example::

        >>> lr = ScheduledLR(schedule, [dense_optimizer], fused=dmp.fused_optimizer)
        >>> lr.apply(progress)   # before the step's forward: the fused optimizer runs in backward
    """

    def __init__(
        self,
        schedule: LRSchedule,
        optimizers: list[torch.optim.Optimizer | None],
        fused: torch.optim.Optimizer | None = None,
    ) -> None:
        self.schedule, self.fused = schedule, fused
        self.optimizers = [opt for opt in [*optimizers, fused] if opt is not None]
        self.base = [[group["lr"] for group in opt.param_groups] for opt in self.optimizers]

    def apply(self, progress: float, warmup: bool = True) -> float:
        multiplier = self.schedule.multiplier(progress, warmup)
        for optimizer, base in zip(self.optimizers, self.base, strict=True):
            for group, lr in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = lr * multiplier
        if self.fused is not None:
            self.fused.zero_grad()  # TorchRec's fused optimizers push param_groups' lr into FBGEMM here
        return multiplier
