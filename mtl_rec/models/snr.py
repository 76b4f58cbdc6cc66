"""SNR: Sub-Network Routing, shared layers split into sub-networks joined by learned binary routes.

Jiaqi Ma, Zhe Zhao, Jilin Chen, Ang Li, Lichan Hong, Ed H. Chi, "SNR: Sub-Network Routing for Flexible
Parameter Sharing in Multi-Task Learning", AAAI 2019.

The shared bottom is cut into `subnetworks` sub-networks per level. Every connection from a
sub-network i of one level to a consumer j of the next (a sub-network, or after the last level a
task's input) carries a coding variable z_ij in {0, 1}:

    SNR-Trans:  v_j = sum_i z_ij W_ij u_i        (each route has its own matrix W_ij)
    SNR-Avg:    v_j = sum_i z_ij u_i             (routes carry u_i as is)

z is relaxed with the hard concrete distribution (Louizos, Welling, Kingma, "Learning Sparse Neural
Networks through L0 Regularization", ICLR 2018), one learned log alpha per route:

    training:   u ~ U(0, 1),  s = sigmoid((log u - log(1 - u) + log alpha) / beta)
    evaluation: s = sigmoid(log alpha)                         (the deterministic estimator)
    both:       z = min(1, max(0, s (zeta - gamma) + gamma))

so a route is exactly 0 or 1 with positive probability, and exactly 0 at evaluation once
log alpha < logit(-gamma / (zeta - gamma)). The expected number of open routes is the L0 penalty

    L0 = sum_routes sigmoid(log alpha - beta log(-gamma / zeta)),

added to the loss times `l0_weight` (an `auxiliary_losses` parameter penalty). Noise is drawn per
example (Louizos et al.'s reference code), not once per batch: a lower-variance gradient for log alpha.

Example::

    >>> config = SNRConfig(variant="trans", num_levels=2, subnetworks=3, subnetwork=MLPConfig(hidden=(16,)))
    >>> backbone = SNR(32, ["ctr", "cvr"], config)
    >>> {task: tuple(h.shape) for task, h in backbone(torch.randn(8, 32)).items()}
    {'ctr': (8, 16), 'cvr': (8, 16)}
    >>> backbone.auxiliary_losses(None, None)["snr_l0"].shape       # weight * expected open routes
    torch.Size([])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import Experts

# Uniform noise is kept inside [EPS, 1 - EPS]: log u and log(1 - u) stay finite.
NOISE_EPS = 1e-6


@dataclass(frozen=True)
class SNRConfig:
    """variant:        "trans" (SNR-Trans: a matrix W_ij on every route) or "avg" (SNR-Avg: none)
    num_levels:     levels of sub-networks; routes join consecutive levels and the last level to tasks
    subnetworks:    sub-networks per level
    subnetwork:     each sub-network's MLP (level 1 reads the input, later levels the routed mix)
    l0_weight:      lambda, the L0 penalty's coefficient
    beta:           hard-concrete temperature; gamma < 0 and zeta > 1: the stretch interval
                    (Louizos et al.'s 2/3, -0.1, 1.1)
    log_alpha_init: every route's initial log alpha; 2.0 starts routes mostly open
                    (evaluation gate min(1, sigmoid(2) * 1.2 - 0.1) = 0.96)
    """

    variant: Literal["trans", "avg"] = "trans"
    num_levels: int = 2
    subnetworks: int = 3
    subnetwork: MLPConfig = MLPConfig(hidden=(128,))
    l0_weight: float = 1e-3
    beta: float = 2.0 / 3.0
    gamma: float = -0.1
    zeta: float = 1.1
    log_alpha_init: float = 2.0

    def __post_init__(self) -> None:
        if self.num_levels < 1 or self.subnetworks < 1:
            raise ConfigError(
                f"num_levels and subnetworks must be >= 1, got {self.num_levels} and {self.subnetworks}"
            )
        if not self.subnetwork.hidden:
            raise ConfigError("subnetwork.hidden needs at least one layer: a sub-network is an MLP")
        if not (self.beta > 0 and self.gamma < 0 and self.zeta > 1):
            raise ConfigError(
                "hard concrete needs beta > 0, gamma < 0, zeta > 1; "
                f"got beta={self.beta}, gamma={self.gamma}, zeta={self.zeta}"
            )
        if not (math.isfinite(self.l0_weight) and self.l0_weight >= 0):
            raise ConfigError(f"l0_weight must be >= 0, got {self.l0_weight}")


class HardConcreteGates(nn.Module):
    """R relaxed binary gates, one learned log alpha each: batch size B -> [B, *shape] in [0, 1].

    Training samples the hard concrete distribution per example; evaluation uses the deterministic
    estimator min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma)), the same for every row.
    """

    def __init__(self, shape: tuple[int, ...], config: SNRConfig) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full(shape, float(config.log_alpha_init)))
        self.beta, self.gamma, self.zeta = config.beta, config.gamma, config.zeta

    def forward(self, batch_size: int) -> Tensor:
        if not self.training:
            return self.deterministic().expand(batch_size, *self.log_alpha.shape)  # [*shape] -> [B, *shape]
        log_alpha = self.log_alpha.expand(batch_size, *self.log_alpha.shape)  # [*shape] -> [B, *shape]
        noise = torch.rand_like(log_alpha).clamp(NOISE_EPS, 1.0 - NOISE_EPS)  # [B, *shape] ~ U(0, 1)
        s = torch.sigmoid((torch.log(noise) - torch.log1p(-noise) + log_alpha) / self.beta)  # [B, *shape]
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)  # stretch, then hard-clip

    def deterministic(self) -> Tensor:
        """The evaluation gates: min(1, max(0, sigmoid(log alpha) (zeta - gamma) + gamma)), [*shape]."""
        return (torch.sigmoid(self.log_alpha) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def expected_open(self) -> Tensor:
        """sum over gates of P(z > 0) = sigmoid(log alpha - beta log(-gamma / zeta)): [*shape] -> []."""
        shift = self.beta * math.log(-self.gamma / self.zeta)
        return torch.sigmoid(self.log_alpha - shift).sum()  # [*shape] -> []


class Routing(nn.Module):
    """M sub-network outputs [B, M, H] -> N routed inputs [B, N, H]: v_j = sum_i z_ij (W_ij) u_i."""

    def __init__(self, num_in: int, num_out: int, width: int, config: SNRConfig) -> None:
        super().__init__()
        self.gates = HardConcreteGates((num_in, num_out), config)
        if config.variant == "trans":
            # W_ij for every route, initialised like nn.Linear(width, width): U(-1/sqrt(H), 1/sqrt(H))
            bound = 1.0 / math.sqrt(width)
            self.transforms = nn.Parameter(torch.empty(num_in, num_out, width, width).uniform_(-bound, bound))
        else:
            self.register_parameter("transforms", None)  # SNR-Avg: routes carry u_i unchanged

    def forward(self, subnetwork_outputs: Tensor) -> Tensor:
        z = self.gates(subnetwork_outputs.shape[0])  # [B, M, N]
        if self.transforms is None:  # SNR-Avg
            return torch.einsum("bmn,bmh->bnh", z, subnetwork_outputs)  # [B, M, N] x [B, M, H] -> [B, N, H]
        # SNR-Trans: [B, M, H] x [M, N, H, K] -> [B, M, N, K], then the per-row gates sum over M
        transformed = torch.einsum("bmh,mnhk->bmnk", subnetwork_outputs, self.transforms)
        return torch.einsum("bmn,bmnk->bnk", z, transformed)  # [B, M, N] x [B, M, N, K] -> [B, N, K]


class SNR(nn.Module):
    """[B, In] -> {task: [B, H]} through num_levels routed levels of sub-networks (H = subnetwork.hidden[-1]).

    auxiliary_losses -> {"snr_l0": []}: l0_weight * the expected number of open routes (module doc).
    """

    def __init__(self, input_dim: int, task_names: Sequence[str], config: SNRConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.l0_weight = config.l0_weight
        width = config.subnetwork.hidden[-1]
        self.levels = nn.ModuleList(
            Experts(input_dim if level == 0 else width, config.subnetworks, config.subnetwork)
            for level in range(config.num_levels)
        )
        consumers = [config.subnetworks] * (config.num_levels - 1) + [len(self.task_names)]
        self.routes = nn.ModuleList(Routing(config.subnetworks, n, width, config) for n in consumers)
        self.output_dims = {task: width for task in self.task_names}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        outputs = self.levels[0](x)  # [B, In] -> [B, M, H]
        # Later levels: sub-network j reads its own routed input (the Experts module only holds them).
        for level, routing in zip(self.levels[1:], self.routes[:-1], strict=True):
            routed = routing(outputs)  # [B, M, H] -> [B, M', H], one input per next-level sub-network
            outputs = torch.stack(
                [subnetwork(routed[:, j]) for j, subnetwork in enumerate(level.experts)], dim=1
            )  # M' x [B, H] -> [B, M', H]
        task_inputs = self.routes[-1](outputs)  # [B, M, H] -> [B, T, H]
        return {task: task_inputs[:, t] for t, task in enumerate(self.task_names)}  # T x [B, H]

    def auxiliary_losses(self, outputs, batch) -> dict[str, Tensor]:
        """{"snr_l0": [] l0_weight * sum over every route of P(z != 0)}; reads no output or batch."""
        expected_open = torch.stack([routing.gates.expected_open() for routing in self.routes]).sum()  # []
        return {"snr_l0": self.l0_weight * expected_open}

    def eval_gates(self) -> list[Tensor]:
        """The deterministic gates of every routing, [M, N] each (a level's outputs -> its consumers)."""
        return [routing.gates.deterministic() for routing in self.routes]  # L x [M, N]
