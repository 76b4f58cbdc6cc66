"""MGDA: the min-norm convex combination of the task gradients; with weight bounds, PE-LTR.

Ozan Sener, Vladlen Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018:
a common descent direction for every task is the min-norm point of the convex hull of the shared
task gradients,

    alpha = argmin_{alpha >= 0, sum alpha = 1} || sum_k alpha_k G_k ||^2 = alpha^T M alpha,   M = G G^T [K, K]

solved with Frank-Wolfe (the paper's Algorithm 2: each iteration moves towards the vertex e_t with
t = argmin_t (M alpha)_t by the exact two-point line search); exact in one iteration for 2 tasks,
where alpha_1 = clamp((G_2 - G_1) . G_2 / ||G_1 - G_2||^2, 0, 1).

Xiao Lin, Hongjie Chen, Changhua Pei, Fei Sun, Xuanji Xiao, Hanxiao Sun, Yongfeng Zhang, Wenwu Ou,
Peng Jiang, "A Pareto-Efficient Algorithm for Multiple Objective Optimization in E-Commerce
Recommendation", RecSys 2019 (PE-LTR): per-task bounds lo_k <= alpha_k <= hi_k keep every task in
play. Their solver: the relaxed problem (only sum alpha = 1) in closed form from the KKT system

    [2M  1] [alpha ]   [0]
    [1^T 0] [lambda] = [1]        (pseudo-inverse: collinear gradients make M singular)

then the Euclidean projection onto {lo <= alpha <= hi, sum alpha = 1} (bisection on the shift tau of
clamp(alpha - tau, lo, hi)). Used as soon as a bound is set; without bounds it is plain MGDA.

Weights: w_k = c_k K alpha_k (uniform alpha gives the fixed weights; the bounds are on alpha, which
sums to 1). As in the paper's Algorithm 2, they combine the SHARED gradients only, sum_k w_k G_k, while
the task-specific parameters (towers) and the embeddings take the plain sum_k c_k grad L_k: the step
backpropagates that sum once and `after_backward()` swaps the shared part (gradient.SurgeryWeighting).
Every quantity comes from the global gradients' Gram matrix, so all ranks hold the same alpha.

Example::

    >>> weighting = build_weighting(WeightingConfig("mgda", {"min_weight": 0.1}), tasks)   # PE-LTR
    >>> weighting.attach_shared(weighting.shared_parameters(model.backbone))
    >>> total, weights = weighting.combine(losses, step)       # weights: the static c_k
    >>> total.backward(); shared_weights = weighting.after_backward()    # c_k K alpha_k
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import TaskConfig
from mtl_rec.weighting.gradient import SurgeryWeighting

Bound = float | dict[str, float] | None


@dataclass(frozen=True)
class MGDAConfig:
    """min_weight / max_weight: PE-LTR's bounds on alpha_k (sum alpha = 1), one number for every task
        or {task: bound}; default none (0 and 1: plain MGDA)
    max_iter: Frank-Wolfe iterations of plain MGDA (stops earlier once the step is ~0)
    """

    min_weight: Bound = None
    max_weight: Bound = None
    max_iter: int = 250

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ConfigError(f"max_iter must be >= 1, got {self.max_iter}")


def min_norm_frank_wolfe(gram: Tensor, max_iter: int = 250) -> Tensor:
    """[K, K] Gram matrix -> [K] alpha on the simplex minimising alpha^T M alpha (Sener & Koltun)."""
    num_tasks = gram.shape[0]
    alpha = torch.full((num_tasks,), 1.0 / num_tasks, dtype=gram.dtype)  # [K]
    for _ in range(max_iter):
        m_alpha = gram @ alpha  # [K, K] x [K] -> [K]
        t = int(torch.argmin(m_alpha))
        # Line search on (1 - gamma) v + gamma G_t, v = sum alpha_k G_k: the min-norm point of 2 vectors.
        vv, vt, tt = float(alpha @ m_alpha), float(m_alpha[t]), float(gram[t, t])
        denominator = vv + tt - 2 * vt  # ||v - G_t||^2
        gamma = min(max((vv - vt) / denominator, 0.0), 1.0) if denominator > 1e-20 else 0.0
        if gamma < 1e-10:
            break
        alpha = (1 - gamma) * alpha  # [K]
        alpha[t] += gamma
    return alpha


def project_bounded_simplex(point: Tensor, low: Tensor, high: Tensor, iterations: int = 200) -> Tensor:
    """Euclidean projection of [K] point onto {low <= alpha <= high, sum alpha = 1} (needs
    sum low <= 1 <= sum high): alpha = clamp(point - tau, low, high), tau found by bisection."""
    tau_low, tau_high = float((point - high).min()), float((point - low).max())  # sums: >= 1 and <= 1
    for _ in range(iterations):
        tau = 0.5 * (tau_low + tau_high)
        if float(torch.clamp(point - tau, low, high).sum()) > 1.0:
            tau_low = tau
        else:
            tau_high = tau
    return torch.clamp(point - 0.5 * (tau_low + tau_high), low, high)  # [K]


def pe_ltr(gram: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """PE-LTR's solver: the relaxed min-norm (sum alpha = 1 only) by KKT, then projected into the bounds."""
    num_tasks = gram.shape[0]
    kkt = torch.zeros(num_tasks + 1, num_tasks + 1, dtype=gram.dtype)  # [K+1, K+1]
    kkt[:num_tasks, :num_tasks] = 2 * gram
    kkt[:num_tasks, num_tasks] = 1.0
    kkt[num_tasks, :num_tasks] = 1.0
    rhs = torch.zeros(num_tasks + 1, dtype=gram.dtype)  # [K+1]
    rhs[num_tasks] = 1.0
    relaxed = (torch.linalg.pinv(kkt) @ rhs)[:num_tasks]  # [K+1, K+1] x [K+1] -> [K]
    return project_bounded_simplex(relaxed, low, high)


class MGDA(SurgeryWeighting):
    """w_k = c_k K alpha_k, alpha the (bounded) min-norm combination of the global task gradients."""

    def __init__(self, tasks: Sequence[TaskConfig], config: MGDAConfig, label_priors=None) -> None:
        super().__init__(tasks, config)
        self.low = self.bounds(config.min_weight, 0.0)  # [K]
        self.high = self.bounds(config.max_weight, 1.0)  # [K]
        self.bounded = config.min_weight is not None or config.max_weight is not None
        if (self.low > self.high).any() or self.low.sum() > 1 + 1e-9 or self.high.sum() < 1 - 1e-9:
            raise ConfigError(
                f"mgda: bounds admit no weights with sum 1: min_weight {self.low.tolist()}, "
                f"max_weight {self.high.tolist()} (need min <= max, sum min <= 1 <= sum max)"
            )

    def bounds(self, value: Bound, default: float) -> Tensor:
        """A bound param -> [K] float64 in [0, 1] (tasks not named keep `default`)."""
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(self.task_names))
            if unknown:
                raise ConfigError(
                    f"mgda: bounds for unknown tasks {unknown}; tasks: {', '.join(self.task_names)}"
                )
            values = [value.get(name, default) for name in self.task_names]
        else:
            values = [default if value is None else value] * len(self.task_names)
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ConfigError(f"mgda: every weight bound must be in [0, 1], got {values}")
        return torch.tensor(values, dtype=torch.float64)

    def combination(self, gram: Tensor, step: int) -> Tensor:
        if self.bounded:
            alpha = pe_ltr(gram, self.low, self.high)  # [K]
        else:
            alpha = min_norm_frank_wolfe(gram, self.config.max_iter)  # [K]
        return self.static_weights * len(self.task_names) * alpha  # [K]
