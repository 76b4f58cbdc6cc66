"""Scheduled daily retraining: train the day, warm-started from the promoted model; evaluate against
it on held-out rows; promote only when the gate passes.

    python -m jobs.daily --date 2026-11-21 --logs DIR --root ROOT [--config jobs/configs/mmoe.yaml]
        [--window-days N] [--holdout 0.1] [--gate 0.002] [--calibration-band 0.9,1.1]
        [--max-logloss-increase 0.01] [--set key=value ...] [--address ADDR]

ROOT holds everything the schedule needs, on storage every node sees:

    ROOT/promoted.json          the promoted model: {"date", "run", "checkpoint", ...}; replaced atomically
    ROOT/runs/DATE/             the day's run (jobs.train layout: checkpoint/, metrics.json, ...)
    ROOT/reports/DATE/          report.json / report.md / report.html (jobs.evaluate, baseline = promoted)
    ROOT/decisions/DATE.json    the day's outcome: promoted, rejected (which task fell how far), cold start
    ROOT/history.jsonl          one line per decision
    ROOT/serving/DATE/          the promoted run's export (jobs.export), and ROOT/serving/current.json
                                naming the live one, replaced atomically: `python -m jobs.serve --model
                                ROOT/serving` follows each promotion without dropping a request

Data. The day trains on the window DATE-(N-1) .. DATE minus a hash hold-out of the request ids
(`--holdout`, pipelines.split); the candidate and the promoted model are both scored on the
held-out rows of DATE, so the gate compares them on the same rows, none of which either trained on.
(The promoted model trained on earlier days; with a window > 1 it may have seen DATE-1's rows.)

Idempotent. A date with a decision is reported, not retrained. A date whose run was interrupted
resumes from its checkpoint's data position (never training a row twice), or goes straight to
evaluation when training had finished. With no promoted model the day cold-starts and is promoted.

Gate. The candidate is promoted only when, on the held-out rows, no task's AUC falls more than
`--gate` below the promoted model's, every task's pred/obs lies within `--calibration-band` (beyond
the noise of its positive count) and no task's logloss rises more than `--max-logloss-increase`
(relative) above the promoted model's (jobs/report/gate.py); the decision names each failing task,
its check and by how much.

New ids. Embedding tables map raw ids by hashing (id_map: hash in the feature spec) into a fixed
number of rows, so ids first seen today land in rows shared with other ids and train from there:
no vocabulary to grow, no id rejected; the warm start keeps the promoted model's feature scaling.

Feature spec. Each run saves its resolved spec (RUN_DIR/features.yaml, and in every checkpoint), and
the promoted model is scored with its own. A day whose spec (--config's features file plus
--spec-set) is incompatible with the promoted checkpoint's (a dense feature added, a table resized,
another id map: mtl_rec.config.compat) is refused before training, the error naming each
difference: such a change needs a cold start (move ROOT/promoted.json aside), not a warm one.

Exit status: 0 when the day ends in a decision (promoted or rejected; the report says why), 1 on errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path

from jobs.cli import run_job
from jobs.report.gate import (
    DEFAULT_CALIBRATION_BAND,
    DEFAULT_MAX_LOGLOSS_INCREASE,
    describe_failure,
    describe_gate,
    parse_band,
    parse_increase,
)
from mtl_rec.config.run import RunConfig
from mtl_rec.run_config import load_run_config

PROMOTED = "promoted.json"
SERVING = "serving"


def _export_for_serving(run_dir: Path, serving: Path, day: str) -> dict:
    """Export the promoted run to SERVING/DAY and make it the live model. {"export": path} or, where
    the export fails (a model export cannot handle yet), {"export": None, "error": why}, printed:
    the promotion itself stands, and the live model stays the previous one."""
    # Here, not at the top: mtl_rec.export loads torchrec, which a driver only needs on promotion.
    from mtl_rec.export import export_run, publish

    try:
        export_run(run_dir, serving / day)
    except Exception as e:  # noqa: BLE001 - recorded in the decision and printed, not swallowed
        print(f"{day}: promoted, but NOT exported for serving (the live model is unchanged): {e}")
        return {"export": None, "error": f"{type(e).__name__}: {e}"}
    publish(serving, day, {"date": day, "run": str(run_dir)})
    return {"export": str(serving / day)}


def _write_atomic(path: Path, data: dict) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)


def read_promoted(root: Path) -> dict | None:
    """The promoted model's pointer, or None before the first promotion."""
    path = root / PROMOTED
    return json.loads(path.read_text()) if path.is_file() else None


def window(date: dt.date, days: int) -> str:
    """'FIRST..DATE' covering `days` days that end on `date`."""
    if days < 1:
        raise ValueError(f"--window-days must be at least 1, got {days}")
    return f"{(date - dt.timedelta(days=days - 1)).isoformat()}..{date.isoformat()}"


def daily(
    cfg: RunConfig,
    date: dt.date,
    logs: str,
    root: Path,
    window_days: int = 1,
    holdout: float = 0.1,
    gate: float = 0.002,
    spec_overrides: tuple[str, ...] = (),
    address: str | None = None,
    calibration_band: tuple[float, float] | None = DEFAULT_CALIBRATION_BAND,
    max_logloss_increase: float | None = DEFAULT_MAX_LOGLOSS_INCREASE,
) -> dict:
    """One day of the schedule (see module doc). Returns the day's decision record."""
    from jobs.evaluate import evaluate
    from jobs.train import train

    root = root.resolve()
    day = date.isoformat()
    decision_path = root / "decisions" / f"{day}.json"
    if decision_path.is_file():
        decision = json.loads(decision_path.read_text())
        print(f"{day}: already decided ({decision['status']}); not training again")
        return decision | {"repeated": True}

    promoted = read_promoted(root)
    if promoted is not None and promoted["date"] >= day:
        raise ValueError(f"{day}: the promoted model is from {promoted['date']}; the schedule runs forward")
    run_dir = root / "runs" / day
    started = time.time()
    metrics = train(
        cfg,
        logs,
        window(date, window_days),
        day,
        run_dir,
        spec_overrides,
        address,
        init_from=promoted["checkpoint"] if promoted else None,
        holdout=holdout,
    )
    report = evaluate(
        run_dir,
        logs,
        day,
        root / "reports" / day,
        baseline=Path(promoted["run"]) if promoted else None,
        gate=gate if promoted else None,
        address=address,
        holdout=holdout,
        calibration_band=calibration_band,
        max_logloss_increase=max_logloss_increase,
    )
    if promoted is None:
        status, reason = "cold_start", "no promoted model yet: the first run is promoted"
    elif report["gate"]["passed"]:
        status, reason = "promoted", f"every task passed the gate ({describe_gate(report['gate'])})"
    else:
        status = "rejected"
        reason = "; ".join(describe_failure(f) for f in report["gate"]["failures"])
    decision = {
        "date": day,
        "status": status,
        "reason": reason,
        "run": str(run_dir),
        "report": str(root / "reports" / day),
        "warm_start_from": promoted["date"] if promoted else None,
        "trained_rows": metrics["train"]["rows"],
        "auc": {name: task["auc"] for name, task in metrics["tasks"].items()},
        "calibration": _calibration(report),
        "seconds": time.time() - started,
    }
    if status in ("promoted", "cold_start"):
        serving = _export_for_serving(run_dir, root / SERVING, day)
        decision["serving"] = serving["export"]
        if "error" in serving:
            decision["serving_error"] = serving["error"]
        _write_atomic(
            root / PROMOTED,
            {
                "date": day,
                "run": str(run_dir),
                "checkpoint": str(run_dir / "checkpoint"),
                "auc": decision["auc"],
                "serving": decision["serving"],
            },
        )
    _write_atomic(decision_path, decision)  # last: its presence means the day is done
    with open(root / "history.jsonl", "a") as history:
        history.write(json.dumps(decision) + "\n")
    print(f"{day}: {status}: {reason}")
    return decision


def _calibration(report: dict) -> dict:
    """{target: {"auc", "oracle_auc", "pred_over_obs", "ece", "logloss", "rows", "positives"}} of the
    day's candidate on the held-out rows (the report's numbers over all its days)."""
    summary = {}
    for name, target in report["metrics"].items():
        overall = target["overall"]
        run = overall["run"]
        summary[name] = {
            "auc": run["auc"]["value"],
            "oracle_auc": overall["oracle_auc"]["value"],
            "pred_over_obs": run["calibration"]["ratio"]["value"],
            "ece": run["calibration"]["ece"]["value"],
            "logloss": run["logloss"]["value"],
            "rows": overall["rows"],
            "positives": overall["positives"],
        }
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.daily", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--date", required=True, type=dt.date.fromisoformat, help="the day to train, YYYY-MM-DD"
    )
    parser.add_argument("--logs", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--config", default="jobs/configs/mmoe.yaml")
    parser.add_argument("--window-days", type=int, default=1)
    parser.add_argument("--holdout", type=float, default=0.1, help="share of the day's rows held out")
    parser.add_argument("--gate", type=float, default=0.002, help="largest AUC drop that still promotes")
    parser.add_argument(
        "--calibration-band",
        type=parse_band,
        default=DEFAULT_CALIBRATION_BAND,
        metavar="LOW,HIGH",
        help="pred/obs band a promoted model must keep, beyond noise (default 0.9,1.1; 'off')",
    )
    parser.add_argument(
        "--max-logloss-increase",
        type=parse_increase,
        default=DEFAULT_MAX_LOGLOSS_INCREASE,
        metavar="FRACTION",
        help="largest relative logloss rise over the promoted model (default 0.01 = 1%%; 'off')",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--spec-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", default=None, help="Ray cluster address; default starts a local Ray")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_run_config(args.config, args.set)
    daily(
        cfg,
        args.date,
        args.logs,
        args.root,
        args.window_days,
        args.holdout,
        args.gate,
        tuple(args.spec_set),
        args.address,
        args.calibration_band,
        args.max_logloss_increase,
    )
    return 0


if __name__ == "__main__":
    run_job(main)
