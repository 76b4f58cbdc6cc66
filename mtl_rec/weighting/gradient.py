"""The base of the gradient-based methods, and gradient normalisation.

Gradient-based methods look at each task's gradient on the SHARED parameters. The trainer attaches
them once after sharding (`attach_shared(weighting.shared_parameters(model.backbone))`): by default
every backbone parameter that at least two tasks' losses depend on (MMoE's and PLE's per-task gates
are then left out, since only one task uses them). Each step, `global_task_gradients`:

  1. computes g_k^r = d L_k^r / d shared for every task with torch.autograd.grad(retain_graph=True);
     autograd.grad with explicit inputs runs no AccumulateGrad node, so DDP's reducer and the fused
     table optimizer do not fire, and nothing upstream of the backbone (the embeddings) is visited;
  2. stacks them into [K, P] and all-reduces (SUM) that ONE tensor: G_k = sum_r g_k^r is the global
     gradient of task k (the gradient convention of mtl_rec.distributed). Every quantity a method
     derives from G (norms, the Gram matrix G G^T, projections) is then identical on every rank.

Why [K, P] and not the [K, K] Gram matrix: the Gram of the global gradients is not the sum of the
per-rank Grams (G_i . G_j = sum_r sum_s g_i^r . g_j^s, cross-rank terms included), so only the
gradients themselves can be summed. P is the backbone's size (or one layer for GradNorm).

Then the step's ONE normal backward runs: reweighting methods (gradient normalisation, GradNorm,
MGDA) return weights and the trainer backpropagates sum_k w_k L_k; surgery methods (PCGrad, GradVac)
backpropagate sum_k c_k L_k and overwrite the shared gradients in `after_backward()` with the
surgered global gradient. Either way the embedding tables get exactly one backward per step.

`last_cosines` holds the pairwise cosine similarity of the global task gradients, {"ctr|cvr": cos},
for the run's metrics.

Gradient normalisation (Su Jianlin, "多任务学习漫谈（二）：行梯度之事", 2022): every task's shared
gradient is scaled to unit norm before summing, i.e. w_k = c_k / ||G_k|| (a task whose gradient is
~0 keeps its static weight: it contributes nothing anyway).

Example::

    >>> weighting = build_weighting(WeightingConfig("grad_normalization"), tasks)
    >>> weighting.attach_shared(weighting.shared_parameters(model.backbone))
    >>> total, weights = weighting.combine(losses, step)
    >>> total.backward(); weighting.after_backward(); optimizer.step()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl_rec.config.model import TaskConfig
from mtl_rec.distributed import all_reduce_sum
from mtl_rec.weighting.base import Weighting

# A global gradient norm at or below this counts as zero (no in-space row anywhere, or unused params).
ZERO_NORM = 1e-12


def cosine_matrix(gram: Tensor) -> Tensor:
    """[K, K] Gram matrix -> [K, K] cosine similarities (0 where either gradient is ~0)."""
    norms = gram.diagonal().clamp(min=0).sqrt()  # [K]
    outer = norms[:, None] * norms[None, :]  # [K, 1] x [1, K] -> [K, K]
    return torch.where(outer > ZERO_NORM**2, gram / outer.clamp(min=ZERO_NORM**2), torch.zeros_like(gram))


class GradientWeighting(Weighting):
    """A method that reads the global per-task gradients on the shared parameters (see module doc).

    After `global_task_gradients`, `self.used` lists the indices of the attached parameters that the
    flattened [P] vectors cover (those at least min(2, K) tasks depend on), in order.
    """

    requires_shared = True

    def __init__(self, tasks: Sequence[TaskConfig], config=None, label_priors=None) -> None:
        super().__init__(tasks, config)
        self.used: list[int] = []

    def shared_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        """The parameters this method measures, given the model's backbone: all of them by default."""
        return [p for p in backbone.parameters() if p.requires_grad]

    def global_task_gradients(self, losses: Mapping[str, Tensor]) -> Tensor:
        """{task: [] local loss} -> [K, P] float64: the global gradient of each task on the shared
        parameters (sum over ranks). One all-reduce; sets `last_cosines` and `used`."""
        if not self.shared:
            raise RuntimeError(f"{type(self).__name__}: call attach_shared(parameters) before combine")
        per_task = [
            torch.autograd.grad(losses[name], self.shared, retain_graph=True, allow_unused=True)
            for name in self.task_names
        ]  # K x (grad or None per shared parameter)
        needed = min(2, len(self.task_names))
        self.used = [i for i in range(len(self.shared)) if sum(g[i] is not None for g in per_task) >= needed]
        zeros = [torch.zeros_like(param) for param in self.shared]  # a task that does not use a parameter
        local = torch.zeros(len(self.task_names), 0)  # [K, 0] when no parameter is shared
        if self.used:
            flat = [
                torch.cat([(g[i] if g[i] is not None else zeros[i]).reshape(-1) for i in self.used])
                for g in per_task
            ]
            local = torch.stack(flat)  # K x [P] -> [K, P]
        # On the CPU in float64: the methods loop over K tasks; P is one backbone, a few MB at most.
        grads = all_reduce_sum(local).to("cpu", torch.float64)  # [K, P], identical on every rank
        self.record_cosines(grads @ grads.T)  # [K, P] x [P, K] -> [K, K]
        return grads

    def record_cosines(self, gram: Tensor) -> None:
        """last_cosines = {"a|b": cos(G_a, G_b)} for every task pair a before b."""
        cosines = cosine_matrix(gram)  # [K, K]
        names = self.task_names
        self.last_cosines = {
            f"{names[i]}|{names[j]}": float(cosines[i, j])
            for i in range(len(names))
            for j in range(i + 1, len(names))
        }

    def reweighted(
        self, losses: Mapping[str, Tensor], multipliers: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """[K] multipliers (without the static weights) -> (total, weights) with w_k = c_k m_k."""
        weights = (self.static_weights * multipliers.to("cpu", torch.float64)).tolist()  # [K] -> K floats
        return self.weighted_total(losses, weights), dict(zip(self.task_names, weights, strict=True))


@dataclass(frozen=True)
class GradNormalizationConfig:
    """No params: w_k = c_k / ||G_k||."""


class GradNormalization(GradientWeighting):
    """w_k = c_k / ||G_k||: each task's shared gradient enters the sum with norm c_k (unit norm for c = 1)."""

    def __init__(
        self, tasks: Sequence[TaskConfig], config: GradNormalizationConfig, label_priors=None
    ) -> None:
        super().__init__(tasks, config)

    def combine(self, losses: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_losses(losses)
        grads = self.global_task_gradients(losses)  # [K, P]
        norms = grads.norm(dim=1)  # [K]
        multipliers = torch.where(norms > ZERO_NORM, 1.0 / norms.clamp(min=ZERO_NORM), 1.0)  # [K]
        return self.reweighted(losses, multipliers)
