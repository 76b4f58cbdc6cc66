"""Offline-report metrics: the AUC family (`exact_auc` in memory, `streaming_auc` in bounded memory,
labels first everywhere), GAUC, normalised entropy, calibration and ECE (the bootstrap of AUC deltas:
mtl_rec.bootstrap). Pure numpy, so jobs that only count (make_logs, check_logs) stay light.

Bounded memory. Every function here reads its rows as chunks (re-iterable sources), so a day that
does not fit in one process is scored in passes over narrow per-row columns, never loaded whole:

- `ScoreHistogram` counts rows, positives and the score sum per *radix key* (the top 16 bits of
  the float32 score; order-preserving for scores >= 0). One pass, 65,536 bins (1.5 MB) whatever N.
- `streaming_auc` is exact (== sklearn.metrics.roc_auc_score): pairs in different keys are counted
  from the histogram; pairs inside a run of keys are counted by gathering that run's rows (at most
  `budget_rows` per gather pass), or, for one key holding more than the budget, from a 65,536-bin
  histogram of the low 16 bits (the exact float32 value). Memory O(budget_rows), passes ~ N / budget.
- `calibration` merges consecutive radix keys into equal-mass bins: the reliability diagram, the
  predicted/observed ratio and the expected calibration error (ECE) come from the histogram alone.
- `GaucStats` is mergeable: GAUC over group-complete partitions (rows hashed by group key) is
  the sum of the partitions' stats, so only one partition is in memory at a time.

Every reported number carries its sample size; a number that cannot be computed is None with a
reason (`metric_value`), never NaN.

Example::

    >>> hist = ScoreHistogram()
    >>> hist.update(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    >>> rows = lambda lo, hi: (np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))   # one chunk
    >>> streaming_auc(hist, rows, None, budget_rows=1000)
    0.75
    >>> stats = group_auc_stats(np.array([1, 1, 2, 2]), np.array([0, 1, 0, 0]), np.array([.2, .9, .1, .3]))
    >>> stats.reductions()
    {'mean': 1.0, 'impression_weighted': 1.0, 'positive_weighted': 1.0}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

RADIX_BITS = 16
RADIX_BINS = 1 << RADIX_BITS


def metric_value(value: float | None, n: int, reason: str = "") -> dict:
    """A reported number with its sample size: {"value", "n"} or {"value": None, "n", "reason"}."""
    if value is None or not np.isfinite(value):
        return {"value": None, "n": int(n), "reason": reason or "not computable"}
    return {"value": float(value), "n": int(n)}


def binary_labels(labels: np.ndarray) -> np.ndarray:
    """[N] labels -> [N] bool positives; anything other than 0 and 1 is an error."""
    labels = np.asarray(labels).ravel()
    positive = labels == 1  # [N] bool
    if not np.all(positive | (labels == 0)):
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(labels)[:10].tolist()}")
    return positive


def radix_keys(scores: np.ndarray) -> np.ndarray:
    """[N] scores >= 0 -> [N] int64 keys in [0, 2^16): the top 16 bits of the float32 bit pattern.

    For non-negative floats the bit pattern orders like the value, so key order is score order."""
    as_float32 = np.asarray(scores, dtype=np.float32).ravel() + np.float32(0.0)  # [N]; -0.0 -> +0.0
    if not np.all(np.isfinite(as_float32)) or np.any(as_float32 < 0):
        raise ValueError("scores must be finite and >= 0 (probabilities)")
    return (as_float32.view(np.uint32) >> RADIX_BITS).astype(np.int64)  # [N]


def _low_keys(scores: np.ndarray) -> np.ndarray:
    """[N] -> [N] int64: the low 16 bits of the float32 pattern (exact value within one radix key)."""
    as_float32 = np.asarray(scores, dtype=np.float32).ravel() + np.float32(0.0)  # [N]
    return (as_float32.view(np.uint32) & np.uint32(RADIX_BINS - 1)).astype(np.int64)  # [N]


def key_bounds(key: int) -> tuple[float, float]:
    """The score interval [low, high) a radix key covers."""
    low = np.array([key << RADIX_BITS], dtype=np.uint32).view(np.float32)[0]
    high = np.array([(key + 1) << RADIX_BITS], dtype=np.uint32).view(np.float32)[0]
    return float(low), float(high)


@dataclass
class ScoreHistogram:
    """Per radix key: rows, positives, score sum. Mergeable; fed chunk by chunk."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(RADIX_BINS, dtype=np.int64))
    positives: np.ndarray = field(default_factory=lambda: np.zeros(RADIX_BINS, dtype=np.int64))
    score_sum: np.ndarray = field(default_factory=lambda: np.zeros(RADIX_BINS, dtype=np.float64))

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Add [N] scores in [0, 1] with [N] labels in {0, 1}."""
        keys = radix_keys(scores)  # [N]
        positive = binary_labels(labels)  # [N]
        if keys.shape != positive.shape:
            raise ValueError(f"scores and labels differ in length: {keys.shape} vs {positive.shape}")
        self.rows += np.bincount(keys, minlength=RADIX_BINS)  # [N] -> [K]
        self.positives += np.bincount(keys[positive], minlength=RADIX_BINS)  # [N+] -> [K]
        self.score_sum += np.bincount(
            keys, weights=np.asarray(scores, np.float64).ravel(), minlength=RADIX_BINS
        )

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())

    @property
    def total_positives(self) -> int:
        return int(self.positives.sum())


def _twice_u_from_counts(pos: np.ndarray, neg: np.ndarray) -> int:
    """2 x Mann-Whitney U from positives and negatives per distinct score, in ascending score order:
    each positive beats every lower negative (2 points) and ties its own score's negatives (1 point)."""
    neg_below = np.cumsum(neg) - neg  # [G] negatives strictly below each score
    return int(np.sum(pos * (2 * neg_below + neg)))  # [G] -> []


def _twice_u_rows(scores: np.ndarray, positive: np.ndarray) -> int:
    """2 x U over a set of rows: sort, count positives and negatives per distinct score."""
    order = np.argsort(scores, kind="stable")  # [n]
    sorted_scores = scores[order]  # [n]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # [G]
    pos = np.add.reduceat(positive[order].astype(np.int64), starts)  # [n] -> [G]
    total = np.diff(np.r_[starts, scores.size])  # [G] rows per distinct score
    return _twice_u_from_counts(pos, total - pos)


def _key_runs(rows: np.ndarray, budget_rows: int) -> list[tuple[int, int, bool]]:
    """Consecutive non-empty keys grouped into runs [lo, hi] of at most budget_rows rows; a key over
    the budget is a run of its own, flagged True (it is resolved by its low bits instead)."""
    runs: list[tuple[int, int, bool]] = []
    lo = hi = -1
    in_run = 0
    for key in np.flatnonzero(rows).tolist():
        count = int(rows[key])
        if count > budget_rows:
            if in_run:
                runs.append((lo, hi, False))
            runs.append((key, key, True))
            lo, in_run = -1, 0
        elif in_run and in_run + count <= budget_rows:
            hi, in_run = key, in_run + count
        else:
            if in_run:
                runs.append((lo, hi, False))
            lo, hi, in_run = key, key, count
    if in_run:
        runs.append((lo, hi, False))
    return runs


def streaming_auc(
    histogram: ScoreHistogram,
    rows_in_keys: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    low_bits_counts: Callable[[int], tuple[np.ndarray, np.ndarray]] | None,
    budget_rows: int,
) -> float | None:
    """Exact ROC AUC (ties count 1/2, == sklearn) from a histogram pass plus bounded gather passes.

    rows_in_keys(lo, hi) -> ([n] scores, [n] labels) of the rows whose radix key is in [lo, hi]
    (n <= budget_rows); low_bits_counts(key) -> ([65536] positives, [65536] negatives) per low-16-bit
    value of the rows of one key holding more than budget_rows (`low_bits_histogram` computes it).
    None when a class is missing.
    """
    pos = histogram.positives
    neg = histogram.rows - pos
    positives, negatives = int(pos.sum()), int(neg.sum())
    if positives == 0 or negatives == 0:
        return None
    twice_u, neg_below = 0, 0
    for lo, hi, oversized in _key_runs(histogram.rows, budget_rows):
        run_pos, run_neg = int(pos[lo : hi + 1].sum()), int(neg[lo : hi + 1].sum())
        twice_u += 2 * run_pos * neg_below  # every positive of the run beats every negative below it
        if run_pos and run_neg:  # pairs inside the run
            if oversized:
                if low_bits_counts is None:
                    raise ValueError(f"radix key {lo} holds {histogram.rows[lo]} rows > budget, no fallback")
                low_pos, low_neg = low_bits_counts(lo)
                twice_u += _twice_u_from_counts(low_pos, low_neg)
            else:
                scores, labels = rows_in_keys(lo, hi)
                twice_u += _twice_u_rows(np.asarray(scores, np.float32), binary_labels(labels))
        neg_below += run_neg
    return twice_u / (2 * positives * negatives)


def low_bits_histogram(chunks, key: int) -> tuple[np.ndarray, np.ndarray]:
    """([65536] positives, [65536] negatives) per low-16-bit value among rows of radix key `key`,
    over an iterable of ([n] scores, [n] labels) chunks."""
    pos = np.zeros(RADIX_BINS, dtype=np.int64)
    total = np.zeros(RADIX_BINS, dtype=np.int64)
    for scores, labels in chunks:
        inside = radix_keys(scores) == key  # [n] bool
        low = _low_keys(np.asarray(scores)[inside])  # [m]
        total += np.bincount(low, minlength=RADIX_BINS)
        pos += np.bincount(low[binary_labels(np.asarray(labels)[inside])], minlength=RADIX_BINS)
    return pos, total - pos


def exact_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC by Mann-Whitney U with average ranks for ties; None if only one class (or no row).

    labels: [N] in {0, 1};  scores: [N] finite floats (any dtype; ranked in float64).
    Equal to sklearn.metrics.roc_auc_score (a tie counts 1/2), in O(N log N). The rank sum is kept
    as an exact int64 of doubled ranks, so the only rounding is the final division.
    """
    positive = binary_labels(labels)  # [N] bool
    scores = np.asarray(scores, dtype=np.float64).ravel()  # [N]
    if scores.shape != positive.shape:
        raise ValueError(f"labels and scores differ in length: {positive.shape} vs {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    rows = positive.size
    positives = int(positive.sum())
    negatives = rows - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(scores, kind="stable")  # [N]
    sorted_scores = scores[order]  # [N] ascending
    starts_group = np.empty(rows, dtype=bool)  # [N]: True where a run of equal scores begins
    starts_group[0] = True
    starts_group[1:] = sorted_scores[1:] != sorted_scores[:-1]
    group_start = np.flatnonzero(starts_group)  # [G] 0-based first index of each tie group
    group_end = np.append(group_start[1:], rows)  # [G] exclusive end
    twice_mean_rank = group_start + 1 + group_end  # [G] int64: 2 x mean of 1-based ranks start+1..end
    positives_per_group = np.add.reduceat(positive[order].astype(np.int64), group_start)  # [N] -> [G]
    twice_rank_sum = int(np.dot(twice_mean_rank, positives_per_group))  # [G] . [G] -> exact int
    twice_u = twice_rank_sum - positives * (positives + 1)  # 2 x Mann-Whitney U of the positives
    return twice_u / (2 * positives * negatives)


def in_memory_auc(labels: np.ndarray, scores: np.ndarray, budget_rows: int = 1 << 62) -> float | None:
    """streaming_auc over in-memory arrays (the same code path the Parquet reader drives); labels
    first, like mtl_rec.metrics.exact_auc and sklearn's roc_auc_score."""
    histogram = ScoreHistogram()
    histogram.update(scores, labels)
    keys = radix_keys(scores)

    def rows_in_keys(lo: int, hi: int):
        inside = (keys >= lo) & (keys <= hi)  # [N] bool
        return scores[inside], labels[inside]

    return streaming_auc(
        histogram, rows_in_keys, lambda key: low_bits_histogram([(scores, labels)], key), budget_rows
    )


def normalized_entropy(mean_logloss: float | None, rows: int, positives: int) -> float | None:
    """NE (He et al., ADKDD 2014): logloss / entropy of the empirical positive rate; None for one class."""
    if mean_logloss is None or rows == 0 or positives in (0, rows):
        return None
    rate = positives / rows
    return mean_logloss / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))


def calibration(histogram: ScoreHistogram, bins: int = 10) -> dict:
    """Reliability bins (equal mass, on radix-key boundaries), predicted/observed ratio and ECE.

    ratio = sum of predictions / number of positives (1 = calibrated on average);
    ECE = sum over bins of rows_b / N * |mean prediction_b - positive rate_b| (Naeini et al., AAAI 2015).
    Returns {"ratio", "ece"} as metric_value dicts and "bins": [{"low", "high", "rows", "positives",
    "mean_pred", "observed"}]."""
    rows, positives = histogram.total_rows, histogram.total_positives
    if rows == 0:
        empty = metric_value(None, 0, "no rows")
        return {"ratio": empty, "ece": empty, "bins": []}
    keys = np.flatnonzero(histogram.rows)  # [k] non-empty keys, ascending score
    rows_before = np.cumsum(histogram.rows[keys]) - histogram.rows[keys]  # [k]
    bin_of_key = np.minimum(rows_before * bins // rows, bins - 1)  # [k] equal-mass assignment
    table = []
    ece = 0.0
    for b in np.unique(bin_of_key).tolist():
        members = keys[bin_of_key == b]  # keys of this bin
        n = int(histogram.rows[members].sum())
        p = int(histogram.positives[members].sum())
        mean_pred = float(histogram.score_sum[members].sum() / n)
        ece += n / rows * abs(mean_pred - p / n)
        low, high = key_bounds(int(members[0]))[0], key_bounds(int(members[-1]))[1]
        table.append(
            {"low": low, "high": high, "rows": n, "positives": p, "mean_pred": mean_pred, "observed": p / n}
        )
    score_sum = float(histogram.score_sum.sum())
    ratio = score_sum / positives if positives else None
    return {
        "ratio": metric_value(ratio, rows, "no positives: observed rate is 0"),
        "ece": metric_value(ece, rows),
        "bins": table,
    }


@dataclass
class GaucStats:
    """Mergeable per-group AUC sums. A group with one class only is skipped and counted."""

    groups: int = 0
    skipped_single_class: int = 0
    scored: int = 0
    auc_sum: float = 0.0
    rows_weighted: float = 0.0
    rows_in_scored: int = 0
    positives_weighted: float = 0.0
    positives_in_scored: int = 0

    def merge(self, other: GaucStats) -> GaucStats:
        return GaucStats(*(a + b for a, b in zip(_fields(self), _fields(other))))

    def reductions(self) -> dict[str, float | None]:
        """mean over scored groups, impression-weighted (by rows), positive-weighted (by positives)."""
        if not self.scored:
            return {"mean": None, "impression_weighted": None, "positive_weighted": None}
        return {
            "mean": self.auc_sum / self.scored,
            "impression_weighted": self.rows_weighted / self.rows_in_scored,
            "positive_weighted": self.positives_weighted / self.positives_in_scored,
        }

    def report(self) -> dict:
        """The three reductions as metric_value dicts plus the group counts."""
        values = self.reductions()
        reason = f"no group has both classes ({self.groups} groups)"
        return {
            "mean": metric_value(values["mean"], self.scored, reason),
            "impression_weighted": metric_value(values["impression_weighted"], self.rows_in_scored, reason),
            "positive_weighted": metric_value(values["positive_weighted"], self.positives_in_scored, reason),
            "groups": self.groups,
            "groups_scored": self.scored,
            "groups_skipped_single_class": self.skipped_single_class,
        }


def _fields(stats: GaucStats) -> tuple:
    return (
        stats.groups,
        stats.skipped_single_class,
        stats.scored,
        stats.auc_sum,
        stats.rows_weighted,
        stats.rows_in_scored,
        stats.positives_weighted,
        stats.positives_in_scored,
    )


def group_auc_stats(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> GaucStats:
    """Per-group exact AUC (ties 1/2) over rows holding WHOLE groups, vectorised: one lexsort."""
    positive = binary_labels(labels)  # [N]
    groups = np.asarray(groups).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not groups.size:
        return GaucStats()
    order = np.lexsort((scores, groups))  # [N] by group, then score
    g, s, y = groups[order], scores[order], positive[order]
    new_group = np.r_[True, g[1:] != g[:-1]]  # [N]
    new_block = new_group | np.r_[True, s[1:] != s[:-1]]  # [N] tie block = same group and score
    block_starts = np.flatnonzero(new_block)  # [T]
    block_pos = np.add.reduceat(y.astype(np.int64), block_starts)  # [N] -> [T]
    block_neg = np.diff(np.r_[block_starts, g.size]) - block_pos  # [T]
    group_of_block = np.cumsum(new_group[block_starts]) - 1  # [T] group index of each block
    neg_before = np.cumsum(block_neg) - block_neg  # [T] negatives before the block, all groups
    first_block = np.flatnonzero(new_group[block_starts])  # [G] first block of each group
    neg_before -= neg_before[first_block][group_of_block]  # [T] ... within its own group only
    twice_u = np.bincount(group_of_block, weights=block_pos * (2 * neg_before + block_neg))  # [T] -> [G]
    pos = np.bincount(group_of_block, weights=block_pos)  # [G]
    rows = np.bincount(group_of_block, weights=block_pos + block_neg)  # [G]
    neg = rows - pos
    both = (pos > 0) & (neg > 0)  # [G]
    auc = twice_u[both] / (2 * pos[both] * neg[both])  # [G']
    return GaucStats(
        groups=int(rows.size),
        skipped_single_class=int((~both).sum()),
        scored=int(both.sum()),
        auc_sum=float(auc.sum()),
        rows_weighted=float(np.dot(auc, rows[both])),
        rows_in_scored=int(rows[both].sum()),
        positives_weighted=float(np.dot(auc, pos[both])),
        positives_in_scored=int(pos[both].sum()),
    )
