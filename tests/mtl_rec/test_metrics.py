"""Metrics: exact AUC and logloss against sklearn, eval targets of the presets, and accumulation over
uneven gloo ranks (one with no row of a space) against sklearn on the concatenation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sklearn.metrics import log_loss, roc_auc_score

from mtl_rec.config.features import load_feature_spec
from mtl_rec.config.model import parse_tasks
from mtl_rec.metrics import (
    EvalTarget,
    MetricAccumulator,
    calibration_summary,
    eval_targets,
    exact_auc,
    logloss,
    required_spaces,
)
from mtl_rec.run_config import load_run_config
from tests.harness import run_on_two_ranks
from tests.mtl_rec.test_losses import funnel_labels, make_batch, outputs_from_logits

REPO = Path(__file__).resolve().parents[2]
SPEC = load_feature_spec(REPO / "jobs/configs/features.yaml")

# ---------------------------------------------------------------- exact AUC and logloss vs sklearn


def _random_case(seed: int, rows: int, distinct_scores: int | None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    labels[:2] = [0, 1]  # both classes
    if distinct_scores is None:
        scores = rng.random(rows)
    else:  # heavy ties: few distinct values, correlated with the label
        scores = np.floor((rng.random(rows) + 0.3 * labels) * distinct_scores) / distinct_scores
    return labels, scores


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("rows", "distinct_scores"),
    [(2, None), (3, None), (50, None), (20_000, None), (20_000, 3), (20_000, 50), (7, 2), (100_001, 1000)],
)
def test_exact_auc_equals_sklearn(seed, rows, distinct_scores):
    labels, scores = _random_case(seed, rows, distinct_scores)
    assert exact_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12, rel=0)
    float32_labels = labels.astype(np.float32)  # as the accumulator stores them
    assert exact_auc(float32_labels, scores.astype(np.float32)) == pytest.approx(
        roc_auc_score(labels, scores.astype(np.float32)), abs=1e-12, rel=0
    )


def test_exact_auc_edge_cases():
    assert exact_auc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == 0.5  # all scores equal
    assert exact_auc(np.array([0, 1]), np.array([0.1, 0.2])) == 1.0
    assert exact_auc(np.array([1, 0]), np.array([0.1, 0.2])) == 0.0
    assert exact_auc(np.array([0, 1, 1]), np.array([0.2, 0.2, 0.9])) == 0.75
    assert exact_auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])) is None  # one class
    assert exact_auc(np.array([]), np.array([])) is None
    with pytest.raises(ValueError, match="0 or 1"):
        exact_auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        exact_auc(np.array([0, 1]), np.array([0.1, np.nan]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logloss_equals_sklearn_including_clipped_extremes(dtype):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    probs = rng.random(5000)
    probs[:6] = [0.0, 1.0, 1e-12, 1 - 1e-12, 1e-30, 0.5]  # clipped to [eps, 1 - eps]
    labels[:6] = [1, 0, 1, 0, 1, 1]
    probs = probs.astype(dtype)
    tolerance = 1e-12 if dtype == np.float64 else 1e-6  # sklearn computes float32 inputs in float32
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs, labels=[0, 1]), rel=tolerance)
    one_class = np.ones(10, dtype=np.int64)
    assert logloss(one_class, probs[:10]) == pytest.approx(
        log_loss(one_class, probs[:10], labels=[0, 1]), rel=tolerance
    )
    with pytest.raises(ValueError):
        logloss(np.array([0, 1]), np.array([0.5, 1.5]))


# ---------------------------------------------------------------- calibration: pred/obs and ECE by hand


def test_calibration_summary_by_hand():
    # 20 rows, two per value: 10 equal-mass bins of 2 rows, one per value, whatever the row order.
    values = np.float32([0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95])
    positives = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]  # per value: observed rates 0 0 0 0 0 .5 .5 .5 1 1
    preds = np.repeat(values, 2)  # [20]
    labels = np.array([[1] * k + [0] * (2 - k) for k in positives]).ravel()  # [20]
    order = np.random.default_rng(0).permutation(20)
    result = calibration_summary(labels[order], preds[order])
    # pred/obs: sum of predictions 2 x 5.0 = 10 over 7 positives.
    assert result["pred_over_obs"] == pytest.approx(10 / 7, rel=1e-6)
    # ECE: each bin holds 2/20 of the rows; |mean pred - rate| per bin
    # .05 .15 .25 .35 .45 | .05 .15 .25 | .15 .05  -> sum 1.9, times 1/10.
    assert result["ece"] == pytest.approx(0.19, rel=1e-6)
    # Perfect on average but not per bin: pred/obs 1, ECE the mean gap.
    flat = calibration_summary(np.array([0, 1, 0, 1]), np.float32([0.5, 0.5, 0.5, 0.5]))
    assert flat == {"pred_over_obs": pytest.approx(1.0), "ece": pytest.approx(0.0)}
    split = calibration_summary(np.array([0, 0, 1, 1]), np.float32([0.25, 0.25, 0.75, 0.75]))
    assert split["pred_over_obs"] == pytest.approx(1.0) and split["ece"] == pytest.approx(0.25)


def test_calibration_summary_without_positives_or_rows():
    none_positive = calibration_summary(np.zeros(4, np.int8), np.float32([0.1, 0.2, 0.3, 0.4]))
    assert none_positive["pred_over_obs"] is None  # no observed rate to divide by
    assert none_positive["ece"] == pytest.approx(0.25, rel=1e-6)  # every bin's gap is its prediction
    assert calibration_summary(np.zeros(0), np.zeros(0, np.float32)) == {"pred_over_obs": None, "ece": None}


# ---------------------------------------------------------------- targets and spaces of the presets


def _summary(targets):
    return [(t.name, t.task, t.label, t.space, t.conditional, t.oracle_column) for t in targets]


def test_eval_targets_of_esmm_preset():
    cfg = load_run_config(REPO / "jobs/configs/esmm.yaml")
    assert _summary(eval_targets(cfg.tasks, cfg.feature_spec())) == [
        ("ctr", "ctr", "click", "all", False, "_truth_p_click"),
        ("ctcvr", "ctcvr", "conversion", "all", False, "_truth_p_ctcvr"),
        ("cvr", "ctcvr", "conversion", "click == 1", True, "_truth_p_conversion_given_click"),
    ]
    assert list(required_spaces(cfg.tasks, cfg.feature_spec())) == ["all", "click == 1"]


def test_eval_targets_of_mmoe_preset():
    cfg = load_run_config(REPO / "jobs/configs/mmoe.yaml")
    assert _summary(eval_targets(cfg.tasks, cfg.feature_spec())) == [
        ("ctr", "ctr", "click", "all", False, "_truth_p_click"),
        ("cvr", "cvr", "conversion", "click == 1", False, "_truth_p_conversion_given_click"),
        ("cart", "cart", "cart", "click == 1", False, "_truth_p_cart_given_click"),
    ]
    assert list(required_spaces(cfg.tasks, cfg.feature_spec())) == ["all", "click == 1"]


def test_deeper_chain_scores_each_conditional_over_its_parents_positives():
    tasks = parse_tasks(
        [
            {"name": "ctr", "label": "click"},
            {"name": "ctcart", "label": "cart", "parent": "ctr", "conditional_name": "cart_rate"},
            {
                "name": "ctcvr",
                "label": "conversion",
                "parent": "ctcart",
                "conditional_name": "cvr_after_cart",
            },
        ]
    )
    conditional = [(t.name, t.space, t.oracle_column) for t in eval_targets(tasks, SPEC) if t.conditional]
    assert conditional == [
        ("cart_rate", "click == 1", "_truth_p_cart_given_click"),
        ("cvr_after_cart", "cart == 1", "_truth_p_conversion_given_cart"),
    ]
    assert list(required_spaces(tasks, SPEC)) == ["all", "click == 1", "cart == 1"]
    clash = parse_tasks(
        [
            {"name": "ctr", "label": "click"},
            {"name": "x", "label": "cart", "parent": "ctr", "conditional_name": "ctr"},
        ]
    )
    with pytest.raises(ValueError, match="used twice"):
        eval_targets(clash, SPEC)


# ---------------------------------------------------------------- accumulation, 1 and 2 ranks

METRIC_TASKS = parse_tasks(
    [
        {"name": "ctr", "label": "click"},
        {"name": "ctcvr", "label": "conversion", "parent": "ctr", "conditional_name": "cvr"},
        {"name": "cart", "label": "cart", "space": "click == 1"},
        {"name": "never", "label": "click", "space": "click == 0 and cart == 1"},  # no row anywhere
    ]
)
PARENT_OF = {"ctr": None, "ctcvr": "ctr", "cart": None, "never": None}
TRUTH_COLUMNS = (
    "_truth_p_click",
    "_truth_p_ctcvr",
    "_truth_p_conversion_given_click",
    "_truth_p_cart_given_click",
)
RANK_BATCHES = (((0, 7),), ((7, 13), (13, 20)))  # rank 0: one batch, no click; rank 1: two batches


def _rows(start: int, end: int):
    """Outputs and batch of rows [start, end) of one fixed 20-row dataset (elementwise, so any slicing
    gives bitwise the same values as the whole)."""
    generator = torch.Generator().manual_seed(2)
    logits = {task: torch.randn(20, generator=generator) for task in PARENT_OF}  # {task: [20]}
    truth = {column: torch.rand(20, generator=generator, dtype=torch.float64) for column in TRUTH_COLUMNS}
    labels = funnel_labels()
    outputs = outputs_from_logits({t: v[start:end] for t, v in logits.items()}, PARENT_OF)
    spaces = required_spaces(METRIC_TASKS, SPEC)
    batch = make_batch(
        {k: v[start:end] for k, v in labels.items()}, spaces, meta={k: v[start:end] for k, v in truth.items()}
    )
    return outputs, batch


def _expected_by_sklearn() -> dict[str, dict]:
    outputs, batch = _rows(0, 20)
    expected = {}
    for target in eval_targets(METRIC_TASKS, SPEC):
        mask = batch.masks[target.space].numpy()
        preds = target.predictions(outputs).float().numpy()[mask]
        labels = batch.labels[target.label].numpy()[mask]
        has_both = 0 < labels.sum() < labels.size
        truth = batch.meta[target.oracle_column].float().numpy()[mask] if target.oracle_column else None
        expected[target.name] = {
            "auc": roc_auc_score(labels, preds) if has_both else None,
            "logloss": log_loss(labels, preds, labels=[0, 1]) if labels.size else None,
            "rows": int(mask.sum()),
            "positives": int(labels.sum()),
            "oracle_auc": roc_auc_score(labels, truth) if has_both and truth is not None else None,
            "space": target.space,
            "mean_pred": float(preds.mean()) if labels.size else None,
            "mean_label": float(labels.mean()) if labels.size else None,
            "pred_over_obs": float(preds.astype(np.float64).sum() / labels.sum()) if labels.sum() else None,
            # checked by hand above; here: the accumulator feeds it exactly the target's rows
            "ece": calibration_summary(labels, preds)["ece"],
        }
    return expected


def _assert_metrics_equal(actual: dict[str, dict], expected: dict[str, dict]) -> None:
    assert list(actual) == list(expected)
    for name, metrics in expected.items():
        assert list(actual[name]) == list(metrics), name
        for key, value in metrics.items():
            if value is None or isinstance(value, str | int):
                assert actual[name][key] == value, (name, key)
            else:  # logloss: sklearn works in float32 on float32 predictions
                assert actual[name][key] == pytest.approx(value, rel=1e-6, abs=1e-12), (name, key)


def _accumulate(batches) -> dict[str, dict]:
    accumulator = MetricAccumulator(eval_targets(METRIC_TASKS, SPEC))
    for start, end in batches:
        accumulator.update(*_rows(start, end))
    return accumulator.compute()


def test_accumulator_over_batches_equals_sklearn_on_all_rows():
    expected = _expected_by_sklearn()
    assert expected["cvr"]["auc"] is not None and expected["never"]["rows"] == 0
    assert expected["cvr"]["oracle_auc"] is not None and expected["cart"]["oracle_auc"] is not None
    _assert_metrics_equal(_accumulate([(0, 7), (7, 13), (13, 20)]), expected)


def test_accumulator_drops_oracle_when_a_batch_lacks_its_column():
    accumulator = MetricAccumulator(
        [EvalTarget("ctr", "ctr", "click", "all", oracle_column="_truth_p_click")]
    )
    outputs, batch = _rows(0, 10)
    accumulator.update(outputs, batch)
    batch.meta.pop("_truth_p_click")
    accumulator.update(outputs, batch)
    result = accumulator.compute()["ctr"]
    assert result["rows"] == 20 and result["oracle_auc"] is None


def _uneven_ranks_worker(rank: int, expected: dict[str, dict]) -> None:
    result = _accumulate(RANK_BATCHES[rank])
    _assert_metrics_equal(result, expected)
    both = [None, None]
    dist.all_gather_object(both, result)
    assert both[0] == both[1]  # bitwise the same on every rank


@pytest.mark.distributed
def test_two_uneven_ranks_give_the_metrics_of_all_rows():
    labels = funnel_labels()
    assert labels["click"][:7].sum() == 0  # rank 0 holds no row of "click == 1" (cart, cvr)
    run_on_two_ranks(_uneven_ranks_worker, _expected_by_sklearn())
