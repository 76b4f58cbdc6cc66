"""Task weighting: how the per-task losses of a step become the one scalar that is backpropagated.

One file per method (or per family: loss_normalization.py); this dict registers them as
(class, config dataclass). Adding a method = a new file with a Weighting subclass and its frozen config
dataclass + one line in METHODS. The contract (mtl_rec.weighting.base.Weighting):

    __init__(tasks: Sequence[TaskConfig], config: <its config dataclass>, label_priors: Mapping | None)
    combine(losses: {task: [] Tensor}, step: int) -> (total [] Tensor, weights {task: float})
    sync_gradients()     after backward: SUM the grads of learnable weighting parameters over ranks
    state_dict()         its state (loss history, initial losses, log-variances) for the checkpoint

Every method computes only from all-reduced statistics and its own deterministic state, so all ranks
hold identical weights at every step. The static TaskConfig.weight multiplies every method's weight.

Loss-based methods registered here:

    fixed             the static weights                                   (linear scalarisation)
    ple_schedule      w_k(t) = w_k,0 gamma_k^t                              Tang et al., RecSys 2020
    uncertainty       learnable log-variances, L / sigma^2 + reg(sigma)     Kendall et al., CVPR 2018
    dwa               K softmax(loss ratio / T) over step windows           Liu et al., CVPR 2019
    initial_loss      L_k / L_k(0)                                          Su Jianlin, 2022
    prior_loss        L_k / H(label prior)                                  Su Jianlin, 2022
    realtime_loss     L_k / stop_grad(L_k)  (= sum_k log L_k)               Su Jianlin, 2022
    generalized_mean  ((1/K) sum L_k^gamma)^(1/gamma)                       Su Jianlin, 2022

Gradient-based methods (mtl_rec.weighting.gradient: per-task gradients on the shared backbone
parameters, all-reduced as one [K, P] tensor; then ONE normal backward per step). GradNorm reweights
the losses; the others combine the shared gradients in `after_backward()` from the Gram matrix of
the task gradients, measuring K - 1 of them and deriving the last from the backward:

    grad_normalization  shared: sum_k G_k / ||G_k||                         Su Jianlin, 2022
    gradnorm          learnable w, |w_k ||G_k|| - mean * r_k^alpha|, sum K  Chen et al., ICML 2018
    mgda              shared: min-norm convex combination (bounds: PE-LTR) Sener & Koltun 2018; Lin 2019
    pcgrad            shared: project conflicting gradients                Yu et al., NeurIPS 2020
    gradvac           shared: raise cosines to an EMA target               Wang et al., ICLR 2021

Example::

    >>> weighting = build_weighting(WeightingConfig("uncertainty"), cfg.tasks)
    >>> total, weights = weighting.combine(task_losses(outputs, batch, cfg.tasks).losses, step)
    >>> total.backward(); weighting.sync_gradients()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mtl_rec.config.loader import ConfigError, from_dict
from mtl_rec.config.model import TaskConfig
from mtl_rec.config.weighting import WeightingConfig
from mtl_rec.weighting.base import ABSENT_BELOW, LossStatWeighting, Weighting
from mtl_rec.weighting.dwa import DWA, DWAConfig
from mtl_rec.weighting.fixed import Fixed, FixedConfig
from mtl_rec.weighting.gradient import GradientWeighting, GradNormalization, GradNormalizationConfig
from mtl_rec.weighting.gradnorm import GradNorm, GradNormConfig
from mtl_rec.weighting.groups import GroupedWeighting
from mtl_rec.weighting.loss_normalization import (
    GeneralizedMean,
    GeneralizedMeanConfig,
    InitialLoss,
    InitialLossConfig,
    PriorLoss,
    PriorLossConfig,
    RealtimeLoss,
    RealtimeLossConfig,
    bernoulli_entropy,
)
from mtl_rec.weighting.mgda import MGDA, MGDAConfig
from mtl_rec.weighting.ple_schedule import PLESchedule, PLEScheduleConfig
from mtl_rec.weighting.surgery import GradVac, GradVacConfig, PCGrad, PCGradConfig
from mtl_rec.weighting.uncertainty import Uncertainty, UncertaintyConfig

METHODS: dict[str, tuple[type[Weighting], type]] = {
    "fixed": (Fixed, FixedConfig),
    "ple_schedule": (PLESchedule, PLEScheduleConfig),
    "uncertainty": (Uncertainty, UncertaintyConfig),
    "dwa": (DWA, DWAConfig),
    "initial_loss": (InitialLoss, InitialLossConfig),
    "prior_loss": (PriorLoss, PriorLossConfig),
    "realtime_loss": (RealtimeLoss, RealtimeLossConfig),
    "generalized_mean": (GeneralizedMean, GeneralizedMeanConfig),
    "grad_normalization": (GradNormalization, GradNormalizationConfig),
    "gradnorm": (GradNorm, GradNormConfig),
    "mgda": (MGDA, MGDAConfig),
    "pcgrad": (PCGrad, PCGradConfig),
    "gradvac": (GradVac, GradVacConfig),
}


def method_config(cfg: WeightingConfig) -> Any:
    """`cfg.params` as the chosen method's typed config dataclass; a ConfigError that names the valid
    methods or keys otherwise."""
    if cfg.method not in METHODS:
        raise ConfigError(f"unknown weighting method {cfg.method!r}; valid: {', '.join(METHODS)}")
    _, config_class = METHODS[cfg.method]
    if cfg.params and not dataclasses.fields(config_class):
        raise ConfigError(
            f"weighting method {cfg.method!r} takes no params, got {', '.join(map(repr, cfg.params))}"
        )
    try:
        return from_dict(config_class, cfg.params, "weighting.params")
    except ConfigError as e:
        raise ConfigError(f"weighting method {cfg.method!r}: {e}") from e


def build_weighting(
    cfg: WeightingConfig,
    tasks: Sequence[TaskConfig],
    label_priors: Mapping[str, float] | None = None,
    num_groups: int = 0,
) -> Weighting:
    """The registered method `cfg.method` for these tasks (ConfigError on bad params or task names).

    label_priors: {task: positive rate of its label over its sample space on the training data};
    only prior_loss needs it (or its `priors` param).
    num_groups: with `cfg.groups`, G (mtl_rec.config.weighting.weight_group_count): one instance of
    the method per group (mtl_rec.weighting.groups.GroupedWeighting)
    """
    config = method_config(cfg)  # ConfigError naming the valid methods / keys
    weighting_class, _ = METHODS[cfg.method]
    if cfg.groups is None:
        return weighting_class(tasks, config, label_priors)
    make = lambda: weighting_class(tasks, config, label_priors)  # noqa: E731
    return GroupedWeighting(tasks, make, num_groups, cfg.groups.column)


__all__ = [
    "ABSENT_BELOW",
    "DWA",
    "METHODS",
    "DWAConfig",
    "Fixed",
    "FixedConfig",
    "GeneralizedMean",
    "GeneralizedMeanConfig",
    "GradNorm",
    "GradNormConfig",
    "GradNormalization",
    "GradNormalizationConfig",
    "GradVac",
    "GradVacConfig",
    "GradientWeighting",
    "GroupedWeighting",
    "InitialLoss",
    "InitialLossConfig",
    "LossStatWeighting",
    "MGDA",
    "MGDAConfig",
    "PCGrad",
    "PCGradConfig",
    "PLESchedule",
    "PLEScheduleConfig",
    "PriorLoss",
    "PriorLossConfig",
    "RealtimeLoss",
    "RealtimeLossConfig",
    "Uncertainty",
    "UncertaintyConfig",
    "Weighting",
    "WeightingConfig",
    "bernoulli_entropy",
    "build_weighting",
    "method_config",
]
