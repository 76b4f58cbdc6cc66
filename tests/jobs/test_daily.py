"""jobs.daily on real generated logs and a local Ray: cold start, warm start, the promotion gate, and
re-running a date (idempotent: nothing is trained twice).

Day 1 cold-starts and is promoted. Day 2 warm-starts from it and, trained sensibly, is promoted.
Day 3 is trained with a destructive embedding learning rate: its AUC falls and the gate rejects it,
so the pointer stays on day 2; the decision names every failed check (AUC, pred/obs, logloss).
Re-running day 2 reports the earlier decision without training.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest

from jobs.daily import daily, read_promoted
from jobs.report.gate import describe_failure
from mtl_rec.config.run import SINGLE_PASS
from mtl_rec.export import resolve_model
from mtl_rec.run_config import load_run_config
from mtl_rec.serve import Predictor

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

SPEC = ("tables.user_id.num_embeddings=20000", "tables.item_id.num_embeddings=8000")
# one pass, no validation hold-out: the gate and promotion are under test, and each day stays one pass
SETTINGS = (*SINGLE_PASS, "data.batch_size=1024", "train.workers=2", "model.params.expert.hidden=[32]")


@pytest.fixture(scope="module")
def three_days(tmp_path_factory):
    from jobs.make_logs import GeneratorConfig, generate_logs

    root = tmp_path_factory.mktemp("daily-logs")
    config = GeneratorConfig(seed=3, rows_per_file=10_000, click_rate=0.25)
    generate_logs(root, dt.date(2026, 11, 18), 3, 20_000, config, verbose=False)
    return root


def _live_export(root):
    """(model id, run it was exported from) of ROOT/serving's live export, loaded as jobs.serve does."""
    directory, model_id = resolve_model(root / "serving")
    return model_id, Predictor(directory).manifest["run"]


def test_daily_cold_start_warm_start_gate_and_rerun(ray_local, three_days, tmp_path):
    root = tmp_path / "root"
    cfg = load_run_config("jobs/configs/mmoe.yaml", SETTINGS)

    first = daily(cfg, dt.date(2026, 11, 18), str(three_days), root, spec_overrides=SPEC)
    assert first["status"] == "cold_start"
    assert read_promoted(root)["date"] == "2026-11-18"
    assert _live_export(root) == ("2026-11-18", str(root / "runs" / "2026-11-18"))

    # 18 steps a day train the ranking, not yet the calibration: the AUC gate alone here (the pred/obs
    # band and the logloss limit: tests/jobs/test_gate.py, and day 3 below).
    auc_only = {"calibration_band": None, "max_logloss_increase": None}
    second = daily(
        cfg, dt.date(2026, 11, 19), str(three_days), root, spec_overrides=SPEC, gate=0.05, **auc_only
    )
    assert second["status"] == "promoted", second["reason"]
    assert set(second["calibration"]) == {"ctr", "cvr", "cart"}
    ctr = second["calibration"]["ctr"]
    assert ctr["pred_over_obs"] > 0 and 0 <= ctr["ece"] < 1 and ctr["positives"] > 0
    assert second["warm_start_from"] == "2026-11-18"
    metrics = json.loads((root / "runs" / "2026-11-19" / "metrics.json").read_text())
    assert metrics["train"]["warm_start"]["from"].endswith("runs/2026-11-18/checkpoint")
    assert metrics["train"]["warm_start"]["optimizers"] is True
    report = json.loads((root / "reports" / "2026-11-19" / "report.json").read_text())
    assert report["gate"]["passed"] and (root / "reports" / "2026-11-19" / "report.html").is_file()
    assert read_promoted(root)["date"] == "2026-11-19"
    assert read_promoted(root)["serving"] == str(root / "serving" / "2026-11-19")
    assert _live_export(root) == ("2026-11-19", str(root / "runs" / "2026-11-19"))

    wrecked = load_run_config(
        "jobs/configs/mmoe.yaml", (*SETTINGS, "optim.sparse.lr=500.0", "optim.dense.lr=1.0")
    )
    third = daily(wrecked, dt.date(2026, 11, 20), str(three_days), root, spec_overrides=SPEC, gate=0.002)
    assert third["status"] == "rejected", third
    assert "AUC" in third["reason"]
    report = json.loads((root / "reports" / "2026-11-20" / "report.json").read_text())
    gate = report["gate"]  # the default gate: AUC drop, pred/obs band, logloss rise
    assert gate["calibration_band"] == [0.9, 1.1] and gate["max_logloss_increase"] == 0.01
    assert third["reason"] == "; ".join(describe_failure(f) for f in gate["failures"])
    assert {f["check"] for f in gate["failures"]} >= {"auc"}
    assert read_promoted(root)["date"] == "2026-11-19", "a rejected day must not move the pointer"
    assert _live_export(root)[0] == "2026-11-19" and not (root / "serving" / "2026-11-20").exists()
    assert (root / "reports" / "2026-11-20" / "report.json").is_file(), "the report is written either way"

    checkpoint_files = sorted(p.name for p in (root / "runs" / "2026-11-19" / "checkpoint").iterdir())
    again = daily(cfg, dt.date(2026, 11, 19), str(three_days), root, spec_overrides=SPEC)
    assert again["repeated"] and again["status"] == "promoted"
    assert sorted(p.name for p in (root / "runs" / "2026-11-19" / "checkpoint").iterdir()) == checkpoint_files
    lines = (root / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["cold_start", "promoted", "rejected"]
