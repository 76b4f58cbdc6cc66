"""The `weighting:` section of a run config: which method combines the task losses, and its params.

    weighting:
      method: dwa                  # a key of mtl_rec.weighting.METHODS
      params: {window: 50, temperature: 2.0}

`params` is checked against the method's own config dataclass when the config loads (on the driver,
not on the workers): an unknown method or key, a wrong type or a bad value is a ConfigError that
names the valid choices.

Example::

    >>> WeightingConfig("dwa", {"temperature": 2.0}).method_config()
    DWAConfig(window=100, temperature=2.0)
    >>> WeightingConfig("gradnom")
    Traceback (most recent call last):
    ConfigError: unknown weighting method 'gradnom'; valid: fixed, ple_schedule, uncertainty, ...
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mtl_rec.config.loader import ConfigError, from_dict


@dataclass(frozen=True)
class WeightingConfig:
    """method: a registered weighting method (mtl_rec.weighting.METHODS); default `fixed`, the
            static TaskConfig.weight of each task
    params: that method's settings, checked against its config dataclass (unknown keys are errors)
    """

    method: str = "fixed"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.method_config()  # fail at config load

    def method_config(self) -> Any:
        """`params` as the chosen method's typed config dataclass."""
        # Imported here: the registry imports the method files; this module must stay importable alone.
        from mtl_rec.weighting import METHODS

        if self.method not in METHODS:
            raise ConfigError(f"unknown weighting method {self.method!r}; valid: {', '.join(METHODS)}")
        _, config_class = METHODS[self.method]
        if self.params and not dataclasses.fields(config_class):
            raise ConfigError(
                f"weighting method {self.method!r} takes no params, got {', '.join(map(repr, self.params))}"
            )
        try:
            return from_dict(config_class, self.params, "weighting.params")
        except ConfigError as e:
            raise ConfigError(f"weighting method {self.method!r}: {e}") from e
