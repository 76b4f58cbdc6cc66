"""GradNorm: learnable task weights that balance the tasks' gradient norms on the last shared layer.

Zhao Chen, Vijay Badrinarayanan, Chen-Yu Lee, Andrew Rabinovich, "GradNorm: Gradient Normalization
for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018. With W the last shared layer,

    G_k     = || d (w_k L_k) / d W || = w_k ||G_k^W||          the weighted gradient norm of task k
    r_k     = Ltilde_k / mean_j Ltilde_j,  Ltilde_k = L_k(t) / L_k(0)   relative inverse training rate
    target_k = mean_j G_j * r_k^alpha                           (treated as a constant)
    L_grad  = sum_k | G_k - target_k |

and each step w <- w - lr * d L_grad / d w = w - lr * sign(G_k - target_k) ||G_k^W||, then w is
floored at 1e-6 and renormalised to sum to K. The step's loss uses the weights before the update.

The last shared layer (`shared_parameters`): the backbone's `last_shared_layer()` where it has one:
the bottom MLP's last Linear weight for Shared-Bottom; every shared expert's last Linear weight for
MMoE, OMoE, CGC and PLE (its last level), which every task's mixture reads. Other backbones: every
backbone parameter that at least two tasks use. Measuring W alone keeps the per-task backwards short
(towers, gates, one layer), which is why GradNorm costs about what a loss-based method does.

Rank consistency: ||G_k^W|| comes from the all-reduced task gradients and L_k from the all-reduced
losses; the update is a plain SGD step of the weights, a [K] float64 buffer (not a parameter: the
model's optimizer and sync_gradients never touch it), identical on every rank and checkpointed with
state_dict, as is L_k(0) (the first step where the task's global loss is present).

Example::

    >>> weighting = build_weighting(WeightingConfig("gradnorm", {"alpha": 1.5, "lr": 0.025}), tasks)
    >>> weighting.attach_shared(weighting.shared_parameters(model.backbone))
    >>> total, weights = weighting.combine(losses, step)    # weights sum to K (times c_k)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import TaskConfig
from mtl_rec.weighting.base import ABSENT_BELOW
from mtl_rec.weighting.gradient import GradientWeighting


@dataclass(frozen=True)
class GradNormConfig:
    """alpha: the asymmetry exponent (0: equal gradient norms; the paper uses 0.12 to 3.0)
    lr: the SGD step of the task weights on L_grad
    """

    alpha: float = 1.5
    lr: float = 0.025

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ConfigError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a finite number > 0, got {self.lr}")


class GradNorm(GradientWeighting):
    """weights = c_k w_k; w [K] updated each step by one SGD step on L_grad, renormalised to sum K."""

    def __init__(self, tasks: Sequence[TaskConfig], config: GradNormConfig, label_priors=None) -> None:
        super().__init__(tasks, config)
        num_tasks = len(self.task_names)
        self.register_buffer("task_weights", torch.ones(num_tasks, dtype=torch.float64))  # [K] w
        self.register_buffer("initial_losses", torch.zeros(num_tasks, dtype=torch.float64))  # [K] L(0)

    def shared_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        """The backbone's last_shared_layer() if it defines one; else all its parameters (module doc)."""
        last_layer = getattr(backbone, "last_shared_layer", None)
        weights = list(last_layer()) if callable(last_layer) else []
        return weights or super().shared_parameters(backbone)

    def update(self, norms: Tensor, global_losses: Tensor) -> None:
        """One step on L_grad from the global gradient norms ||G_k^W|| [K] and global losses [K]."""
        norms, global_losses = norms.to(self.task_weights), global_losses.to(self.task_weights)
        present = global_losses > ABSENT_BELOW  # [K]
        first = present & (self.initial_losses <= ABSENT_BELOW)  # [K]
        self.initial_losses.copy_(torch.where(first, global_losses, self.initial_losses))
        known = self.initial_losses > ABSENT_BELOW  # [K]
        ratios = torch.where(known, global_losses / self.initial_losses.clamp(min=ABSENT_BELOW), 1.0)  # [K]
        inverse_rate = ratios / ratios.mean()  # [K] r_k
        weighted_norms = self.task_weights * norms  # [K] G_k
        target = weighted_norms.mean() * inverse_rate**self.config.alpha  # [K], a constant
        gradient = torch.sign(weighted_norms - target) * norms  # [K] d L_grad / d w_k
        weights = (self.task_weights - self.config.lr * gradient).clamp(min=1e-6)  # [K]
        self.task_weights.copy_(len(self.task_names) * weights / weights.sum())

    def combine(self, losses: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_losses(losses)
        grads = self.global_task_gradients(losses)  # [K, P] on the last shared layer
        global_losses = self.global_losses(losses)  # [K]
        multipliers = self.task_weights.detach().cpu().clone()  # [K] this step's w
        self.update(grads.norm(dim=1), global_losses)  # the next step's w
        return self.reweighted(losses, multipliers)
