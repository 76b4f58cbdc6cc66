"""PLE's loss-weight schedule: w_k(t) = w_k,0 * gamma_k^t, a per-task update ratio.

Hongyan Tang, Junning Liu, Ming Zhao, Xudong Gong, "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020, section 5.3 (joint
loss optimisation for a heterogeneous sample space): the weight of each task follows a fixed
geometric schedule, so e.g. an auxiliary task can fade out (gamma < 1) or a sparse deep-funnel task
can grow in (gamma > 1) as training proceeds.

Here w_k,0 is the task's static TaskConfig.weight and t = step // period. The paper counts t in
epochs; a daily retraining streams one pass, so t counts steps (`period` steps per unit of t).
The weights depend only on the config and the global step: the same on every rank, no collective,
no state (a resumed run passes the continued global step).

Example::

    >>> weighting = PLESchedule(tasks, PLEScheduleConfig(gamma={"cvr": 1.001}, period=10))
    >>> weighting.combine(losses, step=1000)[1]        # cvr: 0.5 * 1.001 ** 100
    {'ctr': 1.0, 'cvr': 0.5525...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import TaskConfig
from mtl_rec.weighting.base import LossStatWeighting


@dataclass(frozen=True)
class PLEScheduleConfig:
    """gamma:  {task: gamma_k > 0}, the per-step (per-period) update ratio; tasks not named keep
            `default_gamma`
    default_gamma: gamma of the tasks not in `gamma` (1.0: a constant weight)
    period: steps per unit of t (t = step // period), >= 1
    """

    gamma: dict[str, float] = field(default_factory=dict)
    default_gamma: float = 1.0
    period: int = 1

    def __post_init__(self) -> None:
        gammas = {**self.gamma, "default_gamma": self.default_gamma}
        bad = {k: v for k, v in gammas.items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ConfigError(f"every gamma must be a finite number > 0, got {bad}")
        if self.period < 1:
            raise ConfigError(f"period must be >= 1, got {self.period}")


class PLESchedule(LossStatWeighting):
    """weights [K] = c * gamma ** (step // period)."""

    uses_losses = False

    def __init__(
        self,
        tasks: Sequence[TaskConfig],
        config: PLEScheduleConfig,
        label_priors: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(tasks)
        unknown = sorted(set(config.gamma) - set(self.task_names))
        if unknown:
            raise ConfigError(
                f"ple_schedule: gamma for unknown tasks {unknown}; tasks: {', '.join(self.task_names)}"
            )
        self.config = config
        self.gamma = torch.tensor(
            [config.gamma.get(name, config.default_gamma) for name in self.task_names], dtype=torch.float64
        )  # [K]

    def multipliers(self, global_losses: Tensor | None, step: int) -> Tensor:
        return self.gamma ** (step // self.config.period)  # [K]
