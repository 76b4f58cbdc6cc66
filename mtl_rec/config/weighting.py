"""The `weighting:` section of a run config: which method combines the task losses, and its params.

    weighting:
      method: dwa                  # a key of mtl_rec.weighting.METHODS
      params: {window: 50, temperature: 2.0}
      groups: {column: segment}    # optional: one weight vector per value of the spec's domain column

`params` is checked against the method's own config dataclass when the run config is assembled
(mtl_rec.run_config, on the driver, not on the workers; mtl_rec.weighting.method_config): an unknown
method or key, a wrong type or a bad value is a ConfigError that names the valid choices. This
module stays a leaf: it imports no method, and no torch.

Example::

    >>> method_config(WeightingConfig("dwa", {"temperature": 2.0}))      # mtl_rec.weighting
    DWAConfig(window=100, temperature=2.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtl_rec.config.features import FeatureSpec
from mtl_rec.config.loader import ConfigError


@dataclass(frozen=True)
class WeightGroupsConfig:
    """Task weights per row group (mtl_rec.weighting.groups).

    column: the feature spec's `domain_column`: an integer column (a meta column or a sparse
            feature) whose values lie in [0, num_domains), checked with every model input (rows
            outside are bad rows). Each value gets its own weight vector, computed by the method
            from that group's losses. Set the spec's domain column with --spec-set where needed.
    """

    column: str


@dataclass(frozen=True)
class WeightingConfig:
    """method: a registered weighting method (mtl_rec.weighting.METHODS); default `fixed`, the
            static TaskConfig.weight of each task
    params: that method's settings, checked against its config dataclass (unknown keys are errors)
    groups: one weight vector per row group instead of one for every row; None: one
    """

    method: str = "fixed"
    params: dict[str, Any] = field(default_factory=dict)
    groups: WeightGroupsConfig | None = None


def weight_group_count(cfg: WeightingConfig, spec: FeatureSpec) -> int:
    """G, the number of weight groups of `cfg` on `spec` (0: one weight vector for every row); a
    ConfigError unless the group column is the spec's domain column."""
    if cfg.groups is None:
        return 0
    if not spec.domain_column:
        raise ConfigError(
            f"weighting.groups.column={cfg.groups.column!r}: the feature spec has no domain_column; set "
            f"it, e.g. --spec-set domain_column={cfg.groups.column} --spec-set num_domains=G"
        )
    if cfg.groups.column != spec.domain_column:
        raise ConfigError(
            f"weighting.groups.column={cfg.groups.column!r} must be the feature spec's domain_column "
            f"({spec.domain_column!r}), whose values are checked to lie in [0, num_domains)"
        )
    return spec.num_domains
