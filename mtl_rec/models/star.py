"""STAR: Star Topology Adaptive Recommender, one model serving several domains (app scenes).

Xiang-Rong Sheng, Liqin Zhao, Guorui Zhou, Xinyao Ding, Binding Dai, Qiang Luo, Siyuan Lou, Yuan Zhang,
Xiaoqiang Zhu, "One Model to Serve All: Star Topology Adaptive Recommender for Multi-Domain CTR
Prediction", CIKM 2021.

Each row belongs to a domain p (batch.meta[domain_column], an integer in [0, num_domains)); three
parts, each keyed by it:

  partitioned normalisation  z' = (gamma * gamma_p) * n(z) + (beta + beta_p): a shared and a per-domain
                             scale and bias; n is the identity by default, or a standardisation with
                             running statistics (norm_statistics; PartitionedNorm says why not BatchNorm's)
  star topology FCN          every layer's weight is W = W_shared * W_p (element-wise) and its bias
                             b = b_shared + b_p: a centre shared by all domains, a domain factor on it
  auxiliary network          a small MLP over [domain embedding, z'] whose logit is added to the star
                             logit, so the domain moves the prediction directly

The paper predicts one CTR; here the star FCN ends in one logit per task, and each task's output is
its [B, 1] logit s_star + s_aux. The task tower on top should be linear (`tower: {hidden: []}`, a
learned scale and offset: jobs/configs/star.yaml), so the entire-space chains compose these logits.

Cost: a star layer evaluates x (W_shared * W_p) for every domain p and keeps each row's own: num_domains
times a plain layer's FLOPs, with no data-dependent shapes (no per-domain gather). Checking the domain
ids (a clear error instead of a silent out-of-range gather) costs one host sync per forward. With
num_domains = 1 the domain column is optional: every row is domain 0.

Example::

    >>> config = STARConfig(num_domains=3, hidden=(32, 16))
    >>> star = STAR(24, ["ctr", "cvr"], config)
    >>> batch.meta["domain"]                              # a Batch from the pipeline, B = 4
    tensor([0, 2, 1, 0])
    >>> {task: tuple(h.shape) for task, h in star(torch.randn(4, 24), batch).items()}
    {'ctr': (4, 1), 'cvr': (4, 1)}
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
from mtl_rec.models.layers import ACTIVATIONS, MLP


@dataclass(frozen=True)
class STARConfig:
    """num_domains:   domain ids lie in [0, num_domains) (the feature spec's num_domains)
    domain_column:    the Batch.meta column holding them (the feature spec's domain_column)
    hidden:           widths of the star topology FCN (each layer shared * per-domain)
    activation:       after every star layer
    auxiliary:        the auxiliary network's MLP over [domain embedding, normalised input]
    domain_embedding_dim: width of the domain embedding the auxiliary network reads
    norm_statistics:  "none": the partitioned normalisation is its scale and bias alone; "running":
                      standardise with running estimates of the mean and variance first
    norm_momentum, norm_eps: of those running estimates, as BatchNorm's"""

    num_domains: int = 1
    domain_column: str = "domain"
    hidden: tuple[int, ...] = (256, 128)
    activation: Literal["relu", "gelu", "silu"] = "relu"
    auxiliary: MLPConfig = MLPConfig(hidden=(64,))
    domain_embedding_dim: int = 8
    norm_statistics: Literal["none", "running"] = "none"
    norm_momentum: float = 0.1
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.num_domains < 1 or self.domain_embedding_dim < 1:
            raise ConfigError(
                f"num_domains and domain_embedding_dim must be >= 1, got {self.num_domains} and "
                f"{self.domain_embedding_dim}"
            )
        if any(width < 1 for width in self.hidden):
            raise ConfigError(f"STAR hidden widths must be positive, got {list(self.hidden)}")
        if not 0.0 < self.norm_momentum <= 1.0 or self.norm_eps <= 0:
            raise ConfigError(
                f"need 0 < norm_momentum <= 1 and norm_eps > 0, got {self.norm_momentum}, {self.norm_eps}"
            )


class PartitionedNorm(nn.Module):
    """[B, F] features, [B] domain ids -> [B, F]: (gamma * gamma_p) * n(z) + (beta + beta_p), p = domain.

    Parameters gamma, beta [F] (shared) and domain_gamma, domain_beta [D, F]. With standardize, n(z) =
    (z - mean) / sqrt(var + eps) with running estimates (buffers running_mean, running_var [F]) used in
    training as in evaluation, updated from each training batch of two rows or more before it is
    normalised: the cumulative average over the first 1 / momentum batches, then an exponential one
    with weight `momentum`; the variance is that of all rows around the running mean (within and
    between batches). Without, n is the identity.

    Why not BatchNorm's statistics, as in the paper: its batches are shuffled and hold one domain each;
    this pipeline's are time-ordered slices of a day. A feature constant within a batch (weekday) is
    then normalised to exactly zero in training and its drift from the running mean amplified ~300x
    (1 / sqrt(eps)) in evaluation; running estimates of time-ordered rows are still biased towards the
    latest hours. Measured (jobs/configs/star.yaml, 200k generated rows in file order, batch 1024, one
    DMP rank; CTR AUC on the next day): 0.46-0.50 with batch statistics (whole batch or per domain),
    0.64 with running ones (momentum 0.1), 0.69 (momentum 0.01), 0.71 without standardisation (the
    default); shared-bottom 0.71.
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        standardize: bool = False,
        momentum: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.standardize, self.momentum, self.eps = standardize, momentum, eps
        self.gamma = nn.Parameter(torch.ones(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))
        self.domain_gamma = nn.Parameter(torch.ones(num_domains, num_features))
        self.domain_beta = nn.Parameter(torch.zeros(num_domains, num_features))
        if standardize:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.int64))

    def forward(self, z: Tensor, domain: Tensor) -> Tensor:
        normalised = z
        if self.standardize:
            if self.training and z.shape[0] > 1:  # a one-row batch is the trainer's padding: no update
                self._update(z.detach())
            normalised = (z - self.running_mean) * torch.rsqrt(self.running_var + self.eps)  # [B, F] - [F]
        scale = self.gamma * self.domain_gamma[domain]  # [F] * [B, F] -> [B, F]
        shift = self.beta + self.domain_beta[domain]  # [F] + [B, F] -> [B, F]
        return scale * normalised + shift  # [B, F]

    @torch.no_grad()
    def _update(self, z: Tensor) -> None:
        # Tensors, not Python floats: no host sync on a GPU.
        weight = (1.0 / (self.num_batches_tracked + 1)).clamp(min=self.momentum)  # []
        second_moment = self.running_var + self.running_mean.square()  # [F]: E[z^2] so far
        mean = torch.lerp(self.running_mean, z.mean(0), weight)  # [B, F] -> [F]
        second_moment = torch.lerp(second_moment, z.square().mean(0), weight)  # [F]
        self.running_mean.copy_(mean)
        self.running_var.copy_((second_moment - mean.square()).clamp(min=0.0))  # [F]
        self.num_batches_tracked.add_(1)


class StarLinear(nn.Module):
    """[B, In] features, [B] domain ids -> [B, Out]: x (W_shared * W_p)^T + b_shared + b_p for row domain p.

    W_shared [Out, In] and b_shared [Out] start as nn.Linear's; W_p [D, Out, In] starts at ones and b_p
    [D, Out] at zeros, so every domain starts from the shared centre.
    """

    def __init__(self, in_features: int, out_features: int, num_domains: int) -> None:
        super().__init__()
        self.shared_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.shared_bias = nn.Parameter(torch.empty(out_features))
        nn.init.kaiming_uniform_(self.shared_weight, a=math.sqrt(5))  # nn.Linear's initialisation
        nn.init.uniform_(self.shared_bias, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))
        self.domain_weight = nn.Parameter(torch.ones(num_domains, out_features, in_features))
        self.domain_bias = nn.Parameter(torch.zeros(num_domains, out_features))

    def weight(self) -> Tensor:
        """[D, Out, In]: every domain's composed weight W_shared * W_p."""
        return self.shared_weight * self.domain_weight  # [Out, In] * [D, Out, In] -> [D, Out, In]

    def bias(self) -> Tensor:
        """[D, Out]: every domain's composed bias b_shared + b_p."""
        return self.shared_bias + self.domain_bias  # [Out] + [D, Out] -> [D, Out]

    def forward(self, x: Tensor, domain: Tensor) -> Tensor:
        every_domain = torch.einsum("bi,doi->bdo", x, self.weight())  # [B, In] x [D, Out, In] -> [B, D, Out]
        rows = torch.arange(x.shape[0], device=x.device)  # [B]
        return every_domain[rows, domain] + self.bias()[domain]  # [B, D, Out] -> [B, Out]; + [B, Out]


class STAR(nn.Module):
    """[B, In] (+ batch.meta[domain_column]) -> {task: [B, 1]}, the task's star + auxiliary logit."""

    reads_batch = True

    def __init__(self, input_dim: int, task_names: Sequence[str], config: STARConfig) -> None:
        super().__init__()
        self.task_names = tuple(task_names)
        self.num_domains, self.domain_column = config.num_domains, config.domain_column
        self.norm = PartitionedNorm(
            input_dim,
            config.num_domains,
            config.norm_statistics == "running",
            config.norm_momentum,
            config.norm_eps,
        )
        widths = (input_dim, *config.hidden)
        self.layers = nn.ModuleList(
            StarLinear(width_in, width_out, config.num_domains)
            for width_in, width_out in zip(widths, widths[1:])
        )
        self.activation = ACTIVATIONS[config.activation]()
        self.star_logits = StarLinear(widths[-1], len(self.task_names), config.num_domains)
        self.domain_embedding = nn.Embedding(config.num_domains, config.domain_embedding_dim)
        self.auxiliary = MLP(config.domain_embedding_dim + input_dim, config.auxiliary)
        self.auxiliary_logits = nn.Linear(self.auxiliary.output_dim, len(self.task_names))
        self.output_dims = {task: 1 for task in self.task_names}

    def forward(self, x: Tensor, batch=None) -> dict[str, Tensor]:
        domain = self.domain_ids(batch, x.shape[0], x.device)  # [B] int64
        z = self.norm(x, domain)  # [B, In] -> [B, In]
        hidden = z
        for layer in self.layers:
            hidden = self.activation(layer(hidden, domain))  # [B, W] -> [B, W']
        star = self.star_logits(hidden, domain)  # [B, W] -> [B, T]
        auxiliary_input = torch.cat([self.domain_embedding(domain), z], dim=1)  # [B, E] ++ [B, In]
        auxiliary = self.auxiliary_logits(self.auxiliary(auxiliary_input))  # [B, E + In] -> [B, T]
        logits = star + auxiliary  # [B, T]
        return {task: logits[:, t : t + 1] for t, task in enumerate(self.task_names)}  # {task: [B, 1]}

    def domain_ids(self, batch, batch_size: int, device: torch.device) -> Tensor:
        """[B] int64 domain ids from batch.meta, checked to be integers in [0, num_domains)."""
        meta = getattr(batch, "meta", None) or {}
        if self.domain_column not in meta:
            if self.num_domains == 1:
                return torch.zeros(batch_size, dtype=torch.int64, device=device)
            raise ValueError(
                f"STAR (num_domains={self.num_domains}) reads each row's domain from batch.meta"
                f"[{self.domain_column!r}], which this batch lacks (meta: {sorted(meta)}): set domain_column "
                "and num_domains in the feature spec"
            )
        values = meta[self.domain_column]  # [B]; the padding batch carries float zeros
        domain = values.long()  # [B]
        if torch.compiler.is_exporting():  # serving checks the column before the program runs (transform)
            return domain
        bad = (domain < 0) | (domain >= self.num_domains) | (domain.to(values.dtype) != values)  # [B] bool
        if bool(bad.any()):
            wrong = values[bad]
            raise ValueError(
                f"STAR: {int(bad.sum())} of {values.shape[0]} rows have a domain id outside the integers "
                f"[0, {self.num_domains}) (model.params.num_domains) in batch.meta[{self.domain_column!r}], "
                f"e.g. {wrong[:5].tolist()}"
            )
        return domain
