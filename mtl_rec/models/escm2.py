"""ESCM2: ESMM plus a counterfactual regulariser that debiases the CVR tower over the entire space.

Hao Wang, Tai-Wei Chang, Tianqiao Liu, Jianmin Huang, Zhichao Chen, Chao Yu, Ruopeng Li, Wei Chu,
"ESCM2: Entire Space Counterfactual Multi-Task Model for Post-Click Conversion Rate Estimation",
SIGIR 2022.

ESMM's CVR tower, trained only through p(click) x p(conversion | click), is biased; ESCM2 treats the
click o as the treatment, the CTR estimate o_hat as its propensity and adds a causal risk of the CVR
tower over all impressions D, with e = BCE(conversion, CVR prediction) per row:

    IPS:  R = 1/|D| sum_D  o e / o_hat
    DR:   R = 1/|D| sum_D [ e_hat + o (e - e_hat) / o_hat ]          error part
            + 1/|D| sum_D   o (e - e_hat)^2 / o_hat                  imputation part

e_hat >= 0 is an imputation tower's prediction of the CVR error (softplus of an MLP on the CVR
task's backbone features). The loss is L_ctr + lambda_g L_ctcvr + lambda_c R: the first two are the
tasks (ESMM: a CTR task and a CTCVR task chained to it, their TaskConfig weights), lambda_c is
`weight` here. Any registered backbone sits underneath (`backbone`, `backbone_params`); its own
auxiliary losses are kept.

Computed in log space: e from logsigmoid of the CVR logit, 1 / o_hat = exp(-max(log o_hat,
log min_propensity)), log o_hat = log_p of the CTR task. Choices where the paper leaves room:
- the propensity is clipped below at `min_propensity` (IPS weight <= 1 / min_propensity) and is a
  constant of the regulariser (detached): it weights rows, and its gradient would only push the CTR
  tower up on clicked rows to shrink their weight;
- e_hat keeps its gradient in the error part (as the paper writes it), and e is a constant in the
  imputation part: the imputation tower learns the CVR tower's error, not the other way round.
Unclicked rows give the CVR tower no gradient (o = 0): IPS is exactly 0 there, DR is e_hat alone.
(PaddleRec's reference code detaches the propensity in IPS only and backpropagates DR through all of
o_hat, e and e_hat; the weight lambda_c and the joint sum error + imputation are as there.)

Example::

    >>> config = ESCM2Config(backbone="mmoe", backbone_params={"num_experts": 2}, form="dr",
    ...                      ctr_task="ctr", cvr_task="ctcvr")
    >>> backbone = ESCM2(32, ["ctr", "ctcvr"], config)
    >>> features = backbone(torch.randn(8, 32))                 # the inner MMoE's {task: [B, H]}
    >>> outputs = heads(features)                                # ESMM chain: ctcvr's parent is ctr
    >>> sorted(backbone.auxiliary_losses(outputs, batch))        # [B] per-row terms over "all"
    ['escm2_dr', 'escm2_imputation']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError, from_dict
from mtl_rec.config.model import MLPConfig
from mtl_rec.models.layers import MLP


@dataclass(frozen=True)
class ESCM2Config:
    """backbone, backbone_params: the registered backbone underneath and its params (default MMoE)
    form:             "ips" or "dr" (adds the imputation tower)
    ctr_task:         the task whose prediction is the click propensity (default: the first task)
    cvr_task:         the task whose logit is the post-click CVR: chained to ctr_task (ESMM, the
                      paper's setting) or a root task on `click == 1` (default: the second task)
    click_label, conversion_label: the batch labels used as treatment o and outcome r
    weight:           lambda_c, the regulariser's coefficient
    min_propensity:   o_hat is clipped below at this (IPS weights <= 1 / min_propensity)
    imputation:       the DR imputation tower's MLP (a Linear + softplus follows)
    """

    backbone: str = "mmoe"
    backbone_params: dict[str, Any] = field(default_factory=dict)
    form: Literal["ips", "dr"] = "ips"
    ctr_task: str | None = None
    cvr_task: str | None = None
    click_label: str = "click"
    conversion_label: str = "conversion"
    weight: float = 0.1
    min_propensity: float = 0.01
    imputation: MLPConfig = MLPConfig(hidden=(64,))

    def __post_init__(self) -> None:
        from mtl_rec.models import MODELS  # the registry imports this file

        if self.backbone == "escm2" or self.backbone not in MODELS:
            others = ", ".join(name for name in MODELS if name != "escm2")
            raise ConfigError(f"escm2 backbone {self.backbone!r} is not a registered backbone ({others})")
        from_dict(MODELS[self.backbone][1], self.backbone_params, "model.params.backbone_params")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"weight must be >= 0, got {self.weight}")
        if not 0 < self.min_propensity <= 1:
            raise ConfigError(f"min_propensity must be in (0, 1], got {self.min_propensity}")

    def inner_config(self) -> Any:
        from mtl_rec.models import MODELS

        return from_dict(MODELS[self.backbone][1], self.backbone_params, "model.params.backbone_params")


def counterfactual_terms(
    cvr_logit: Tensor,
    log_propensity: Tensor,
    click: Tensor,
    conversion: Tensor,
    min_propensity: float,
    imputed_error: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-row ESCM2 risks (module doc), all [B]: IPS {"ips"}, or DR {"dr", "imputation"} with imputed_error.

    cvr_logit:      [B] logit of p(conversion | click)
    log_propensity: [B] log o_hat, the CTR estimate (detached here)
    click, conversion: [B] 0/1 labels
    imputed_error:  [B] e_hat >= 0, or None for IPS
    """
    clicked = click > 0.5  # [B] bool, the treatment o
    # e = BCE(r, sigmoid(l)) = -(r logsigmoid(l) + (1 - r) logsigmoid(-l)): exact for any finite logit
    error = -(conversion * F.logsigmoid(cvr_logit) + (1.0 - conversion) * F.logsigmoid(-cvr_logit))  # [B]
    clipped = log_propensity.detach().clamp(min=math.log(min_propensity))  # [B] log max(o_hat, clip)
    inverse_propensity = torch.exp(-clipped)  # [B] 1 / o_hat <= 1 / min_propensity
    zero = torch.zeros_like(error)  # where, not a product: unclicked rows get exactly 0 and no gradient
    if imputed_error is None:
        return {"ips": torch.where(clicked, error * inverse_propensity, zero)}  # [B]
    deviation = error - imputed_error  # [B] delta = e - e_hat
    return {
        "dr": imputed_error + torch.where(clicked, deviation * inverse_propensity, zero),  # [B]
        "imputation": torch.where(
            clicked, (error.detach() - imputed_error).square() * inverse_propensity, zero
        ),  # [B]
    }


class ESCM2(nn.Module):
    """[B, In] -> the inner backbone's {task: [B, H_task]}; auxiliary_losses adds the counterfactual risk.

    auxiliary_losses -> {"escm2_ips": [B]} or {"escm2_dr": [B], "escm2_imputation": [B]} (weight applied,
    averaged over "all"), plus the inner backbone's own terms.
    """

    def __init__(self, input_dim: int, task_names: Sequence[str], config: ESCM2Config) -> None:
        from mtl_rec.models import MODELS

        super().__init__()
        self.task_names = tuple(task_names)
        if len(self.task_names) < 2 and (config.ctr_task is None or config.cvr_task is None):
            raise ConfigError(f"escm2 needs a CTR and a CVR task, got tasks {list(self.task_names)}")
        self.ctr_task = config.ctr_task or self.task_names[0]
        self.cvr_task = config.cvr_task or self.task_names[1]
        for role, task in (("ctr_task", self.ctr_task), ("cvr_task", self.cvr_task)):
            if task not in self.task_names:
                raise ConfigError(
                    f"escm2 {role} {task!r} is not a task ({', '.join(self.task_names)}); "
                    f"set model.params.{role}"
                )
        if self.ctr_task == self.cvr_task:
            raise ConfigError(f"escm2 ctr_task and cvr_task are both {self.ctr_task!r}")
        self.config = config
        backbone_class, _ = MODELS[config.backbone]
        self.backbone = backbone_class(input_dim, self.task_names, config.inner_config())
        self.output_dims = dict(self.backbone.output_dims)
        self.reads_batch = bool(getattr(self.backbone, "reads_batch", False))
        self.imputation: nn.Module | None = None
        if config.form == "dr":
            mlp = MLP(self.output_dims[self.cvr_task], config.imputation)
            self.imputation = nn.Sequential(mlp, nn.Linear(mlp.output_dim, 1))
        self.auxiliary_spaces = {
            **getattr(self.backbone, "auxiliary_spaces", {}),
            **{name: "all" for name in self._own_terms()},
        }
        self._imputed_error: Tensor | None = None  # [B], from forward, read by auxiliary_losses

    def _own_terms(self) -> tuple[str, ...]:
        return ("escm2_ips",) if self.config.form == "ips" else ("escm2_dr", "escm2_imputation")

    def forward(self, x: Tensor, batch=None) -> dict[str, Tensor]:
        # {task: [B, H_task]} from the inner backbone, which reads the batch too if it needs it (STAR)
        features = self.backbone(x, batch) if self.reads_batch else self.backbone(x)
        if self.imputation is not None:
            # [B, H_cvr] -> [B, 1] -> [B]: e_hat >= 0 without clipping (an error is a BCE, unbounded above)
            self._imputed_error = F.softplus(self.imputation(features[self.cvr_task]).squeeze(-1))
        return features

    def auxiliary_losses(self, outputs, batch) -> dict[str, Tensor]:
        """{name: [B]} the weighted counterfactual risk per row (module doc) + the inner backbone's terms."""
        missing = [
            label
            for label in (self.config.click_label, self.config.conversion_label)
            if label not in batch.labels
        ]
        if missing:
            raise KeyError(
                f"escm2: the batch has no label {missing} (it has {sorted(batch.labels)}); "
                "set model.params.click_label / conversion_label"
            )
        if self.imputation is not None and self._imputed_error is None:
            raise RuntimeError("escm2 (dr): auxiliary_losses reads the imputation of the forward just run")
        cvr_logit = outputs.logit[self.cvr_task]  # [B]
        terms = counterfactual_terms(
            cvr_logit,
            outputs.log_p[self.ctr_task],  # [B] log o_hat
            batch.labels[self.config.click_label].to(cvr_logit.dtype),  # [B]
            batch.labels[self.config.conversion_label].to(cvr_logit.dtype),  # [B]
            self.config.min_propensity,
            self._imputed_error,
        )
        self._imputed_error = None  # one forward, one read
        result = {f"escm2_{name}": self.config.weight * term for name, term in terms.items()}  # [B] each
        if hasattr(self.backbone, "auxiliary_losses"):
            result.update(self.backbone.auxiliary_losses(outputs, batch))
        return result
