"""The base of the gradient-based methods, gradient surgery's contract, and gradient normalisation.

Gradient-based methods look at each task's gradient on the SHARED dense parameters. The trainer
attaches them once after sharding (`attach_shared(weighting.shared_parameters(model.backbone),
auxiliary=...)`): by default every backbone parameter; on the first step the method keeps those that
at least two tasks' losses depend on (`used`: MMoE's and PLE's per-task gates drop out).

Measuring. `local_task_gradients` computes g_k^r = d L_k^r / d shared with
torch.autograd.grad(retain_graph=True): autograd.grad with explicit inputs runs no AccumulateGrad
node, so DDP's reducer and the fused table optimizer do not fire, and nothing upstream of the backbone
(the embeddings) is visited. The [K, P] rows are all-reduced (SUM) as ONE tensor: G_k = sum_r g_k^r is
the global gradient of task k (the gradient convention of mtl_rec.distributed), so every quantity a
method derives from G (norms, the Gram matrix G G^T, projections) is identical on every rank. Not the
[K, K] Gram: G_i . G_j = sum_r sum_s g_i^r . g_j^s has cross-rank terms, so only gradients add up.

Two kinds of method, each with ONE normal backward per step (the embedding tables see exactly one):

- Reweighting (GradNorm): weights from the measured G_k, then the backward of sum_k w_k L_k.
- Surgery (`SurgeryWeighting`: gradient normalisation, MGDA / PE-LTR, PCGrad, GradVac): the backward
  of sum_k c_k L_k gives every parameter its usual gradient (towers, embeddings); then
  `after_backward()` replaces the task part of the shared parameters' gradient, sum_k c_k G_k, by
  the method's combination sum_k w_k G_k. The w_k depend on G only through its Gram matrix, so a
  method is a map [K, K] Gram -> [K] w (PCGrad's and GradVac's projections act on coefficients).

Why surgery measures only K - 1 tasks. After the backward, the shared gradient (already summed over
ranks by DDP) IS sum_k c_k G_k, so one task's G_d = (that - sum_{k != d} c_k G_k) / c_d comes free:
the per-task backwards through the backbone are the method's whole extra cost, and this saves one of
K. The first step measures all K, finds `used`, and picks d as the task with the largest c_k ||G_k||
(its derived gradient then has the smallest relative rounding error). The shared gradients must be
zeroed before each step's backward (the trainer does), or the derivation would include old ones.
Not when the step's backward also carries auxiliary losses that reach the backbone (SNR's L0
penalty, ESCM2's counterfactual risk): `attach_shared(..., auxiliary=True)` measures all K every
step, and the replacement keeps the auxiliary part, grad <- grad + sum_k (w_k - c_k) G_k.

`last_cosines` holds the pairwise cosine similarity of the global task gradients, {"ctr|cvr": cos},
for the run's metrics; `after_backward()` returns the weights w_k the shared gradient got.

Gradient normalisation (Su Jianlin, "多任务学习漫谈（二）：行梯度之事", 2022): every task's shared
gradient is scaled to unit norm before summing, w_k = c_k / ||G_k|| (a task whose gradient is ~0
keeps its static weight: it contributes nothing anyway).

Example::

    >>> weighting = build_weighting(WeightingConfig("grad_normalization"), tasks)
    >>> weighting.attach_shared(weighting.shared_parameters(model.backbone))
    >>> total, weights = weighting.combine(losses, step)       # weights: the static c_k
    >>> total.backward(); shared_weights = weighting.after_backward(); optimizer.step()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl_rec.config.model import TaskConfig
from mtl_rec.distributed import all_reduce_sum
from mtl_rec.weighting.base import Weighting

# A global gradient norm at or below this counts as zero (no in-space row anywhere, or unused params).
ZERO_NORM = 1e-12


def flatten(grads: Sequence[Tensor | None], params: Sequence[nn.Parameter]) -> Tensor:
    """One gradient (or None: zeros) per parameter -> [P], concatenated in order."""
    parts = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    return torch.cat(parts)  # [P]


def cosine_matrix(gram: Tensor) -> Tensor:
    """[K, K] Gram matrix -> [K, K] cosine similarities (0 where either gradient is ~0)."""
    norms = gram.diagonal().clamp(min=0).sqrt()  # [K]
    outer = norms[:, None] * norms[None, :]  # [K, 1] x [1, K] -> [K, K]
    return torch.where(outer > ZERO_NORM**2, gram / outer.clamp(min=ZERO_NORM**2), torch.zeros_like(gram))


class GradientWeighting(Weighting):
    """A method that reads the global per-task gradients on the shared parameters (see module doc).

    `self.used` lists the indices of the attached parameters that the flattened [P] gradient vectors
    cover (those at least min(2, K) tasks depend on), in order; None until the first step.
    """

    requires_shared = True

    def __init__(self, tasks: Sequence[TaskConfig], config=None, label_priors=None) -> None:
        super().__init__(tasks, config)
        self.used: list[int] | None = None
        self.auxiliary = False

    def shared_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        """The parameters this method measures, given the model's backbone: all of them by default."""
        return [p for p in backbone.parameters() if p.requires_grad]

    def attach_shared(self, parameters: Iterable[nn.Parameter], auxiliary: bool = False) -> None:
        """parameters: the shared dense parameters; auxiliary: whether the step's backward also carries
        losses other than the tasks' (a backbone's regularisers), so that no task gradient can be
        derived from it (see module doc)."""
        super().attach_shared(parameters)
        self.auxiliary = auxiliary
        self.used = None

    def local_task_gradients(self, losses: Mapping[str, Tensor], tasks: Sequence[int]) -> Tensor:
        """{task: [] local loss}, task indices -> [len(tasks), P]: this rank's gradient of each listed
        task on the used shared parameters, flattened (zeros where a task does not reach one)."""
        if not self.shared:
            raise RuntimeError(f"{type(self).__name__}: call attach_shared(parameters) before combine")
        first = self.used is None
        if first:  # every task on every attached parameter, once: which ones do two tasks use
            inputs = list(self.shared)
            tasks_to_run = range(len(self.task_names))
        else:
            inputs = [self.shared[i] for i in self.used]
            tasks_to_run = tasks
        per_task = {
            k: torch.autograd.grad(losses[self.task_names[k]], inputs, retain_graph=True, allow_unused=True)
            for k in tasks_to_run
        }  # {k: grad or None per input}
        if first:
            needed = min(2, len(self.task_names))
            users = [sum(g[i] is not None for g in per_task.values()) for i in range(len(inputs))]
            self.used = [i for i, count in enumerate(users) if count >= needed]
            per_task = {k: [grads[i] for i in self.used] for k, grads in per_task.items()}
            inputs = [self.shared[i] for i in self.used]
        if not inputs:
            return torch.zeros(len(tasks), 0)  # [K', 0]: no parameter is shared
        return torch.stack([flatten(per_task[k], inputs) for k in tasks])  # K' x [P] -> [K', P]

    def global_task_gradients(self, losses: Mapping[str, Tensor]) -> Tensor:
        """{task: [] local loss} -> [K, P] float64 on the CPU: every task's global gradient on the
        shared parameters (sum over ranks). One all-reduce; sets `last_cosines`."""
        local = self.local_task_gradients(losses, range(len(self.task_names)))  # [K, P]
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


class SurgeryWeighting(GradientWeighting):
    """Backpropagates sum_k c_k L_k; `after_backward` turns the shared gradients' task part into
    sum_k w_k G_k with w = `combination(gram, step)` (module doc: "Surgery", and the K - 1 trick)."""

    def __init__(self, tasks: Sequence[TaskConfig], config=None, label_priors=None) -> None:
        super().__init__(tasks, config)
        self.derived: int | None = None  # the task whose gradient the backward gives; None: measure all
        self.pending: tuple[Tensor, list[int], int] | None = None  # (measured G rows, their tasks, step)

    def combination(self, gram: Tensor, step: int) -> Tensor:
        """[K, K] float64 Gram of the global task gradients G_k -> [K] float64 w: the shared gradient
        becomes sum_k w_k G_k (static weights included)."""
        raise NotImplementedError

    def attach_shared(self, parameters: Iterable[nn.Parameter], auxiliary: bool = False) -> None:
        super().attach_shared(parameters, auxiliary)
        self.derived = None

    def combine(self, losses: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_losses(losses)
        measured = [k for k in range(len(self.task_names)) if k != self.derived]
        local = self.local_task_gradients(losses, measured)  # [K', P]
        self.pending = (all_reduce_sum(local), measured, step)  # [K', P] G_k, identical on every rank
        return self.reweighted(losses, torch.ones(len(self.task_names), dtype=torch.float64))

    @torch.no_grad()
    def after_backward(self) -> dict[str, float] | None:
        if self.pending is None:
            return None  # already applied
        measured_rows, measured, step = self.pending
        self.pending = None
        params = [self.shared[i] for i in self.used]
        static = self.static_weights.to(measured_rows)  # [K]
        grads = measured_rows.new_zeros(len(self.task_names), measured_rows.shape[1])  # [K, P]
        grads[measured] = measured_rows
        if self.derived is not None and params:  # the backward's shared gradient, summed over ranks
            summed = flatten([p.grad for p in params], params)  # [P]
            others = static[measured] @ measured_rows  # [K'] x [K', P] -> [P] sum_{k != d} c_k G_k
            grads[self.derived] = (summed.to(grads) - others) / static[self.derived]  # [P] G_d
        exact = grads.to(torch.float64)  # [K, P]
        gram = (exact @ exact.T).cpu()  # [K, P] x [P, K] -> [K, K]
        self.record_cosines(gram)
        if self.derived is None and not self.auxiliary and len(self.task_names) > 1:
            scaled_norms = self.static_weights * gram.diagonal().clamp(min=0).sqrt()  # [K] c_k ||G_k||
            if float(scaled_norms.max()) > ZERO_NORM:  # and so c_d > 0: G_d = (... ) / c_d is defined
                self.derived = int(torch.argmax(scaled_norms))  # from the next step on
        weights = self.combination(gram, step)  # [K] float64 w
        change = (weights - self.static_weights).to(grads) @ grads  # [K] x [K, P] -> [P]
        offset = 0
        for param in params:
            part = change[offset : offset + param.numel()].view_as(param).to(param.device, param.dtype)
            offset += param.numel()
            if param.grad is None:  # nothing reached it in the backward: its task part is 0 too
                param.grad = part.clone()
            else:
                param.grad.add_(part)  # (sum_k c_k G_k + auxiliary) - sum_k c_k G_k + sum_k w_k G_k
        return dict(zip(self.task_names, weights.tolist(), strict=True))


@dataclass(frozen=True)
class GradNormalizationConfig:
    """No params: w_k = c_k / ||G_k||."""


class GradNormalization(SurgeryWeighting):
    """w_k = c_k / ||G_k||: each task's shared gradient enters the sum with norm c_k (unit norm for c = 1)."""

    def __init__(
        self, tasks: Sequence[TaskConfig], config: GradNormalizationConfig, label_priors=None
    ) -> None:
        super().__init__(tasks, config)

    def combination(self, gram: Tensor, step: int) -> Tensor:
        norms = gram.diagonal().clamp(min=0).sqrt()  # [K] ||G_k||
        multipliers = torch.where(norms > ZERO_NORM, 1.0 / norms.clamp(min=ZERO_NORM), 1.0)  # [K]
        return self.static_weights * multipliers  # [K]
