"""Dense-feature statistics computed on the training dates and saved with the run.

The same statistics must scale training, evaluation and later scoring: recomputing them on the
evaluation days would leak and shift the inputs. Moments are accumulated as (count, sum, sum of
squares, min, max) so blocks can be reduced in any order.

Example::

    >>> stats = FeatureStats.from_moments(["price"], count=[4], total=[10.0], total_sq=[30.0],
    ...                                   minimum=[1.0], maximum=[4.0])
    >>> stats.features["price"].mean, round(stats.features["price"].std, 4)
    (2.5, 1.118)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class DenseStats:
    count: int
    mean: float
    std: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class FeatureStats:
    """Per dense feature (after its transform, before scaling): moments over the training rows."""

    features: dict[str, DenseStats]
    rows: int = 0
    dates: tuple[str, ...] = ()

    @classmethod
    def from_moments(
        cls, names, count, total, total_sq, minimum, maximum, rows: int = 0, dates=()
    ) -> FeatureStats:
        features = {}
        for i, name in enumerate(names):
            n = int(count[i])
            mean = total[i] / n if n else 0.0
            var = max(total_sq[i] / n - mean * mean, 0.0) if n else 0.0
            features[name] = DenseStats(n, float(mean), math.sqrt(var), float(minimum[i]), float(maximum[i]))
        return cls(features, rows, tuple(dates))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        data = json.loads(Path(path).read_text())
        return cls(
            {k: DenseStats(**v) for k, v in data["features"].items()}, data["rows"], tuple(data["dates"])
        )
