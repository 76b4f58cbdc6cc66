"""The promotion gate on synthetic report metrics: AUC drop, pred/obs band (noise-aware), logloss rise;
the messages name the task, the check and by how much; the CLI flags parse and validate. Also the
demo's Markdown tables show pred/obs and ECE."""

from __future__ import annotations

import math

import pytest

from jobs.daily import build_parser as daily_parser
from jobs.demo import comparison_table, daily_table
from jobs.evaluate import build_parser as evaluate_parser
from jobs.evaluate import gate_message
from jobs.report.gate import describe_failure, gate_check, parse_band, parse_increase, ratio_interval


def _value(value):
    return {"value": value, "n": 1000}


def _model(auc, ratio, loss):
    return {"auc": _value(auc), "logloss": _value(loss), "calibration": {"ratio": _value(ratio)}}


def _target(positives, run, baseline=None):
    """One target's report block: `run` / `baseline` are (auc, pred/obs, logloss)."""
    overall = {"rows": 20 * positives, "positives": positives, "run": _model(*run)}
    if baseline is not None:
        overall["baseline"] = _model(*baseline)
    return {"overall": overall}


GOOD = (0.75, 1.0, 0.20)


def test_a_candidate_within_every_limit_passes():
    metrics = {
        "ctr": _target(2000, (0.751, 1.05, 0.2010), GOOD),
        "cvr": _target(100, (0.70, 1.0, 0.3), (0.7, 0.9, 0.3)),
    }
    gate = gate_check(metrics, 0.002)
    assert gate["passed"] and gate["failures"] == []
    assert gate["calibration_band"] == [0.9, 1.1] and gate["max_logloss_increase"] == 0.01
    assert gate["compared"] == ["ctr", "cvr"] and gate["calibration_checked"] == ["ctr", "cvr"]
    assert gate_message(gate).startswith("gate passed: AUC drop <= 0.002, pred/obs in [0.9, 1.1]")


def test_over_prediction_fails_the_band_with_task_and_size():
    # The demo's warm-started day: 1.49x the observed clicks on ~1,150 held-out clicks.
    metrics = {"ctr": _target(1150, (0.752, 1.49, 0.2), GOOD), "cart": _target(300, (0.75, 1.02, 0.2), GOOD)}
    gate = gate_check(metrics, 0.002, max_logloss_increase=None)
    assert not gate["passed"]
    (failure,) = gate["failures"]
    assert failure["task"] == "ctr" and failure["check"] == "calibration"
    assert failure["pred_over_obs"] == 1.49 and failure["positives"] == 1150
    assert failure["predicted"] == pytest.approx(1.49 * 1150)
    low, high = failure["interval"]
    spread = 1.96 * math.sqrt(1150)
    assert low == pytest.approx(1.49 * 1150 / (1150 + spread)) and high == pytest.approx(
        1.49 * 1150 / (1150 - spread)
    )
    assert 1.1 < low < 1.49 < high
    message = gate_message(gate).splitlines()[-1]
    assert message.startswith("gate failed: ctr: pred/obs 1.490 is outside the band [0.9, 1.1]")
    assert "49.0% more positives than observed" in message and "1,150 observed" in message
    under = gate_check({"ctr": _target(5000, (0.75, 0.8, 0.2), GOOD)}, 0.002)["failures"]
    assert [f["check"] for f in under] == ["calibration"] and "20.0% fewer" in describe_failure(under[0])


def test_the_band_allows_the_noise_of_few_positives():
    # pred/obs 1.15 on 100 positives: +-20% on noise alone, not evidence of miscalibration.
    assert gate_check({"cvr": _target(100, (0.75, 1.15, 0.2), GOOD)}, 0.002)["passed"]
    # The same ratio on 100,000 positives is 45 standard errors out.
    assert not gate_check({"cvr": _target(100_000, (0.75, 1.15, 0.2), GOOD)}, 0.002)["passed"]
    # Far outside even on few positives.
    assert not gate_check({"cvr": _target(100, (0.75, 2.0, 0.2), GOOD)}, 0.002)["passed"]
    assert ratio_interval(1.0, 3)[1] == math.inf  # fewer positives than the interval's half width
    no_positives = _target(0, (0.75, None, 0.2), GOOD)
    gate = gate_check({"rare": no_positives}, 0.002)
    assert gate["passed"] and gate["calibration_checked"] == []


def test_logloss_rise_beyond_the_relative_limit_fails():
    metrics = {"ctr": _target(2000, (0.75, 1.0, 0.2030), GOOD)}  # +1.5%
    (failure,) = gate_check(metrics, 0.002)["failures"]
    assert failure["check"] == "logloss" and failure["increase"] == pytest.approx(0.015)
    message = gate_message(gate_check(metrics, 0.002)).splitlines()[-1]
    assert message == (
        "gate failed: ctr: logloss 0.2030 is 1.50% above the baseline's 0.2000 (allowed +1.00%)"
    )
    assert gate_check(metrics, 0.002, max_logloss_increase=0.02)["passed"]
    assert gate_check(metrics, 0.002, max_logloss_increase=None)["passed"]
    assert gate_check({"ctr": _target(2000, (0.75, 1.0, 0.1980), GOOD)}, 0.002)["passed"]  # better
    missing = gate_check({"ctr": _target(2000, (0.75, 1.0, None), GOOD)}, 0.002)["failures"]
    assert missing[0]["increase"] is None and "not computable" in describe_failure(missing[0])


def test_every_failing_check_is_listed_and_the_auc_check_is_unchanged():
    metrics = {
        "ctr": _target(2000, (0.74, 1.3, 0.25), GOOD),  # all three fail
        "cvr": _target(200, (0.749, 1.0, 0.2), GOOD),  # passes
        "new": _target(200, (0.6, 1.0, 0.2)),  # not a baseline target: calibration only
    }
    gate = gate_check(metrics, 0.002)
    assert [(f["task"], f["check"]) for f in gate["failures"]] == [
        ("ctr", "calibration"),
        ("ctr", "auc"),
        ("ctr", "logloss"),
    ]
    auc = gate["failures"][1]
    assert auc == {
        "task": "ctr",
        "check": "auc",
        "auc": 0.74,
        "baseline_auc": 0.75,
        "drop": pytest.approx(0.01),
        "allowed": 0.002,
    }
    assert gate["compared"] == ["ctr", "cvr"] and gate["calibration_checked"] == ["ctr", "cvr", "new"]
    lines = gate_message(gate).splitlines()
    assert len(lines) == 3 and all(line.startswith("gate failed: ctr: ") for line in lines)
    assert "AUC 0.7400 is 0.0100 below the baseline's 0.7500 (allowed drop 0.002)" in lines[1]
    off = gate_check(metrics, 0.002, calibration_band=None, max_logloss_increase=None)
    assert [f["check"] for f in off["failures"]] == ["auc"] and off["calibration_checked"] == []


def test_cli_flags_parse_validate_and_default():
    assert parse_band("0.9,1.1") == (0.9, 1.1) and parse_band("off") is None and parse_band("none") is None
    assert parse_increase("0.01") == 0.01 and parse_increase("off") is None
    for bad in ("1.1", "1.1,1.2", "0.5,0.9", "a,b", "0.9,1.1,1.2"):
        with pytest.raises(ValueError):
            parse_band(bad)
    for bad in ("-0.1", "x", "nan"):
        with pytest.raises(ValueError):
            parse_increase(bad)
    required = ["--run", "r", "--logs", "l", "--dates", "2026-11-20", "--out", "o"]
    args = evaluate_parser().parse_args(required)
    assert args.calibration_band == (0.9, 1.1) and args.max_logloss_increase == 0.01
    args = evaluate_parser().parse_args(
        [*required, "--calibration-band", "0.8,1.25", "--max-logloss-increase", "off"]
    )
    assert args.calibration_band == (0.8, 1.25) and args.max_logloss_increase is None
    args = daily_parser().parse_args(["--date", "2026-11-20", "--logs", "l", "--root", "r"])
    assert args.calibration_band == (0.9, 1.1) and args.max_logloss_increase == 0.01
    args = daily_parser().parse_args(
        ["--date", "2026-11-20", "--logs", "l", "--root", "r", "--calibration-band", "off"]
    )
    assert args.calibration_band is None


def test_demo_tables_show_calibration():
    task = {"space": "all", "rows": 20_000, "auc": 0.7512, "oracle_auc": 0.7811, "pred_over_obs": 1.0234}
    results = {"mmoe": {"tasks": {"ctr": {**task, "ece": 0.0041}}, "train": {"samples_per_s": 1234.0}}}
    table = comparison_table(results).splitlines()
    assert "pred/obs | ECE" in table[0]
    assert table[2] == "| mmoe | ctr | all | 20,000 | 0.7512 | 0.7811 | 0.0299 | 1.023 | 0.0041 | 1,234 |"
    calibration = {"ctr": {"rows": 5000, "positives": 280, "auc": 0.75, "oracle_auc": 0.78}}
    calibration["ctr"] |= {"pred_over_obs": 1.49, "ece": 0.021, "logloss": 0.2}
    decision = {"date": "2026-11-20", "status": "rejected", "reason": "ctr: pred/obs 1.490 ..."}
    decision |= {"trained_rows": 45_000, "report": "r", "calibration": calibration}
    daily = daily_table([decision]).splitlines()
    assert daily[2] == "| 2026-11-20 | rejected | ctr | 5,000 | 280 | 0.7500 | 0.7800 | 1.490 | 0.0210 |"


def test_report_heading_lists_every_failure():
    from jobs.report.render import _heading

    metrics = {"ctr": _target(1150, (0.74, 1.49, 0.25), GOOD)}
    report = {
        "run": {"dir": "runs/today", "arch": "mmoe", "world_size": 2},
        "baseline": {"dir": "runs/yesterday"},
        "data": {
            "days": ["2026-11-20"],
            "rows_scored": 23_000,
            "rows_in_files": 23_000,
            "rows_quarantined": 0,
        },
        "gate": gate_check(metrics, 0.002),
    }
    lines = _heading(report)
    assert lines[3] == ("gate (AUC drop <= 0.002, pred/obs in [0.9, 1.1], logloss rise <= 1.00%): FAILED")
    assert [line.split(":")[1].strip().split(" ")[0] for line in lines[4:]] == ["pred/obs", "AUC", "logloss"]
