"""jobs.report.compute on prediction files written here (no Ray): with a tiny memory budget the report
takes its bounded path (chunked reads, gather passes, low-bit histograms, one group bucket at a time)
and must still equal sklearn on the same rows; and the gate's decision on both sides of the threshold."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from jobs.report.compute import ReportSettings, compute_metrics
from jobs.report.gate import gate_check
from jobs.report.store import PredictionStore
from mtl_rec.metrics import EvalTarget

DAYS = ("2026-11-20", "2026-11-21")
TARGETS = [
    EvalTarget("ctr", "ctr", "click", "all", oracle_column="_truth_p_click"),
    EvalTarget("cvr", "cvr", "conversion", "click == 1"),
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Two days x 2 group buckets of predictions, scores rounded to 2 decimals (heavy ties)."""
    root = tmp_path_factory.mktemp("predictions")
    rng = np.random.default_rng(0)
    files, tables = {}, []
    for day_index, day in enumerate(DAYS):
        n = 3000
        truth = rng.beta(2, 5, n).astype(np.float32)
        click = (rng.uniform(size=n) < truth).astype(np.int8)
        slices = rng.choice([0, 1, 2, 3], n, p=[0.5, 0.3, 0.15, 0.05]).astype(np.int64)
        conversion = (click & (rng.uniform(size=n) < 0.3) & (slices != 3)).astype(np.int8)  # none in 3
        columns = {
            "id": np.arange(n, dtype=np.int64) + day_index * n,
            "group": rng.integers(0, 150, n).astype(np.int64),
            "slice": slices,
            "label.click": click,
            "label.conversion": conversion,
            "mask.all": np.ones(n, bool),
            "mask.click == 1": click == 1,
            "truth._truth_p_click": truth,
            "pred.ctr": np.round(np.clip(truth + rng.normal(0, 0.1, n), 0, 1), 2).astype(np.float32),
            "baseline.ctr": np.round(rng.uniform(size=n), 2).astype(np.float32),
            "pred.cvr": np.round(rng.uniform(size=n) * 0.5 + conversion * 0.2, 2).astype(np.float32),
            "baseline.cvr": np.round(rng.uniform(size=n), 2).astype(np.float32),
        }
        table = pa.table(columns)
        tables.append((day, table))
        files[day] = []
        for bucket in range(2):
            path = root / f"day={day}" / f"bucket-{bucket:04d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.filter(pa.array(columns["group"] % 2 == bucket)), path, row_group_size=700)
            files[day].append(path)
    return files, pa.concat_tables([t for _, t in tables]), dict(tables)


def _np(table, name):
    return table[name].to_numpy()  # keeps float32: logloss clips at float32's epsilon, as sklearn does


def _gauc(groups, labels, scores):
    aucs, rows, positives = [], [], []
    for g in np.unique(groups):
        inside = groups == g
        if 0 < labels[inside].sum() < inside.sum():
            aucs.append(roc_auc_score(labels[inside], scores[inside]))
            rows.append(inside.sum())
            positives.append(labels[inside].sum())
    return np.mean(aucs), np.average(aucs, weights=rows), np.average(aucs, weights=positives)


@pytest.mark.parametrize("budget_rows", [10**7, 60])
def test_bounded_report_equals_sklearn_on_the_same_rows(written, budget_rows):
    files, columns, by_day = written
    settings = ReportSettings(budget_rows=budget_rows, bootstrap_replicates=50, bootstrap_rows=2000)
    store = PredictionStore(files, chunk_rows=min(budget_rows, 500))
    metrics, slices, curves = compute_metrics(store, TARGETS, ["ctr", "cvr"], "slice", 3, settings)

    assert [s["value"] for s in slices["values"]] == [0, 1, 2]
    assert slices["other_rows"] == (_np(columns, "slice") == 3).sum()
    for target in TARGETS:
        block = metrics[target.name]["overall"]
        mask = _np(columns, f"mask.{target.space}")
        labels = _np(columns, f"label.{target.label}")[mask]
        run, base = _np(columns, f"pred.{target.name}")[mask], _np(columns, f"baseline.{target.name}")[mask]
        assert block["rows"] == mask.sum() and block["positives"] == labels.sum()
        assert block["run"]["auc"]["value"] == pytest.approx(roc_auc_score(labels, run), abs=1e-12)
        assert block["baseline"]["auc"]["value"] == pytest.approx(roc_auc_score(labels, base), abs=1e-12)
        assert block["run"]["logloss"]["value"] == pytest.approx(log_loss(labels, run), rel=1e-6)
        mean, by_rows, by_positives = _gauc(_np(columns, "group")[mask], labels, run)
        gauc = block["run"]["gauc"]
        assert gauc["mean"]["value"] == pytest.approx(mean, abs=1e-12)
        assert gauc["impression_weighted"]["value"] == pytest.approx(by_rows, abs=1e-12)
        assert gauc["positive_weighted"]["value"] == pytest.approx(by_positives, abs=1e-12)
        ci = block["auc_delta_ci"]
        assert ci["low"] < block["delta"]["auc"]["value"] < ci["high"]
        for day, table in by_day.items():
            day_mask = table[f"mask.{target.space}"].to_numpy()
            day_labels = table[f"label.{target.label}"].to_numpy()[day_mask]
            day_run = table[f"pred.{target.name}"].to_numpy()[day_mask]
            assert metrics[target.name]["by_day"][day]["run"]["auc"]["value"] == pytest.approx(
                roc_auc_score(day_labels, day_run), abs=1e-12
            )
        in_slice = _np(columns, "slice")[mask] == 2
        assert metrics[target.name]["by_slice"]["2"]["run"]["auc"]["value"] == pytest.approx(
            roc_auc_score(labels[in_slice], run[in_slice]), abs=1e-12
        )
        sliced = metrics[target.name]["by_slice"]["2"]
        exact_delta = roc_auc_score(labels[in_slice], run[in_slice]) - roc_auc_score(
            labels[in_slice], base[in_slice]
        )
        assert sliced["auc_delta_ci"]["delta"] == pytest.approx(exact_delta, abs=1e-12)  # centred on it
        assert sliced["auc_delta_ci"]["low"] < exact_delta < sliced["auc_delta_ci"]["high"]
        assert sliced["auc_delta_ci"]["rows"] == in_slice.sum()  # the slice's rows, not all rows
        assert curves[target.name]["run"]["tpr"][-1] == 1.0
    ctr = metrics["ctr"]["overall"]
    truth = _np(columns, "truth._truth_p_click")
    assert ctr["oracle_auc"]["value"] == pytest.approx(
        roc_auc_score(_np(columns, "label.click"), truth), abs=1e-12
    )
    assert metrics["cvr"]["overall"]["oracle_auc"] == {
        "value": None,
        "n": ctr["positives"],
        "reason": "no truth column in the logs",
    }


def test_a_slice_without_positives_says_so(written, tmp_path):
    files, columns, _ = written
    store = PredictionStore(files)
    metrics, _, _ = compute_metrics(
        store, TARGETS[1:], [], "slice", 4, ReportSettings(bootstrap_replicates=10)
    )
    assert metrics["cvr"]["by_slice"]["3"]["positives"] == 0
    for block in metrics["cvr"]["by_slice"].values():
        for entry in (block["run"]["auc"], block["run"]["calibration"]["ratio"]):
            assert (entry["value"] is None) == (block["positives"] == 0)
            if entry["value"] is None:
                assert "no positives" in entry["reason"]
    assert "baseline" not in metrics["cvr"]["overall"]


def _metrics(run_auc, base_auc):
    return {"overall": {"run": {"auc": {"value": run_auc}}, "baseline": {"auc": {"value": base_auc}}}}


def test_gate_fails_exactly_above_the_threshold():
    # The AUC check alone (the calibration and logloss checks: tests/jobs/test_gate.py).
    metrics = {"ctr": _metrics(0.7400, 0.7450), "cvr": _metrics(0.8000, 0.7900), "cart": _metrics(None, 0.6)}
    auc_only = {"calibration_band": None, "max_logloss_increase": None}
    gate = gate_check({k: metrics[k] for k in ("ctr", "cvr")}, 0.0051, **auc_only)
    assert gate["passed"] and gate["failures"] == [] and gate["compared"] == ["ctr", "cvr"]
    gate = gate_check({k: metrics[k] for k in ("ctr", "cvr")}, 0.0049, **auc_only)
    assert not gate["passed"]
    assert gate["failures"] == [
        {
            "task": "ctr",
            "check": "auc",
            "auc": 0.74,
            "baseline_auc": 0.745,
            "drop": pytest.approx(0.005),
            "allowed": 0.0049,
        }
    ]
    # a task whose AUC cannot be computed while the baseline's can is a failure, not a pass
    assert [f["task"] for f in gate_check(metrics, 1.0, **auc_only)["failures"]] == ["cart"]


def test_markdown_and_html_say_why_instead_of_nan(written):
    from jobs.report.render import render_html, render_markdown

    files, _, _ = written
    metrics, slices, _ = compute_metrics(
        PredictionStore(files), TARGETS, [], "slice", 4, ReportSettings(bootstrap_replicates=10)
    )
    report = {
        "run": {"dir": "runs/x", "arch": "mmoe", "world_size": 2},
        "baseline": None,
        "data": {
            "days": list(DAYS),
            "rows_scored": 6000,
            "rows_in_files": 6000,
            "rows_quarantined": 0,
            "group_key": "user_id",
        },
        "settings": {"confidence": 0.95},
        "slices": slices,
        "metrics": metrics,
        "gate": None,
    }
    markdown = render_markdown(report, {"roc_ctr": "plots/roc_ctr.png"})
    page = render_html(report, {"roc_ctr": b"\x89PNG fake"})
    empty = [v for v, b in metrics["cvr"]["by_slice"].items() if b["positives"] == 0]
    for text in (markdown, page):
        assert "nan" not in text.lower().replace("n/a", "")
        assert f"{metrics['ctr']['overall']['run']['auc']['value']:.4f}" in text
        assert empty == ["3"] and "n/a (no positives)" in text
    assert "![roc_ctr](plots/roc_ctr.png)" in markdown
    assert 'src="data:image/png;base64,iVBORyBmYWtl"' in page and "<script" not in page
