"""The `weighting:` section of a run config: which method combines the task losses, and its params.

    weighting:
      method: dwa                  # a key of mtl_rec.weighting.METHODS
      params: {window: 50, temperature: 2.0}

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


@dataclass(frozen=True)
class WeightingConfig:
    """method: a registered weighting method (mtl_rec.weighting.METHODS); default `fixed`, the
            static TaskConfig.weight of each task
    params: that method's settings, checked against its config dataclass (unknown keys are errors)
    """

    method: str = "fixed"
    params: dict[str, Any] = field(default_factory=dict)
