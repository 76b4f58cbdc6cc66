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

Both act on the shared gradient only (mtl_rec.weighting.gradient.SurgeryWeighting): the step
backpropagates sum_k c_k L_k once (embeddings and towers get their usual gradient), and
`after_backward()` swaps the shared parameters' task part for G. Each g_i' stays a combination
sum_j A_ij c_j G_j of the task gradients, and every dot product the projections need is one of the
Gram matrix S = (c_i G_i . c_j G_j): the methods track the [K, K] coefficients A instead of [K, P]
vectors, and G = sum_j w_j G_j with w_j = c_j sum_i A_ij. S comes from all-reduced gradients, so
every rank computes the same w. The random task order comes from a generator seeded with
(seed, step), the same on every rank.

Example::

    >>> weighting = build_weighting(WeightingConfig("pcgrad"), tasks)
    >>> weighting.attach_shared(weighting.shared_parameters(model.backbone))
    >>> total, weights = weighting.combine(losses, step)       # weights: the static c_k
    >>> total.backward(); shared_weights = weighting.after_backward(); optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import TaskConfig
from mtl_rec.weighting.gradient import ZERO_NORM, SurgeryWeighting


def task_order(seed: int, task: int, num_tasks: int, step: int) -> list[int]:
    """The tasks other than `task` in a random order that is the same on every rank (seeded by seed,
    step, task)."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) * 101 + task)
    others = [j for j in range(num_tasks) if j != task]
    return [others[j] for j in torch.randperm(len(others), generator=generator).tolist()]


@dataclass(frozen=True)
class PCGradConfig:
    """seed: of the random task order (combined with the step, identical on every rank)."""

    seed: int = 0


class PCGrad(SurgeryWeighting):
    """G = sum_i g_i', each g_i' with its conflicts with the other (original) g_j projected away."""

    def __init__(self, tasks: Sequence[TaskConfig], config: PCGradConfig, label_priors=None) -> None:
        super().__init__(tasks, config)

    def combination(self, gram: Tensor, step: int) -> Tensor:
        num_tasks = len(self.task_names)
        scaled = gram * self.static_weights[:, None] * self.static_weights[None, :]  # [K, K] S
        coefficients = torch.eye(num_tasks, dtype=torch.float64)  # [K, K] A: g_i' = sum_j A_ij c_j G_j
        for i in range(num_tasks):
            for j in task_order(self.config.seed, i, num_tasks, step):
                dot = coefficients[i] @ scaled[:, j]  # [K] . [K] -> [] g_i' . g_j
                norm_sq = scaled[j, j]  # [] ||g_j||^2
                if dot < 0 and norm_sq > ZERO_NORM**2:
                    coefficients[i, j] -= dot / norm_sq
        return self.static_weights * coefficients.sum(dim=0)  # [K]


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

    def combination(self, gram: Tensor, step: int) -> Tensor:
        num_tasks = len(self.task_names)
        scaled = gram * self.static_weights[:, None] * self.static_weights[None, :]  # [K, K] S
        norms = scaled.diagonal().clamp(min=0).sqrt()  # [K] ||g_j||
        coefficients = torch.eye(num_tasks, dtype=torch.float64)  # [K, K] A: g_i' = sum_j A_ij c_j G_j
        for i in range(num_tasks):
            for j in task_order(self.config.seed, i, num_tasks, step):
                norm_i = float(coefficients[i] @ scaled @ coefficients[i]) ** 0.5  # ||g_i'||
                if norm_i <= ZERO_NORM or norms[j] <= ZERO_NORM:
                    continue  # no direction to compare: no change, no target update
                phi = float(coefficients[i] @ scaled[:, j]) / (norm_i * float(norms[j]))  # cos(g_i', g_j)
                phi = min(max(phi, -1.0), 1.0)
                target = min(float(self.targets[i, j]), 1.0 - 1e-6)  # < 1: sqrt(1 - target^2) > 0
                if phi < target:
                    scale = norm_i * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2))
                    coefficients[i, j] += scale / (float(norms[j]) * math.sqrt(1 - target**2))
                self.targets[i, j] = (1 - self.config.beta) * target + self.config.beta * phi
        return self.static_weights * coefficients.sum(dim=0)  # [K]
