"""Building blocks shared by the backbones: MLP, a stack of expert MLPs, a softmax gate.

Example::

    >>> mlp = MLP(32, MLPConfig(hidden=(64, 16)))
    >>> mlp(torch.randn(8, 32)).shape, mlp.output_dim
    (torch.Size([8, 16]), 16)
    >>> experts, gate = Experts(32, 4, MLPConfig(hidden=(16,))), Gate(32, 4)
    >>> x = torch.randn(8, 32)
    >>> mix_experts(gate(x), experts(x)).shape
    torch.Size([8, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_rec.config.model import MLPConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class BatchNorm(nn.BatchNorm1d):
    """nn.BatchNorm1d, except that a training batch of one row is normalised with the running
    statistics and leaves them unchanged, as in eval mode: [B, C] -> [B, C].

    A training step can see one-row batches: the padding batch of a rank whose shard ran out
    (jobs.worker.runtime.padding_batch, so that every rank runs the same number of steps) and a shard's
    last row. nn.BatchNorm1d raises on them ("Expected more than 1 value per channel"), and a padding
    row's statistics are not data: they must not move the running mean and variance.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            # [1, C] normalised by the running [C] statistics; no update
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)  # [B, C]


class MLP(nn.Module):
    """[B, in_dim] -> [B, output_dim]: per hidden width, Linear -> [BatchNorm1d] -> activation -> [Dropout].

    With `hidden=()` it is the identity and output_dim == in_dim.
    """

    def __init__(self, in_dim: int, config: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in config.hidden:
            layers.append(nn.Linear(width, hidden))
            if config.batch_norm:
                layers.append(BatchNorm(hidden))
            layers.append(ACTIVATIONS[config.activation]())
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # [B, in_dim] -> [B, output_dim]


class Experts(nn.Module):
    """E independent expert MLPs over the same input: [B, in_dim] -> [B, E, H].

    A list of MLPs rather than one batched matmul: E is small (2-16), and each expert stays an
    ordinary MLP (BatchNorm, dropout) with readable parameter names (`experts.0.layers.0.weight`).
    """

    def __init__(self, in_dim: int, num_experts: int, config: MLPConfig) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"need at least one expert, got {num_experts}")
        self.experts = nn.ModuleList(MLP(in_dim, config) for _ in range(num_experts))
        self.num_experts = num_experts
        self.output_dim = self.experts[0].output_dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)  # E x [B, H] -> [B, E, H]


class Gate(nn.Module):
    """Softmax mixture weights over E experts: [B, in_dim] -> [B, E], each row sums to 1.

    No bias: MMoE's gate is g(x) = softmax(W x), so the mixture depends on the input alone.
    """

    def __init__(self, in_dim: int, num_experts: int) -> None:
        super().__init__()
        self.logits = nn.Linear(in_dim, num_experts, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.logits(x), dim=-1)  # [B, in_dim] -> [B, E] -> softmax over E


def last_linear_weights(module: nn.Module) -> list[nn.Parameter]:
    """The weight of the last Linear of every MLP inside `module` (itself included), in module order:
    a backbone's "last shared layer" for GradNorm when `module` holds its shared experts or bottom."""
    mlps = [m for m in module.modules() if isinstance(m, MLP)]
    weights = []
    for mlp in mlps:
        linears = [layer for layer in mlp.layers if isinstance(layer, nn.Linear)]
        if linears:
            weights.append(linears[-1].weight)
    return weights


def mix_experts(weights: Tensor, expert_outputs: Tensor) -> Tensor:
    """Gate-weighted sum of expert outputs: [B, E] x [B, E, H] -> [B, H].

    A broadcast product and a sum, not einsum: einsum lowers this to B batched [1, E] x [E, H]
    matmuls. On one CPU thread, forward and backward of the Adult MMoE's mix (B 512, E 8, H 16) took
    0.16 ms this way against 0.49 ms, and its whole training step 7.0 ms against 7.6
    (docs/benchmarks.md, session 13). Under a bfloat16 backbone (mtl_rec.export) each product is
    rounded to bfloat16 before the sum; the served AUCs stayed within 1e-5 of float32's.
    """
    return (weights.unsqueeze(-1) * expert_outputs).sum(dim=1)  # [B, E, 1] * [B, E, H] -> [B, H]
