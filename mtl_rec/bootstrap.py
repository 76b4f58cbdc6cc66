"""Paired bootstrap confidence intervals of AUC deltas, resampling rows or whole users. Pure numpy.

Used by the offline report (jobs/report/compute.py) for the interval of AUC(run) - AUC(baseline)
that the promotion gate reads: both models' scores on the same rows, resampled together.

Example::

    >>> ci = paired_bootstrap_auc_delta(labels, run_scores, baseline_scores, groups=user_ids)
    >>> ci["low"] <= ci["delta"] <= ci["high"], ci["groups"]
    (True, 2000)
"""

from __future__ import annotations

import numpy as np

from mtl_rec.evaluation import binary_labels


class _WeightedAuc:
    """AUC of fixed rows under per-row integer weights (bootstrap counts); sorts once, O(N) per call."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray) -> None:
        self.order = np.argsort(scores, kind="stable")  # [N]
        sorted_scores = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # [G]
        self.positive = positive[self.order].astype(np.float64)  # [N]

    def __call__(self, weights: np.ndarray) -> float:
        w = weights[self.order].astype(np.float64)  # [N]
        pos = np.add.reduceat(w * self.positive, self.starts)  # [N] -> [G]
        neg = np.add.reduceat(w, self.starts) - pos  # [G]
        return float(np.sum(pos * (2 * (np.cumsum(neg) - neg) + neg)) / (2 * pos.sum() * neg.sum()))


def paired_bootstrap_auc_delta(
    labels: np.ndarray,
    scores: np.ndarray,
    baseline_scores: np.ndarray,
    replicates: int = 200,
    level: float = 0.95,
    seed: int = 0,
    population_rows: int | None = None,
    groups: np.ndarray | None = None,
) -> dict:
    """Confidence interval of AUC(scores) - AUC(baseline_scores), resampling rows (pairs kept together),
    or with `groups` [n] (a user id per row) whole groups: a cluster bootstrap.

    Rows of one user are not independent (the same taste, the same model errors): resampling rows
    then treats n correlated rows as n independent ones and the interval comes out too narrow, the
    more so the more rows a user has. Resampling users with replacement, each drawn user bringing
    all its rows, keeps that correlation inside every replicate.

    With population_rows = N > n (the rows given are a uniform sample of N), the interval is the
    m-out-of-n bootstrap's: delta_sample + sqrt(n / N) * quantiles(delta* - delta_sample), which for
    an asymptotically normal statistic like AUC estimates the full-data interval around the full
    delta; the caller re-centres it on the exact full-data delta. With N = n it is the percentile
    interval (the caller samples whole groups at the same fraction, so n / N is also the share of
    groups). Returns {"low", "high", "delta", "level", "replicates", "rows", "population_rows",
    "groups"}, or {"reason"} when a class is missing.
    """
    positive = binary_labels(labels)  # [n]
    n = positive.size
    population_rows = population_rows or n
    if positive.all() or not positive.any():
        return {"low": None, "high": None, "reason": "one class only", "rows": int(n)}
    model = _WeightedAuc(np.asarray(scores, np.float64), positive)
    baseline = _WeightedAuc(np.asarray(baseline_scores, np.float64), positive)
    ones = np.ones(n)
    delta = model(ones) - baseline(ones)
    units = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]  # [n]
    num_units = int(units.max()) + 1
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(replicates):
        draws = np.bincount(rng.integers(0, num_units, num_units), minlength=num_units)  # [U] resample counts
        weights = draws[units]  # [U] -> [n]: every row of a drawn group, as often as the group is drawn
        if not (weights * positive).any() or not (weights * ~positive).any():
            continue
        deltas.append(model(weights) - baseline(weights))
    spread = (np.asarray(deltas) - delta) * np.sqrt(n / population_rows)  # [R]
    tail = (1 - level) / 2
    low, high = np.quantile(spread, [tail, 1 - tail])
    return {
        "low": float(delta + low),
        "high": float(delta + high),
        "delta": float(delta),
        "level": level,
        "replicates": len(deltas),
        "rows": int(n),
        "population_rows": int(population_rows),
        "groups": None if groups is None else num_units,
    }
