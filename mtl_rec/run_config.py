"""A run config, assembled: the YAML read (mtl_rec.config, a leaf), then the backbone and the
weighting method looked up in their registries and their params checked, on the driver, before any
worker starts.

mtl_rec.config imports no model and no weighting method (and no torch); this module is where the
config meets the registries (mtl_rec.models.MODELS, mtl_rec.weighting.METHODS).

Example::

    >>> cfg = load_run_config("jobs/configs/mmoe.yaml", ["model.params.num_experts=6"])
    >>> load_run_config("jobs/configs/mmoe.yaml", ["model.arch=mmmoe"])
    Traceback (most recent call last):
    ConfigError: jobs/configs/mmoe.yaml: unknown model arch 'mmmoe'; registered: shared_bottom, omoe, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtl_rec.config.loader import ConfigError, from_dict
from mtl_rec.config.run import RunConfig, read_run_config
from mtl_rec.models import arch_config
from mtl_rec.weighting import method_config


def check_registered(cfg: RunConfig) -> RunConfig:
    """ConfigError unless cfg's backbone and weighting method are registered and their params valid."""
    arch_config(cfg.model)
    method_config(cfg.weighting)
    return cfg


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Preset YAML + `--set` overrides -> a RunConfig checked in full (mtl_rec.config.run and the
    registries); every error names the file."""
    cfg = read_run_config(path, overrides)
    try:
        return check_registered(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def run_config_from_dict(data: Any, where: str = "") -> RunConfig:
    """A RunConfig from plain data (a checkpoint's config.yaml), checked in full."""
    return check_registered(from_dict(RunConfig, data, where))
