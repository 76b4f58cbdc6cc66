"""Early stopping's decisions from validation metrics (mean normalised entropy over the targets)."""

import math

import pytest

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.run import TrainConfig
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


def test_the_tables_phase_begins_where_stopping_would_and_waits_patience_again():
    history: list[dict] = []
    stopping = EarlyStopping(patience=1, history=history, tables_phase=True)
    stopping.update(1, 10, _metrics(0.30, 0.30))
    assert stopping.tables_phase_from is None and not stopping.should_stop
    stopping.update(2, 20, _metrics(0.40, 0.40))  # worse: a run without the phase stops here
    assert stopping.tables_phase_from == 2 and not stopping.should_stop  # it begins instead
    assert EarlyStopping(patience=1, history=list(history)).should_stop  # (without it: stops)
    stopping.update(3, 30, _metrics(0.29, 0.29))  # the tables alone improve on epoch 1
    assert stopping.best["epoch"] == 3 and not stopping.should_stop
    stopping.update(4, 40, _metrics(0.295, 0.29))
    assert stopping.should_stop and stopping.best["epoch"] == 3 and stopping.tables_phase_from == 2
    # a resumed run derives the phase from the checkpoint's history
    again = EarlyStopping(patience=1, history=list(history), tables_phase=True)
    assert again.tables_phase_from == 2 and again.should_stop


def test_a_tables_phase_that_never_improves_waits_patience_from_its_start():
    stopping = EarlyStopping(patience=2, tables_phase=True)
    for epoch, loss in enumerate((0.30, 0.31, 0.32), start=1):  # the phase begins after epoch 3
        stopping.update(epoch, epoch * 10, _metrics(loss, loss))
    assert stopping.tables_phase_from == 3 and not stopping.should_stop
    stopping.update(4, 40, _metrics(0.31, 0.31))
    assert not stopping.should_stop  # one epoch of the phase; patience is 2
    stopping.update(5, 50, _metrics(0.31, 0.31))
    assert stopping.should_stop and stopping.best["epoch"] == 1


def test_the_tables_phase_needs_early_stopping_and_the_table_l2_is_non_negative():
    with pytest.raises(ConfigError, match="tables_phase needs train.early_stopping_patience"):
        TrainConfig(tables_phase=True)
    with pytest.raises(ConfigError, match="table_l2 must be >= 0"):
        TrainConfig(table_l2=-1.0)
    assert TrainConfig(validation_fraction=0.1, early_stopping_patience=1, tables_phase=True).tables_phase
