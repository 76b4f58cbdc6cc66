"""Loss normalisations: make task losses of different scales comparable before adding them.

Su Jianlin (苏剑林), "多任务学习漫谈（一）：以损失之名" ("Multi-task learning (1): in the name of the
loss"), 科学空间 / Scientific Spaces blog, 2022, https://kexue.fm/archives/8870. Adding raw losses
lets the task with the largest loss scale dominate; the post derives a family of scale-free totals:

    initial_loss      sum_k L_k / L_k(0)           L_k(0): the loss at the start (here: the first step)
    prior_loss        sum_k L_k / H(p_k)           H(p) = -p log p - (1-p) log(1-p): the BCE of always
                                                   predicting the label prior p_k (an untrained model's
                                                   loss, known before training starts)
    realtime_loss     sum_k L_k / stop_grad(L_k)   gradient = sum_k grad L_k / L_k = grad sum_k log L_k:
                                                   every task's loss is scale-free at every step
    generalized_mean  ((1/K) sum_k L_k^gamma)^(1/gamma)
                                                   gamma = 1: the arithmetic mean (plain sum / K);
                                                   gamma -> 0: the geometric mean exp(mean_k log L_k),
                                                   whose gradient is realtime_loss's times the mean;
                                                   in between, an interpolation of the two

All four compute from the GLOBAL losses L_k (all-reduced sums of the ranks' shares) and report, as the
task weights, the effective gradient multipliers c_k * d total / d L_k (c_k: the static weight), which
each rank applies to its local loss (see mtl_rec.weighting.base): identical weights on every rank, and
the gradient summed over ranks is exactly that of the global total.

A task whose global loss is at or below ABSENT_BELOW this step (no row of its sample space on any
rank) would divide by zero: realtime_loss gives it weight 0, generalized_mean leaves it out of the mean
(K counts the present tasks), initial_loss records L_k(0) at the task's first present step.

Example::

    >>> weighting = build_weighting(WeightingConfig("generalized_mean", {"gamma": 0.0}), tasks)
    >>> weighting.combine({"ctr": torch.tensor(0.4), "cvr": torch.tensor(0.1)}, step=0)[1]
    {'ctr': 0.25, 'cvr': 1.0}                    # sqrt(0.4 * 0.1) / (2 L_k)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import TaskConfig
from mtl_rec.weighting.base import ABSENT_BELOW, LossStatWeighting


def bernoulli_entropy(prior: float) -> float:
    """H(p) = -p log p - (1 - p) log(1 - p), in nats: the BCE of the constant prediction p."""
    return -(prior * math.log(prior) + (1.0 - prior) * math.log1p(-prior))


# ---------------------------------------------------------------------------------- initial loss


@dataclass(frozen=True)
class InitialLossConfig:
    """No parameters: L_k(0) is the global loss of the task's first step with rows in its space."""


class InitialLoss(LossStatWeighting):
    """weights [K] = c / L(0), L(0) [K] recorded at each task's first present step (a checkpointed buffer)."""

    def __init__(
        self,
        tasks: Sequence[TaskConfig],
        config: InitialLossConfig,
        label_priors: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(tasks, config)
        num_tasks = len(self.task_names)
        self.register_buffer("initial", torch.zeros(num_tasks, dtype=torch.float64))  # [K] L_k(0)
        self.register_buffer("known", torch.zeros(num_tasks, dtype=torch.bool))  # [K]

    def multipliers(self, global_losses: Tensor | None, step: int) -> Tensor:
        losses = global_losses.to(self.initial.device)  # [K]
        record = ~self.known & (losses > ABSENT_BELOW)  # [K] first present step of the task
        self.initial.copy_(torch.where(record, losses, self.initial))
        self.known.logical_or_(record)
        # Not yet known means absent so far: its loss is 0 on every rank, its weight 0.
        return torch.where(self.known, 1.0 / torch.where(self.known, self.initial, 1.0), 0.0)  # [K]


# ------------------------------------------------------------------------------------ prior loss


@dataclass(frozen=True)
class PriorLossConfig:
    """priors: {task: p} positive rate of the task's label over its sample space, overriding the
    `label_priors` build_weighting receives (computed by the caller on the training data); every
    task needs one of the two, with 0 < p < 1.
    """

    priors: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.priors.items() if not 0.0 < v < 1.0}
        if bad:
            raise ConfigError(f"priors must lie strictly between 0 and 1, got {bad}")


class PriorLoss(LossStatWeighting):
    """weights [K] = c / H(p), H the entropy of the label prior p (fixed for the run)."""

    uses_losses = False  # the normaliser is known before training: no collective needed

    def __init__(
        self,
        tasks: Sequence[TaskConfig],
        config: PriorLossConfig,
        label_priors: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(tasks, config)
        priors = {**(label_priors or {}), **config.priors}
        unknown = sorted(set(config.priors) - set(self.task_names))
        missing = [name for name in self.task_names if name not in priors]
        if unknown or missing:
            raise ConfigError(
                f"prior_loss: priors for unknown tasks {unknown}, none for tasks {missing}; every task of "
                f"{', '.join(self.task_names)} needs its positive rate "
                "(weighting.params.priors or label_priors)"
            )
        bad = {name: priors[name] for name in self.task_names if not 0.0 < priors[name] < 1.0}
        if bad:
            raise ConfigError(
                f"prior_loss: label priors must lie strictly between 0 and 1 (entropy 0 otherwise), got {bad}"
            )
        self.priors = {name: float(priors[name]) for name in self.task_names}
        self.entropies = torch.tensor(
            [bernoulli_entropy(self.priors[name]) for name in self.task_names], dtype=torch.float64
        )  # [K] H(p_k)

    def multipliers(self, global_losses: Tensor | None, step: int) -> Tensor:
        return 1.0 / self.entropies  # [K]


# -------------------------------------------------------------------------------- real-time loss


@dataclass(frozen=True)
class RealtimeLossConfig:
    """No parameters."""


class RealtimeLoss(LossStatWeighting):
    """weights [K] = c / L (global L, detached): total = sum_k c_k L_k / stop_grad(L_k)."""

    def multipliers(self, global_losses: Tensor | None, step: int) -> Tensor:
        present = global_losses > ABSENT_BELOW  # [K]
        return torch.where(present, 1.0 / torch.where(present, global_losses, 1.0), 0.0)  # [K]


# ------------------------------------------------------------------------------ generalised mean


@dataclass(frozen=True)
class GeneralizedMeanConfig:
    """gamma: the exponent of the power mean (finite): 1 arithmetic, 0 geometric, -1 harmonic."""

    gamma: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.gamma):
            raise ConfigError(f"gamma must be a finite number, got {self.gamma}")


class GeneralizedMean(LossStatWeighting):
    """total F = ((1/K) sum_k L_k^gamma)^(1/gamma); weights [K] = c * dF/dL_k:

    gamma != 0:  dF/dL_k = (1/K) L_k^(gamma - 1) F^(1 - gamma)
    gamma == 0:  F = exp((1/K) sum_k log L_k),  dF/dL_k = F / (K L_k)
    """

    def multipliers(self, global_losses: Tensor | None, step: int) -> Tensor:
        present = global_losses > ABSENT_BELOW  # [K]
        count = int(present.sum())
        if count == 0:
            return torch.zeros_like(global_losses)  # [K]
        losses = torch.where(present, global_losses, 1.0)  # [K]; absent ones masked out below
        gamma = self.config.gamma
        if gamma == 0.0:
            mean = torch.exp(torch.where(present, losses.log(), 0.0).sum() / count)  # [] geometric
            grads = mean / (count * losses)  # [K]
        else:
            mean = (torch.where(present, losses**gamma, 0.0).sum() / count) ** (1.0 / gamma)  # []
            grads = losses ** (gamma - 1.0) * mean ** (1.0 - gamma) / count  # [K]
        return torch.where(present, grads, 0.0)  # [K]
