"""Multi-task backbones, task heads and the full model.

One file per backbone; this dict registers them. Adding an architecture = a new file defining the
backbone and its config dataclass + one line in MODELS. Every backbone has the same contract:

    __init__(input_dim: int, task_names: Sequence[str], config: <its config dataclass>)
    output_dims: dict[str, int]                      {task: H_task}
    forward(x: Tensor[B, input_dim]) -> {task: Tensor[B, H_task]}

Two optional hooks, for architectures that need more than x (MultiTaskModel checks for them):

    reads_batch = True                     forward(x, batch) instead: the Batch too (STAR reads the
                                           domain column from batch.meta)
    auxiliary_losses(outputs, batch) -> {name: Tensor}
                                           regulariser terms after the heads ran: a [B] per-row term
                                           (averaged over the rows of auxiliary_spaces[name], "all"
                                           by default, with the GLOBAL count) or a [] penalty on
                                           parameters; coefficients applied. They are added to the
                                           weighted task loss unweighted (mtl_rec.losses.auxiliary_losses)

The full model, MultiTaskModel, is in mtl_rec.models.model (it imports TorchRec and this registry).

Example::

    >>> backbone = build_backbone(ModelConfig(arch="mmoe", params={"num_experts": 2}), 32, ["ctr", "cvr"])
    >>> backbone.output_dims
    {'ctr': 128, 'cvr': 128}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from mtl_rec.config.loader import ConfigError, from_dict
from mtl_rec.config.model import ModelConfig
from mtl_rec.models.adatt import AdaTT, AdaTTConfig
from mtl_rec.models.aitm import AITM, AITMConfig
from mtl_rec.models.asymmetric import Asymmetric, AsymmetricConfig
from mtl_rec.models.cgc import CGC, CGCConfig
from mtl_rec.models.cross_stitch import CrossStitch, CrossStitchConfig
from mtl_rec.models.escm2 import ESCM2, ESCM2Config
from mtl_rec.models.heads import TaskHeads, TaskOutputs, entire_space, log1mexp
from mtl_rec.models.mmoe import MMoE, MMoEConfig
from mtl_rec.models.omoe import OMoE, OMoEConfig
from mtl_rec.models.ple import PLE, PLEConfig
from mtl_rec.models.shared_bottom import SharedBottom, SharedBottomConfig
from mtl_rec.models.snr import SNR, SNRConfig
from mtl_rec.models.star import STAR, STARConfig

MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "shared_bottom": (SharedBottom, SharedBottomConfig),
    "omoe": (OMoE, OMoEConfig),
    "mmoe": (MMoE, MMoEConfig),
    "cgc": (CGC, CGCConfig),
    "ple": (PLE, PLEConfig),
    "cross_stitch": (CrossStitch, CrossStitchConfig),
    "asymmetric": (Asymmetric, AsymmetricConfig),
    "star": (STAR, STARConfig),
    "snr": (SNR, SNRConfig),
    "aitm": (AITM, AITMConfig),
    "escm2": (ESCM2, ESCM2Config),
    "adatt": (AdaTT, AdaTTConfig),
}


def arch_config(model_cfg: ModelConfig) -> Any:
    """`model_cfg.params` as the chosen backbone's typed config dataclass; a ConfigError that names
    the registered archs or the valid keys otherwise."""
    if model_cfg.arch not in MODELS:
        raise ConfigError(f"unknown model arch {model_cfg.arch!r}; registered: {', '.join(MODELS)}")
    _, config_class = MODELS[model_cfg.arch]
    return from_dict(config_class, model_cfg.params, "model.params")


def build_backbone(model_cfg: ModelConfig, input_dim: int, task_names: Sequence[str]) -> nn.Module:
    """The registered backbone `model_cfg.arch`, its params checked by arch_config."""
    config = arch_config(model_cfg)  # ConfigError naming the registered archs / valid keys
    backbone_class, _ = MODELS[model_cfg.arch]
    return backbone_class(input_dim, task_names, config)


__all__ = [
    "AdaTT",
    "AdaTTConfig",
    "AITM",
    "AITMConfig",
    "ESCM2",
    "ESCM2Config",
    "SNR",
    "SNRConfig",
    "Asymmetric",
    "AsymmetricConfig",
    "CGC",
    "CrossStitch",
    "CrossStitchConfig",
    "STARConfig",
    "MODELS",
    "MMoE",
    "OMoE",
    "PLE",
    "STAR",
    "CGCConfig",
    "MMoEConfig",
    "OMoEConfig",
    "PLEConfig",
    "SharedBottom",
    "SharedBottomConfig",
    "TaskHeads",
    "TaskOutputs",
    "arch_config",
    "build_backbone",
    "entire_space",
    "log1mexp",
]
