"""mtl_rec.bootstrap: the paired bootstrap of AUC deltas covers the known delta, narrows by the
sampled fraction, and with users resampled matches the true sampling spread of clustered rows."""

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mtl_rec.bootstrap import paired_bootstrap_auc_delta


def _binormal(rng, n, separations):
    """Labels and one score per separation d: AUC = Phi(d / sqrt 2) exactly, in the population."""
    labels = (rng.uniform(size=n) < 0.3).astype(np.int8)
    noise = rng.normal(size=(len(separations), n))
    return labels, [1 / (1 + np.exp(-(d * labels + noise[i]))) for i, d in enumerate(separations)]


def test_paired_bootstrap_interval_covers_the_known_delta():
    true_delta = norm.cdf(1.2 / np.sqrt(2)) - norm.cdf(1.0 / np.sqrt(2))  # 0.0351
    covered = 0
    trials = 30
    for seed in range(trials):
        labels, (a, b) = _binormal(np.random.default_rng(seed), 3000, [1.2, 1.0])
        ci = paired_bootstrap_auc_delta(labels, a, b, replicates=150, seed=seed)
        assert ci["delta"] == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b), abs=1e-12)
        assert ci["low"] < ci["delta"] < ci["high"]
        covered += ci["low"] <= true_delta <= ci["high"]
    assert covered >= 0.8 * trials  # a 95% interval; 30 trials
    # the same model against itself: a zero-width interval at 0
    labels, (a,) = _binormal(np.random.default_rng(99), 2000, [1.0])
    same = paired_bootstrap_auc_delta(labels, a, a.copy(), replicates=50)
    assert same["low"] == same["high"] == 0.0


def test_subsampled_bootstrap_narrows_by_the_sampled_fraction():
    labels, (a, b) = _binormal(np.random.default_rng(7), 4000, [1.2, 1.0])
    full = paired_bootstrap_auc_delta(labels, a, b, replicates=200, seed=1)
    scaled = paired_bootstrap_auc_delta(labels, a, b, replicates=200, seed=1, population_rows=16000)
    assert scaled["high"] - scaled["low"] == pytest.approx((full["high"] - full["low"]) / 2, rel=1e-9)


def _clustered(rng, users: int = 200, rows_per_user: int = 25):
    """Rows of one user share how much better model a ranks than b (a per-user gain): correlated rows."""
    groups = np.repeat(np.arange(users), rows_per_user)  # [n]
    labels = (rng.uniform(size=groups.size) < 0.3).astype(np.int8)
    gain = rng.normal(0.2, 1.0, users)[groups]  # [U] -> [n]
    noise = rng.normal(size=groups.size)
    return groups, labels, labels * (1.0 + gain) + noise, labels * 1.0 + noise


def test_user_bootstrap_matches_the_sampling_spread_where_a_row_bootstrap_is_too_narrow():
    """The spread of the AUC delta over 200 independent draws of users is the truth; the user
    (cluster) bootstrap of one draw recovers it, the row bootstrap comes out about 2x too narrow."""
    deltas = []
    for seed in range(200):
        _, labels, a, b = _clustered(np.random.default_rng(1000 + seed))
        deltas.append(roc_auc_score(labels, a) - roc_auc_score(labels, b))
    true_width = 2 * norm.ppf(0.975) * np.std(deltas)  # of a 95% interval
    for seed in range(3):
        groups, labels, a, b = _clustered(np.random.default_rng(seed))
        by_user = paired_bootstrap_auc_delta(labels, a, b, replicates=300, seed=seed, groups=groups)
        by_row = paired_bootstrap_auc_delta(labels, a, b, replicates=300, seed=seed)
        assert by_user["groups"] == 200 and by_row["groups"] is None
        assert by_user["delta"] == by_row["delta"]
        assert 0.65 < (by_user["high"] - by_user["low"]) / true_width < 1.5
        assert (by_row["high"] - by_row["low"]) / true_width < 0.6
