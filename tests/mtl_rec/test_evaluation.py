"""mtl_rec.evaluation against sklearn / numpy references: exact AUC in bounded memory, GAUC (three
reductions), NE, calibration and ECE."""

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from mtl_rec.evaluation import (
    ScoreHistogram,
    calibration,
    group_auc_stats,
    in_memory_auc,
    metric_value,
    normalized_entropy,
    radix_keys,
)


def _scores_with_ties(rng, n):
    """float32 probabilities with heavy ties (rounded) and a dense cluster inside one radix key."""
    rough = np.round(rng.uniform(0, 1, n), 2)
    cluster = np.float32(0.5) + rng.integers(0, 50, n).astype(np.float32) * np.float32(2**-24)
    return np.where(rng.uniform(size=n) < 0.3, cluster, rough).astype(np.float32)


@pytest.mark.parametrize("budget_rows", [10**9, 700, 50])
def test_streaming_auc_equals_sklearn_under_any_memory_budget(budget_rows):
    rng = np.random.default_rng(0)
    scores = _scores_with_ties(rng, 4000)
    labels = (rng.uniform(size=4000) < np.clip(scores, 0.05, 0.95)).astype(np.int8)
    # the budget forces gathers of key runs and, for the 0.5 cluster (~1,200 rows, one key), low bits
    assert (radix_keys(scores) == radix_keys(np.float32([0.5]))[0]).sum() > 700
    assert in_memory_auc(labels, scores, budget_rows) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-12
    )


def test_streaming_auc_single_class_is_none():
    assert in_memory_auc(np.array([1, 1]), np.float32([0.1, 0.2])) is None


def test_radix_keys_order_like_scores():
    scores = np.sort(np.random.default_rng(1).uniform(0, 1, 1000)).astype(np.float32)
    assert np.all(np.diff(radix_keys(scores)) >= 0)
    with pytest.raises(ValueError, match=">= 0"):
        radix_keys(np.array([0.1, -0.2]))


def _gauc_reference(groups, labels, scores):
    aucs, rows, positives, skipped = [], [], [], 0
    for g in np.unique(groups):
        inside = groups == g
        y = labels[inside]
        if y.min() == y.max():
            skipped += 1
            continue
        aucs.append(roc_auc_score(y, scores[inside]))
        rows.append(inside.sum())
        positives.append(y.sum())
    aucs = np.array(aucs)
    return {
        "mean": aucs.mean(),
        "impression_weighted": np.average(aucs, weights=rows),
        "positive_weighted": np.average(aucs, weights=positives),
    }, skipped


def test_gauc_three_reductions_equal_a_sklearn_loop_and_merge_over_partitions():
    rng = np.random.default_rng(2)
    n = 6000
    groups = rng.integers(0, 400, n) * 7919  # sparse ids
    labels = (rng.uniform(size=n) < 0.3).astype(np.int8)
    scores = np.round(rng.uniform(size=n) * 0.5 + labels * 0.2, 2)  # ties inside groups
    reference, skipped = _gauc_reference(groups, labels, scores)

    whole = group_auc_stats(groups, labels, scores)
    for name, value in whole.reductions().items():
        assert value == pytest.approx(reference[name], abs=1e-12), name
    assert whole.skipped_single_class == skipped > 0
    assert whole.groups == len(np.unique(groups)) == whole.scored + whole.skipped_single_class

    # group-complete partitions (as the report's hash buckets) merge to the same numbers
    bucket = groups % 3
    parts = [group_auc_stats(groups[bucket == b], labels[bucket == b], scores[bucket == b]) for b in range(3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for name, value in merged.reductions().items():
        assert value == pytest.approx(reference[name], abs=1e-12), name
    report = merged.report()
    assert report["groups_skipped_single_class"] == skipped
    assert report["impression_weighted"]["n"] == sum((groups == g).sum() for g in np.unique(groups)) - sum(
        (groups == g).sum()
        for g in np.unique(groups)
        if labels[groups == g].min() == labels[groups == g].max()
    )


def test_gauc_with_no_scorable_group_says_so():
    stats = group_auc_stats(np.array([1, 1, 2]), np.array([0, 0, 1]), np.array([0.1, 0.2, 0.3]))
    report = stats.report()
    assert report["mean"]["value"] is None and "no group" in report["mean"]["reason"]
    assert report["groups_skipped_single_class"] == 2


def test_normalized_entropy_matches_its_formula():
    rng = np.random.default_rng(3)
    labels = (rng.uniform(size=5000) < 0.2).astype(np.int8)
    probs = np.clip(0.2 + 0.3 * (labels - 0.2) + rng.normal(0, 0.05, 5000), 0.01, 0.99)
    rate = labels.mean()
    expected = log_loss(labels, probs) / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    ne = normalized_entropy(log_loss(labels, probs), labels.size, int(labels.sum()))
    assert ne == pytest.approx(expected, rel=1e-12) and ne < 1
    # predicting the base rate everywhere is NE = 1 by construction
    assert normalized_entropy(
        log_loss(labels, np.full(5000, rate)), 5000, int(labels.sum())
    ) == pytest.approx(1)
    assert normalized_entropy(0.3, 10, 0) is None


def _histogram(scores, labels):
    hist = ScoreHistogram()
    for part in range(4):  # chunked updates, as from Parquet row groups
        hist.update(scores[part::4], labels[part::4])
    return hist


def test_perfectly_calibrated_predictions_have_ratio_one_and_ece_zero():
    rng = np.random.default_rng(4)
    p = rng.beta(1, 8, 400_000).astype(np.float32)
    labels = (rng.uniform(size=p.size) < p).astype(np.int8)
    result = calibration(_histogram(p, labels), bins=10)
    assert result["ratio"]["value"] == pytest.approx(1.0, abs=0.02)
    assert result["ece"]["value"] < 0.005 and result["ece"]["n"] == p.size
    bins = result["bins"]
    assert len(bins) == 10 and sum(b["rows"] for b in bins) == p.size
    assert all(abs(b["rows"] - p.size / 10) < 0.02 * p.size for b in bins)  # equal mass
    assert all(b["low"] <= b["mean_pred"] < b["high"] for b in bins)


def test_miscalibrated_predictions_have_their_known_ece():
    rng = np.random.default_rng(5)
    truth = rng.uniform(0.1, 0.5, 400_000)
    labels = (rng.uniform(size=truth.size) < truth).astype(np.int8)
    halved = (truth / 2).astype(np.float32)  # every bin predicts half its rate: ECE = E[p] / 2 = 0.15
    result = calibration(_histogram(halved, labels), bins=10)
    assert result["ece"]["value"] == pytest.approx(0.15, abs=0.005)
    assert result["ratio"]["value"] == pytest.approx(0.5, abs=0.01)


def test_calibration_without_positives_says_why():
    result = calibration(_histogram(np.float32([0.1, 0.2, 0.3, 0.4]), np.zeros(4, np.int8)))
    assert result["ratio"]["value"] is None and "no positives" in result["ratio"]["reason"]
    assert metric_value(float("nan"), 3)["value"] is None
