"""End to end: two tiny trained runs -> `jobs.evaluate` scores both on the same rows through Ray Train
-> report.json whose numbers equal sklearn on the written predictions; the gate's exit status (AUC
drop, and the pred/obs band: the 1-step model is far from calibrated)."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from jobs.evaluate import evaluate, main
from jobs.report.gate import describe_failure
from jobs.train import train
from mtl_rec.config.run import SINGLE_PASS
from mtl_rec.run_config import load_run_config

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

DATES = "2026-11-18..2026-11-19"
_CACHE: dict = {}  # module-level: test_report_html imports the fixture; training happens once per session


SETTINGS = (*SINGLE_PASS, "data.batch_size=1024", "train.log_every=3", "model.params.expert.hidden=[64]")
# the run: per-group task weights (uncertainty, one vector per value of the spec's domain column)
RUN_SETTINGS = (*SETTINGS, "train.max_steps=15", "weighting={method: uncertainty, groups: {column: domain}}")
TRAINED_WITH = ("tables.user_id.num_embeddings=50000",)  # saved with each run; jobs.evaluate reads it there


def _train_and_evaluate(logs, root):
    run_cfg = load_run_config("jobs/configs/mmoe.yaml", RUN_SETTINGS)
    base_cfg = load_run_config("jobs/configs/mmoe.yaml", (*SETTINGS, "train.max_steps=1", "train.workers=1"))
    spec = TRAINED_WITH
    train(run_cfg, str(logs), "2026-11-18", "2026-11-19", root / "run", spec)
    train(base_cfg, str(logs), "2026-11-18", "2026-11-19", root / "base", spec)
    report = evaluate(root / "run", str(logs), DATES, root / "report", baseline=root / "base")
    return {"root": root, "logs": logs, "report": report}


@pytest.fixture(scope="session")
def evaluated(generated_logs, tmp_path_factory, ray_local):
    """{"root", "logs", "report"}: run (2 workers, 15 steps) evaluated against base (1 worker, 1 step)."""
    if "evaluated" not in _CACHE:
        _CACHE["evaluated"] = _train_and_evaluate(generated_logs, tmp_path_factory.mktemp("evaluate"))
    return _CACHE["evaluated"]


def _column(table, name):
    return table[name].to_numpy()


def _predictions(out, day=None):
    files = sorted((out / "predictions").glob(f"day={day or '*'}/*.parquet"))
    return pq.read_table(files)


def test_every_row_is_scored_once_by_both_models(evaluated):
    report, logs, out = evaluated["report"], evaluated["logs"], evaluated["root"] / "report"
    assert json.loads((out / "report.json").read_text()) == report
    assert report["schema_version"] == 1 and report["gate"] is None
    assert report["run"]["world_size"] == 2 and report["baseline"]["world_size"] == 1
    assert report["run"]["spec_changes"] == {}  # the spec saved with the run (tests/jobs/test_saved_spec.py)
    for day in ("2026-11-18", "2026-11-19"):
        files = sorted((logs / f"dt={day}").glob("*.parquet"))
        in_files = sum(pq.read_metadata(f).num_rows for f in files)
        assert report["data"]["by_day"][day] == {
            "rows_in_files": in_files,
            "rows_expected": in_files,  # no hold-out split: every row
            "rows_scored": in_files,
            "rows_quarantined": 0,
        }
        ids = np.sort(_column(_predictions(out, day), "id"))
        logged = np.sort(
            np.concatenate([_column(pq.read_table(f, columns=["request_id"]), "request_id") for f in files])
        )
        assert np.array_equal(ids, logged)  # every row once: none lost to the split, none twice
    assert report["metrics"]["ctr"]["overall"]["rows"] == report["data"]["rows_scored"] == 60_000


def _gauc_mean(groups, labels, scores):
    aucs = [
        roc_auc_score(labels[groups == g], scores[groups == g])
        for g in np.unique(groups)
        if 0 < labels[groups == g].sum() < (groups == g).sum()
    ]
    return float(np.mean(aucs)), len(aucs)


def test_report_metrics_equal_sklearn_on_the_written_predictions(evaluated):
    report, out = evaluated["report"], evaluated["root"] / "report"
    table = _predictions(out)
    slice_value = report["slices"]["values"][0]["value"]
    assert report["slices"]["column"] == "device"
    for name, target in report["metrics"].items():
        in_space = _column(table, f"mask.{target['space']}")
        labels = _column(table, f"label.{target['label']}")[in_space]
        run = _column(table, f"pred.{name}")[in_space]
        base = _column(table, f"baseline.{name}")[in_space]
        overall = target["overall"]
        assert overall["rows"] == in_space.sum() and overall["positives"] == labels.sum()
        assert overall["run"]["auc"]["value"] == pytest.approx(roc_auc_score(labels, run), abs=1e-12)
        assert overall["baseline"]["auc"]["value"] == pytest.approx(roc_auc_score(labels, base), abs=1e-12)
        delta = overall["run"]["auc"]["value"] - overall["baseline"]["auc"]["value"]
        assert overall["delta"]["auc"]["value"] == pytest.approx(delta, abs=1e-12)
        ci = overall["auc_delta_ci"]
        assert ci["low"] < delta < ci["high"] and ci["rows"] == in_space.sum()
        assert overall["run"]["logloss"]["value"] == pytest.approx(log_loss(labels, run), rel=1e-5)
        truth = _column(table, f"truth.{target['oracle_column']}")[in_space]
        assert overall["oracle_auc"]["value"] == pytest.approx(roc_auc_score(labels, truth), abs=1e-12)
        gauc, scored = _gauc_mean(_column(table, "group")[in_space], labels, run)
        assert overall["run"]["gauc"]["mean"] == {"value": pytest.approx(gauc, abs=1e-12), "n": scored}
        assert overall["run"]["calibration"]["ratio"]["value"] == pytest.approx(run.sum() / labels.sum())
        for day, block in target["by_day"].items():
            day_table = _predictions(out, day)
            mask = _column(day_table, f"mask.{target['space']}")
            day_labels = _column(day_table, f"label.{target['label']}")[mask]
            expected = roc_auc_score(day_labels, _column(day_table, f"pred.{name}")[mask])
            assert block["rows"] == mask.sum() and block["run"]["auc"]["value"] == pytest.approx(
                expected, abs=1e-12
            )
        in_slice = _column(table, "slice")[in_space] == slice_value
        block = target["by_slice"][str(slice_value)]
        assert block["rows"] == in_slice.sum()
        assert block["run"]["auc"]["value"] == pytest.approx(
            roc_auc_score(labels[in_slice], run[in_slice]), abs=1e-12
        )


def test_report_files_and_plots(evaluated):
    report, out = evaluated["report"], evaluated["root"] / "report"
    expected = {f"{kind}_{t}" for t in report["metrics"] for kind in ("roc", "reliability")}
    expected |= {"auc_by_day", "training_loss", "training_weights", "training_group_weights"}
    assert set(report["plots"]) == expected
    for path in report["plots"].values():
        assert (out / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    assert "NaN" not in markdown and "nan" not in markdown.split()
    assert f"{report['metrics']['ctr']['overall']['run']['auc']['value']:.4f}" in markdown


def test_per_group_weights_are_logged_for_every_group_at_every_logged_step(evaluated):
    """weighting.groups through jobs.train on 2 workers: metrics.json and the report hold each
    domain's [K] weights per logged step; uncertainty moved them apart from their start."""
    history = json.loads((evaluated["root"] / "run" / "metrics.json").read_text())["train"]["history"]
    assert [h["step"] for h in history] == [3, 6, 9, 12, 15]
    for entry in history:
        assert set(entry["group_weights"]) == {"0", "1", "2"}
        assert all(set(w) == {"ctr", "cvr", "cart"} for w in entry["group_weights"].values())
    last = history[-1]["group_weights"]
    assert last["0"] != last["2"]  # each domain's log-variances learn from its own losses
    assert evaluated["report"]["training"]["run"][-1]["group_weights"] == last


def test_gate_fails_exactly_when_a_task_drops_more_than_the_threshold(evaluated, capsys):
    root, logs, first = evaluated["root"], evaluated["logs"], evaluated["report"]
    # The candidate is whichever model is worse on the task where the two differ most (tiny runs: the
    # 15-step one is not always the better). The scores on disk are reused (same checkpoints and days),
    # so each call below only recomputes the report.
    deltas = {name: t["overall"]["delta"]["auc"]["value"] for name, t in first["metrics"].items()}
    widest = max(deltas, key=lambda name: abs(deltas[name]))
    candidate, baseline = ("run", "base") if deltas[widest] < 0 else ("base", "run")
    shutil.copytree(root / "report" / "scores", root / "gate" / "scores", dirs_exist_ok=True)
    common = ["--logs", str(logs), "--dates", DATES, "--out", str(root / "gate"), "--bootstrap", "20"]
    args = ["--run", str(root / candidate), "--baseline", str(root / baseline), *common]
    args += ["--calibration-band", "off", "--max-logloss-increase", "off"]  # the AUC check alone
    assert main([*args, "--gate", "1.0"]) == 0
    report = json.loads((root / "gate" / "report.json").read_text())
    drops = {
        name: t["overall"]["baseline"]["auc"]["value"] - t["overall"]["run"]["auc"]["value"]
        for name, t in report["metrics"].items()
    }
    worst = max(drops, key=drops.get)
    assert worst == widest and drops[worst] == pytest.approx(abs(deltas[widest]), abs=1e-12)
    assert drops[worst] > 0.005 and report["gate"]["passed"] and not report["gate"]["failures"]

    capsys.readouterr()
    assert main([*args, "--gate", str(drops[worst] - 1e-6)]) == 1
    err = capsys.readouterr().err
    assert f"gate failed: {worst}" in err and f"{drops[worst]:.4f}" in err
    report = json.loads((root / "gate" / "report.json").read_text())
    failures = report["gate"]["failures"]
    assert [f["task"] for f in failures] == [worst]
    assert failures[0]["drop"] == pytest.approx(drops[worst], abs=1e-12)
    assert failures[0]["baseline_auc"] == report["metrics"][worst]["overall"]["baseline"]["auc"]["value"]

    assert main([*args, "--gate", str(drops[worst] + 1e-6)]) == 0

    # The default band: the 1-step model as the candidate predicts far from the observed rates.
    capsys.readouterr()
    assert main(["--run", str(root / "base"), "--baseline", str(root / "run"), *common, "--gate", "1.0"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    report = json.loads((root / "gate" / "report.json").read_text())
    gate = report["gate"]
    assert gate["calibration_band"] == [0.9, 1.1] and gate["max_logloss_increase"] == 0.01
    ratio = report["metrics"]["ctr"]["overall"]["run"]["calibration"]["ratio"]["value"]
    assert ratio > 1.5, "one step from the initial weights: predictions far above the click rate"
    ctr = next(f for f in gate["failures"] if f["task"] == "ctr" and f["check"] == "calibration")
    assert ctr["pred_over_obs"] == ratio and ctr["interval"][0] > 1.1
    assert last == f"gate failed: {describe_failure(gate['failures'][-1])}"
    assert last.startswith("gate failed: ") and any(f"{f['task']}: " in last for f in gate["failures"])
    with pytest.raises(ValueError, match="--baseline"):
        main(
            [
                "--run",
                str(root / "run"),
                "--logs",
                str(logs),
                "--dates",
                DATES,
                "--out",
                str(root / "x"),
                "--gate",
                "0.01",
            ]
        )
