"""Early stopping's decisions from validation metrics (mean normalised entropy over the targets)."""

import math

import pytest

from mtl_rec.early_stopping import EarlyStopping, validation_score


def _metrics(ctr_logloss: float, cvr_logloss: float) -> dict:
    return {
        "ctr": {"logloss": ctr_logloss, "rows": 1000, "positives": 100},
        "cvr": {"logloss": cvr_logloss, "rows": 100, "positives": 10},
        "empty": {"logloss": None, "rows": 0, "positives": 0},  # no rows: no NE, not averaged in
    }


def test_score_is_the_mean_normalised_entropy_of_the_targets_that_have_one():
    entropy = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))  # both targets have a 10% base rate
    assert validation_score(_metrics(0.3, 0.2)) == pytest.approx((0.3 + 0.2) / 2 / entropy)
    assert validation_score({"x": {"logloss": None, "rows": 0, "positives": 0}}) is None


def test_stops_after_patience_worse_epochs_and_keeps_the_best():
    history: list[dict] = []
    stopping = EarlyStopping(patience=2, history=history)
    assert stopping.update(1, 10, _metrics(0.30, 0.30)) is True
    assert stopping.update(2, 20, _metrics(0.28, 0.29)) is True  # better
    assert stopping.update(3, 30, _metrics(0.29, 0.30)) is False and not stopping.should_stop
    assert stopping.update(4, 40, _metrics(0.28, 0.29)) is False  # equal is not better
    assert stopping.should_stop and stopping.best["epoch"] == 2 and stopping.best["step"] == 20
    # the state is the history: a resumed run rebuilds the same decision from the checkpoint's copy
    again = EarlyStopping(patience=2, history=list(history))
    assert again.should_stop and again.best["epoch"] == 2


def test_patience_zero_never_stops():
    stopping = EarlyStopping(patience=0)
    stopping.update(1, 1, _metrics(0.2, 0.2))
    stopping.update(2, 2, _metrics(0.5, 0.5))
    assert not stopping.should_stop and stopping.best["epoch"] == 1


def test_auc_metric_ranks_epochs_by_mean_auc_alone():
    def metrics(ctr_auc, cvr_auc, ctr_logloss):
        return {
            "ctr": {"auc": ctr_auc, "logloss": ctr_logloss, "rows": 1000, "positives": 100},
            "cvr": {"auc": cvr_auc, "logloss": 0.3, "rows": 100, "positives": 10},
            "empty": {"auc": None, "logloss": None, "rows": 0, "positives": 0},  # not averaged in
        }

    assert validation_score(metrics(0.7, 0.8, 0.3), "auc") == pytest.approx(-0.75)
    stopping = EarlyStopping(patience=1, metric="auc")
    assert stopping.update(1, 10, metrics(0.70, 0.80, 0.30)) is True
    # a better ranking with a worse logloss (a more confident model): better by AUC, worse by NE
    assert stopping.update(2, 20, metrics(0.72, 0.80, 0.35)) is True
    assert validation_score(metrics(0.72, 0.80, 0.35)) > validation_score(metrics(0.70, 0.80, 0.30))
    assert stopping.update(3, 30, metrics(0.71, 0.80, 0.25)) is False and stopping.should_stop
    assert stopping.best["epoch"] == 2
