"""Gradient surgery on the shared parameters: PCGrad and GradVac.

Tianhe Yu, Saurabh Kumar, Abhishek Gupta, Sergey Levine, Karol Hausman, Chelsea Finn, "Gradient
Surgery for Multi-Task Learning", NeurIPS 2020 (PCGrad): for every task i, in a random order of the
other tasks j, if g_i' . g_j < 0 project the conflict away,

    g_i' <- g_i' - (g_i' . g_j) / ||g_j||^2  g_j,          G = sum_i g_i'.

Zirui Wang, Yulia Tsvetkov, Orhan Firat, Yuan Cao, "Gradient Vaccine: Investigating and Improving
Multi-task Optimization in Massively Multilingual Models", ICLR 2021 (GradVac): instead of only
removing negative similarity, raise cos(g_i', g_j) = phi to an EMA target phi_hat_ij whenever it is
below it,

    g_i' <- g_i' + ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                   / (||g_j|| sqrt(1 - phi_hat^2)) g_j
    phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi        (every step, with phi before the change)

after which cos(g_i', g_j) = phi_hat_ij exactly. One target per task pair over the whole shared
vector (the paper also has per-layer targets). phi_hat starts at 0 and is a checkpointed buffer.

Neither is a reweighting: the step backpropagates sum_k c_k L_k once (embeddings and towers get
their usual gradient), then `after_backward()` replaces the task part of the shared parameters' .grad
(already summed over ranks by DDP) with G computed from the global task gradients c_k G_k:

    grad <- grad + (G - sum_k c_k G_k)

so whatever else the backward put there (a backbone's auxiliary losses: SNR's L0 penalty, ESCM2's
counterfactual risk) is kept, not silently dropped. grad (DDP-summed) and G, G_k (from all-reduced
gradients) are identical on every rank, so the result is too. The random task order comes from a
generator seeded with (seed, step), the same on every rank.

Example::

    >>> weighting = build_weighting(WeightingConfig("pcgrad"), tasks)
    >>> weighting.attach_shared(weighting.shared_parameters(model.backbone))
    >>> total, weights = weighting.combine(losses, step)       # weights: the static c_k
    >>> total.backward(); weighting.after_backward(); optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import TaskConfig
from mtl_rec.weighting.gradient import ZERO_NORM, GradientWeighting


class SurgeryWeighting(GradientWeighting):
    """Backpropagates sum_k c_k L_k; `after_backward` replaces that sum's part of the shared gradients
    with `surgery(c_k G_k [K, P], step) -> [P]`, keeping any other (auxiliary) part."""

    def __init__(self, tasks: Sequence[TaskConfig], config, label_priors=None) -> None:
        super().__init__(tasks, config)
        # [P] float64, G - sum_k c_k G_k: set by combine, added to the shared .grad by after_backward
        self.shared_grad_change: Tensor | None = None

    def surgery(self, grads: Tensor, step: int) -> Tensor:
        raise NotImplementedError

    def task_order(self, task: int, step: int) -> list[int]:
        """The other tasks in a random order that is the same on every rank (seeded by seed, step, task)."""
        generator = torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 101 + task)
        others = [j for j in range(len(self.task_names)) if j != task]
        return [others[j] for j in torch.randperm(len(others), generator=generator).tolist()]

    def combine(self, losses: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_losses(losses)
        grads = self.global_task_gradients(losses) * self.static_weights[:, None]  # [K, P] c_k G_k
        # The backward of sum_k c_k L_k puts sum_k c_k G_k on the shared parameters; only that part is
        # swapped for the surgered G, so auxiliary terms in the same backward keep their gradient.
        self.shared_grad_change = self.surgery(grads, step) - grads.sum(dim=0)  # [P] - [K, P].sum -> [P]
        return self.reweighted(losses, torch.ones(len(self.task_names), dtype=torch.float64))

    @torch.no_grad()
    def after_backward(self) -> None:
        if self.shared_grad_change is None:
            return
        offset = 0
        for i in self.used:
            param = self.shared[i]
            change = self.shared_grad_change[offset : offset + param.numel()].view_as(param)  # [*param]
            change = change.to(param.device, param.dtype)
            offset += param.numel()
            if param.grad is None:  # nothing reached it in the backward: its plain task part is 0 too
                param.grad = change.clone()
            else:
                param.grad.add_(change)  # (task sum + auxiliary) - task sum + G
        self.shared_grad_change = None


@dataclass(frozen=True)
class PCGradConfig:
    """seed: of the random task order (combined with the step, identical on every rank)."""

    seed: int = 0


class PCGrad(SurgeryWeighting):
    """G = sum_i g_i', each g_i' with its conflicts with the other (original) g_j projected away."""

    def __init__(self, tasks: Sequence[TaskConfig], config: PCGradConfig, label_priors=None) -> None:
        super().__init__(tasks, config)

    def surgery(self, grads: Tensor, step: int) -> Tensor:
        projected = grads.clone()  # [K, P]
        for i in range(len(self.task_names)):
            for j in self.task_order(i, step):
                dot = projected[i] @ grads[j]  # [P] . [P] -> []
                norm_sq = grads[j] @ grads[j]  # []
                if dot < 0 and norm_sq > ZERO_NORM**2:
                    projected[i] -= dot / norm_sq * grads[j]  # [P]
        return projected.sum(dim=0)  # [K, P] -> [P]


@dataclass(frozen=True)
class GradVacConfig:
    """beta: EMA rate of the similarity targets phi_hat (the paper's 1e-2); seed: of the task order."""

    beta: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and 0 < self.beta <= 1):
            raise ConfigError(f"beta must be in (0, 1], got {self.beta}")


class GradVac(SurgeryWeighting):
    """G = sum_i g_i', each g_i' pulled up to cos(g_i', g_j) >= phi_hat_ij; targets [K, K] EMA buffer."""

    def __init__(self, tasks: Sequence[TaskConfig], config: GradVacConfig, label_priors=None) -> None:
        super().__init__(tasks, config)
        num_tasks = len(self.task_names)
        self.register_buffer("targets", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))  # [K, K]

    def surgery(self, grads: Tensor, step: int) -> Tensor:
        vaccinated = grads.clone()  # [K, P]
        norms = grads.norm(dim=1)  # [K]
        for i in range(len(self.task_names)):
            for j in self.task_order(i, step):
                norm_i = vaccinated[i].norm()  # []
                if norm_i <= ZERO_NORM or norms[j] <= ZERO_NORM:
                    continue  # no direction to compare: no change, no target update
                phi = float(vaccinated[i] @ grads[j] / (norm_i * norms[j]))  # cos(g_i', g_j)
                phi = min(max(phi, -1.0), 1.0)
                target = min(float(self.targets[i, j]), 1.0 - 1e-6)  # < 1: sqrt(1 - target^2) > 0
                if phi < target:
                    scale = norm_i * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                    vaccinated[i] += scale / (norms[j] * math.sqrt(1 - target**2)) * grads[j]  # [P]
                self.targets[i, j] = (1 - self.config.beta) * target + self.config.beta * phi
        return vaccinated.sum(dim=0)  # [K, P] -> [P]
