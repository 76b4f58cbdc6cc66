"""AITM: Adaptive Information Transfer Multi-task, for tasks along a conversion funnel.

Dongbo Xi, Zhen Chen, Peng Yan, Yinger Zhang, Yongchun Zhu, Fuzhen Zhuang, Yu Chen, "Modeling the
Sequential Dependence among Audience Multi-step Conversions with Multi-task Learning in Targeted
Display Advertising", KDD 2021.

Tasks form a sequence (impression -> click -> purchase -> ...). Every task t has its own tower
q_t = tower_t(x). From the second task on, the AIT module lets task t decide, per example, how much
to take from what the previous task learnt:

    p_{t-1} = h_t(z_{t-1})                                  transfer: Linear + ReLU of the previous z
    w_u     = softmax_u( <Q u, K u> / sqrt(D) ),  u in {p_{t-1}, q_t}
    z_t     = sum_u w_u V u                                 z_1 = q_1

and z_t is task t's representation (the shared TaskHeads add its prediction layer). The behavioural
expectation calibrator penalises a later step predicted more likely than the one before it,

    L_lc = alpha * sum_{t >= 2} mean_i max(p_t(x_i) - p_{t-1}(x_i), 0),

returned by `auxiliary_losses` as a per-row term over all impressions (`alpha` = calibrator_weight,
the paper's 0.6). p_t are the entire-space probabilities TaskOutputs.prob(t): the tasks of the
sequence should be trained over `space: all` (the paper's setting), where p_t <= p_{t-1} is what
the funnel implies. Tasks chained with `parent` (ESMM) already satisfy it, and the term is then 0.

Example::

    >>> backbone = AITM(32, ["ctr", "ctcvr"], AITMConfig(tower=MLPConfig(hidden=(16,))))
    >>> {task: tuple(z.shape) for task, z in backbone(torch.randn(8, 32)).items()}
    {'ctr': (8, 16), 'ctcvr': (8, 16)}
    >>> z, weights = backbone.ait["ctcvr"](torch.randn(8, 16), torch.randn(8, 16))
    >>> weights.shape, bool(torch.allclose(weights.sum(-1), torch.ones(8)))
    (torch.Size([8, 2]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import MLP


@dataclass(frozen=True)
class AITMConfig:
    """tower:             each task's own tower on the input (q_t); its last width D is the AIT width
                       (the paper's towers are 128-64-32)
    sequence:          the tasks in funnel order; empty: the tasks' config order. A task left out
                       keeps its own tower output and is not calibrated.
    calibrator_weight: alpha, the behavioural expectation calibrator's coefficient
    """

    tower: MLPConfig = MLPConfig(hidden=(128, 64, 32))
    sequence: tuple[str, ...] = ()
    calibrator_weight: float = 0.6

    def __post_init__(self) -> None:
        if not self.tower.hidden:
            raise ConfigError("tower.hidden needs at least one layer: AIT mixes the towers' outputs")
        if not (math.isfinite(self.calibrator_weight) and self.calibrator_weight >= 0):
            raise ConfigError(f"calibrator_weight must be >= 0, got {self.calibrator_weight}")
        if len(set(self.sequence)) != len(self.sequence):
            raise ConfigError(f"sequence names a task twice: {list(self.sequence)}")


class AdaptiveInformationTransfer(nn.Module):
    """Attention over [transferred p_{t-1}, own q_t]: [B, D], [B, D] -> (z_t [B, D], weights [B, 2])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, transferred: Tensor, own: Tensor) -> tuple[Tensor, Tensor]:
        candidates = torch.stack([transferred, own], dim=1)  # 2 x [B, D] -> [B, 2, D]
        scores = (self.query(candidates) * self.key(candidates)).sum(
            dim=-1
        ) * self.scale  # [B, 2, D] -> [B, 2]
        weights = torch.softmax(scores, dim=1)  # [B, 2], each row sums to 1
        mixed = torch.einsum("bu,bud->bd", weights, self.value(candidates))  # [B, 2] x [B, 2, D] -> [B, D]
        return mixed, weights


class AITM(nn.Module):
    """[B, In] -> {task: [B, D]}: own towers, then AIT along the sequence (D = tower.hidden[-1]).

    auxiliary_losses -> {"aitm_calibrator": [B]} per-row alpha * sum_t max(p_t - p_{t-1}, 0), over "all".
    """

    auxiliary_spaces: ClassVar[dict[str, str]] = {"aitm_calibrator": "all"}

    def __init__(self, input_dim: int, task_names: Sequence[str], config: AITMConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        unknown = [task for task in config.sequence if task not in self.task_names]
        if unknown:
            raise ConfigError(
                f"aitm sequence names tasks {unknown} that are not tasks ({', '.join(self.task_names)})"
            )
        self.sequence = config.sequence or self.task_names
        self.calibrator_weight = config.calibrator_weight
        self.towers = nn.ModuleDict({task: MLP(input_dim, config.tower) for task in self.task_names})
        dim = config.tower.hidden[-1]
        # Keyed by the receiving task: transfers[t] carries z_{t-1} to t, ait[t] mixes it with q_t.
        receivers = self.sequence[1:]
        self.transfers = nn.ModuleDict(
            {task: nn.Sequential(nn.Linear(dim, dim), nn.ReLU()) for task in receivers}
        )
        self.ait = nn.ModuleDict({task: AdaptiveInformationTransfer(dim) for task in receivers})
        self.output_dims = {task: dim for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        own = {task: self.towers[task](x) for task in self.task_names}  # {task: [B, In] -> [B, D]} q_t
        features = dict(own)
        for previous, task in zip(self.sequence, self.sequence[1:]):
            transferred = self.transfers[task](features[previous])  # [B, D] z_{t-1} -> [B, D] p_{t-1}
            features[task], _ = self.ait[task](transferred, own[task])  # [B, D], [B, D] -> [B, D] z_t
        return {task: features[task] for task in self.task_names}

    def auxiliary_losses(self, outputs, batch) -> dict[str, Tensor]:
        """{"aitm_calibrator": [B]}: alpha * sum over consecutive pairs of max(p_t - p_{t-1}, 0)."""
        if len(self.sequence) < 2:
            return {}
        probs = [outputs.prob(task) for task in self.sequence]  # T x [B] entire-space p_t
        excess = [F.relu(child - parent) for parent, child in zip(probs, probs[1:])]  # (T-1) x [B]
        return {"aitm_calibrator": self.calibrator_weight * torch.stack(excess).sum(dim=0)}  # [T-1, B] -> [B]
