"""Sample spaces: the rows a task is trained and evaluated on, as a predicate over labels.

Grammar: `all`, or conditions `label == 0|1` (also `!=`) joined by `and`. Deliberately tiny: a space
must be computable identically in the pipeline (numpy) and readable in a report.

Example::

    >>> space = SampleSpace.parse("click == 1 and cart == 0")
    >>> space.mask({"click": np.array([1, 1, 0]), "cart": np.array([0, 1, 0])}).tolist()
    [True, False, False]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mtl_rec.config.loader import ConfigError

_CONDITION = re.compile(r"^\s*(\w+)\s*(==|!=)\s*([01])\s*$")


@dataclass(frozen=True)
class SampleSpace:
    """Rows where every (label, op, value) condition holds; no conditions = all rows."""

    conditions: tuple[tuple[str, str, int], ...] = ()

    @classmethod
    def parse(cls, text: str, labels: tuple[str, ...] | None = None) -> SampleSpace:
        text = text.strip()
        if text in ("", "all"):
            return cls()
        conditions = []
        for part in re.split(r"\s+and\s+", text):
            match = _CONDITION.match(part)
            if match is None:
                raise ConfigError(
                    f"sample space {text!r}: cannot parse {part!r}; "
                    "expected `all` or `label == 0|1` joined by `and`"
                )
            label, op, value = match.group(1), match.group(2), int(match.group(3))
            if labels is not None and label not in labels:
                raise ConfigError(
                    f"sample space {text!r} names {label!r}, which is not a label ({', '.join(labels)})"
                )
            conditions.append((label, op, value))
        return cls(tuple(conditions))

    @property
    def is_all(self) -> bool:
        return not self.conditions

    def mask(self, labels: Mapping[str, np.ndarray]) -> np.ndarray:
        """[B] bool mask from {label: [B] array}."""
        size = len(next(iter(labels.values())))
        mask = np.ones(size, dtype=bool)
        for label, op, value in self.conditions:
            hit = labels[label] == value  # [B]
            mask &= hit if op == "==" else ~hit
        return mask

    def __str__(self) -> str:
        return " and ".join(f"{lab} {op} {val}" for lab, op, val in self.conditions) or "all"


def space_key(text: str) -> str:
    """The canonical name of a sample space, used as the key of Batch.masks ("all", "click == 1")."""
    return str(SampleSpace.parse(text))
