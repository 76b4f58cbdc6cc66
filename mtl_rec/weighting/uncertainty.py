"""Uncertainty weighting: learnable per-task homoscedastic noise sigma_k weighs each loss.

Alex Kendall, Yarin Gal, Roberto Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
Scene Geometry and Semantics", CVPR 2018. Maximising the likelihood of a Gaussian (regression) or a
temperature-scaled Boltzmann (classification) output with a learnable noise sigma_k gives

    regression:      L_k / (2 sigma_k^2) + log sigma_k
    classification:  L_k / sigma_k^2     + log sigma_k

parametrised, as the paper recommends for stability, by s_k = log sigma_k^2 (so log sigma_k = s_k / 2
and 1 / sigma_k^2 = exp(-s_k)). The per-task form is chosen in config (BCE tasks: classification).

The guard (the total must not go negative). With Kendall's regulariser log sigma the optimum over s of
a exp(-s) L + s / 2 is (1 + log(2 a L)) / 2, negative as soon as L < 1 / (2 e a): a CVR BCE of 0.05 is
enough, and as L -> 0 the total runs to -inf while s runs to -inf and the weight to +inf. Two fixes:

  regularizer "log1p" (default): Lukas Liebel, Marco Koerner, "Auxiliary Tasks in Multi-task Learning",
      arXiv:1805.06334, 2018: the regulariser log(1 + sigma^2) = softplus(s) > 0, so every term
      a exp(-s) L + softplus(s) is > 0 for L >= 0, with no constraint on s; for large sigma it matches
      log sigma^2, and it is smooth everywhere. Chosen as default because it needs no extra knob.
  regularizer "log": Kendall's s / 2, with the regulariser floored at s_min = `min_log_var`:
      s / 2 is replaced by max(s, s_min) / 2. For s < s_min the only gradient left is the loss term's
      -a exp(-s) L <= 0, which pushes s back up, so s stays at about >= s_min and every term is
      >= s_min / 2. The default s_min = 0 (sigma >= 1) makes the total >= 0, at the price of weights
      <= a (the method can only down-weight a task); a lower s_min allows up-weighting and bounds the
      total below by (s_min / 2) sum_k c_k instead.

Static weights c_k multiply each whole task term (loss and regulariser), so s_k's optimum does not
depend on c_k and the effective weight of L_k is c_k a_k exp(-s_k) (what `combine` reports).

Distributed: s is a [K] nn.Parameter outside DDP, identical on every rank at init. Each rank adds its
local losses and the regulariser divided by the world size, so the sum over ranks of the s-gradients
is the gradient of the global objective; `sync_gradients()` performs that sum. The weights are
functions of s only, hence identical on every rank as long as s is.

Example::

    >>> weighting = Uncertainty(tasks, UncertaintyConfig(forms={"price": "regression"}))
    >>> optimizer = torch.optim.Adam([*model_dense_params, *weighting.parameters()])
    >>> total, weights = weighting.combine(losses, step)
    >>> total.backward(); weighting.sync_gradients(); optimizer.step()
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import TaskConfig
from mtl_rec.distributed import world_size
from mtl_rec.weighting.base import Weighting

Form = Literal["classification", "regression"]
FORM_FACTOR = {"classification": 1.0, "regression": 0.5}  # a_k: L / sigma^2 vs L / (2 sigma^2)


@dataclass(frozen=True)
class UncertaintyConfig:
    """form:  the likelihood of every task not in `forms`: classification (L / sigma^2) or
           regression (L / (2 sigma^2))
    forms: {task: form} per-task override
    regularizer: "log1p" (log(1 + sigma^2), Liebel & Koerner 2018; default) or "log" (Kendall's
           log sigma, floored at min_log_var / 2)
    init_log_var: the initial s = log sigma^2 of every task (0: weight a_k)
    min_log_var: the floor s_min of the "log" regulariser (ignored by "log1p"); 0 keeps the total >= 0
    """

    form: Form = "classification"
    forms: dict[str, Form] = field(default_factory=dict)
    regularizer: Literal["log1p", "log"] = "log1p"
    init_log_var: float = 0.0
    min_log_var: float = 0.0

    def __post_init__(self) -> None:
        for name in ("init_log_var", "min_log_var"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name} must be finite, got {getattr(self, name)}")


class Uncertainty(Weighting):
    """total = sum_k c_k (a_k exp(-s_k) L_k^r + reg(s_k) / world), s = log_vars [K] learnable.

    log_vars: [K] nn.Parameter s_k = log sigma_k^2 (float32; move with .to(device) beside the model)
    """

    def __init__(
        self,
        tasks: Sequence[TaskConfig],
        config: UncertaintyConfig,
        label_priors: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(tasks)
        unknown = sorted(set(config.forms) - set(self.task_names))
        if unknown:
            raise ConfigError(
                f"uncertainty: forms for unknown tasks {unknown}; tasks: {', '.join(self.task_names)}"
            )
        self.config = config
        self.form_factors = torch.tensor(
            [FORM_FACTOR[config.forms.get(name, config.form)] for name in self.task_names],
            dtype=torch.float64,
        )  # [K] a_k
        self.log_vars = nn.Parameter(torch.full((len(self.task_names),), float(config.init_log_var)))  # [K]

    def regularizer(self, log_vars: Tensor) -> Tensor:
        """[K] s -> [K] reg(s): softplus(s) = log(1 + sigma^2), or max(s, s_min) / 2 = max(log sigma, .)."""
        if self.config.regularizer == "log1p":
            return nn.functional.softplus(log_vars)  # [K], > 0
        return 0.5 * log_vars.clamp(min=self.config.min_log_var)  # [K], >= s_min / 2

    def combine(self, losses: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        self.check_losses(losses)
        local = torch.stack([losses[name] for name in self.task_names])  # K x [] -> [K], in the graph
        log_vars = self.log_vars.to(local.device)  # [K]
        factors = (self.static_weights * self.form_factors).to(local)  # [K] c_k a_k
        precision = torch.exp(-log_vars).to(local.dtype)  # [K] 1 / sigma^2
        # The regulariser is the same on every rank: 1/world of it each, so the SUM of the s-gradients
        # over ranks (sync_gradients) is the gradient of the global objective.
        regularizer = self.regularizer(log_vars).to(local.dtype) / world_size()  # [K]
        static = self.static_weights.to(local)  # [K] c_k
        total = (factors * precision * local).sum() + (static * regularizer).sum()  # [K] -> []
        weights = self.static_weights * self.form_factors * torch.exp(-self.log_vars.detach().cpu().double())
        return total, dict(zip(self.task_names, weights.tolist(), strict=True))
