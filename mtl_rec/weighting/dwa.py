"""Dynamic Weight Average (DWA): weigh each task by how slowly its loss is falling.

Shikun Liu, Edward Johns, Andrew J. Davison, "End-to-End Multi-Task Learning with Attention",
CVPR 2019, eq. (7):

    w_k(t) = K exp(r_k(t-1) / T) / sum_j exp(r_j(t-1) / T),    r_k(t-1) = L_k(t-1) / L_k(t-2)

where L_k(t) is the loss of task k averaged over epoch t and T a temperature (T = 2 in the paper;
larger T: weights closer to 1). A task whose loss falls slowly (r near or above 1) gets more weight.

Step-level windows instead of epochs: a daily retraining streams its data once, so there is no
"previous epoch". Here L_k(t-1) is the mean of the GLOBAL loss of the last `window` steps before the
current one and L_k(t-2) the mean of the `window` steps before those; the weights stay 1 until both
windows are full (2 * window steps). The current step's loss is not used for its own weight (as in the
paper, where epoch t's weights come from epochs t-1 and t-2); it enters the history afterwards.

State: the last 2 * window global losses, a [2W, K] float64 buffer (checkpointed with state_dict), and
how many are filled. Global losses are all-reduced, so the history and the weights are identical on
every rank. A window mean at or below ABSENT_BELOW (the task had no row anywhere for the whole window)
gives r_k = 1 instead of a division by zero.

Example::

    >>> weighting = DWA(tasks, DWAConfig(window=1, temperature=2.0))     # tasks ctr, cvr; weights 1
    >>> for step, (ctr, cvr) in enumerate([(0.8, 0.2), (0.4, 0.2), (0.3, 0.2)]):
    ...     weights = weighting.combine({"ctr": torch.tensor(ctr), "cvr": torch.tensor(cvr)}, step)[1]
    >>> weights      # r = (0.5, 1.0): 2 * softmax(r / 2); cvr's loss stalled, so it gains weight
    {'ctr': 0.875..., 'cvr': 1.124...}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import TaskConfig
from mtl_rec.weighting.base import ABSENT_BELOW, LossStatWeighting


@dataclass(frozen=True)
class DWAConfig:
    """window: steps per loss average (>= 1); weights stay 1 for the first 2 * window steps
    temperature: T > 0 of the softmax over loss ratios (the paper's 2.0)
    """

    window: int = 100
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ConfigError(f"window must be >= 1, got {self.window}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"temperature must be a finite number > 0, got {self.temperature}")


class DWA(LossStatWeighting):
    """weights [K] = c * K softmax(r / T), r = mean(last window) / mean(window before), from global losses."""

    def __init__(
        self, tasks: Sequence[TaskConfig], config: DWAConfig, label_priors: Mapping[str, float] | None = None
    ) -> None:
        super().__init__(tasks, config)
        window, num_tasks = config.window, len(self.task_names)
        # Oldest row first; the newest global losses are in the last row.
        self.register_buffer("history", torch.zeros(2 * window, num_tasks, dtype=torch.float64))  # [2W, K]
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64))  # [] rows of history in use

    def ratios(self) -> Tensor:
        """[K] r_k = mean of the newer window / mean of the older window (1 where the older is ~0)."""
        window = self.config.window
        older = self.history[:window].mean(dim=0)  # [W, K] -> [K]
        newer = self.history[window:].mean(dim=0)  # [W, K] -> [K]
        present = older > ABSENT_BELOW  # [K]
        return torch.where(present, newer / torch.where(present, older, 1.0), 1.0)  # [K]

    def multipliers(self, global_losses: Tensor | None, step: int) -> Tensor:
        num_tasks = len(self.task_names)
        if int(self.filled) >= 2 * self.config.window:
            weights = num_tasks * torch.softmax(self.ratios() / self.config.temperature, dim=0)  # [K]
        else:
            weights = torch.ones(num_tasks, dtype=torch.float64, device=self.history.device)  # [K]
        # Shift the history by one step and append this step's global losses (after using it: the
        # current loss never weighs itself).
        self.history.copy_(torch.roll(self.history, shifts=-1, dims=0))  # [2W, K]
        self.history[-1] = global_losses.to(self.history.device)  # [K]
        self.filled.fill_(min(int(self.filled) + 1, 2 * self.config.window))
        return weights
