"""Score a trained run's checkpoint on days of logs and write the offline evaluation report.

    python -m jobs.evaluate --run RUN_DIR --logs DIR --dates 2026-11-20[,2026-11-21 | A..B] --out OUT \\
        [--baseline OTHER_RUN_DIR] [--gate 0.002 [--calibration-band 0.9,1.1] [--max-logloss-increase 0.01]]
        [--slice-column auto|COLUMN|''] [--top-k 5] [--address ADDR]

OUT gets report.json (versioned: "schema_version"), report.md, report.html (self-contained: plots
embedded as data URIs, nothing fetched), plots/*.png, and predictions/day=D/bucket-B.parquet: one
row per scored impression with its labels, masks, truth columns and every target's prediction of the
run (and of the baseline, joined by request id). Each model's raw scores stay in scores/<key>/, keyed
by its checkpoint and the files, so a later report on the same runs and days (another --gate, the
roles swapped) reuses them instead of scoring again; delete OUT/scores to force a rescore.

Per target, over its sample space (an ESMM chain also over impressions): exact AUC, GAUC by the
spec's group key (mean, impression-weighted, positive-weighted), logloss, normalised entropy,
calibration ratio and ECE with a reliability diagram, rows and positives, the oracle AUC and the gap
to it; per day and per value of the slice column (top-k by volume); with --baseline, every metric's
delta and a paired user-bootstrap CI of the AUC deltas. --gate X exits 1 when, over all days, a task's
AUC falls more than X below the baseline's, its pred/obs lies outside --calibration-band (default
0.9,1.1, beyond the noise of its positive count), or its logloss rises more than
--max-logloss-increase (relative, default 0.01 = 1%) above the baseline's; 'off' turns either check
off (jobs/report/gate.py). The last line printed names the task, the check and by how much.

Every row of the chosen days is scored (the split drops none; rows scored + quarantined must equal
the rows in the files, or the job fails). Memory stays bounded when a day does not fit in one
process: workers stream batches and append each to Parquet; the driver then computes every metric
from those narrow columns in passes of at most --memory-rows rows (exact AUC by radix histogram plus
bounded gathers; GAUC one group-hash bucket at a time; the bootstrap on a user hash sample), see
mtl_rec/evaluation.py and jobs/report/.

Without --address it starts a local Ray; with one, or under `ray job submit` (RAY_ADDRESS), it joins
that cluster.

Example (the Python API the daily retraining uses)::

    >>> report = evaluate(Path("runs/today"), "data/logs", "2026-11-21", Path("reports/2026-11-21"),
    ...                   baseline=Path("runs/yesterday"), gate=0.002)
    >>> report["gate"]
    {'threshold': 0.002, 'calibration_band': [0.9, 1.1], 'max_logloss_increase': 0.01, 'passed': False,
     'failures': [{'task': 'cvr', 'check': 'auc', 'auc': 0.7391, 'baseline_auc': 0.7433, 'drop': 0.0042,
     'allowed': 0.002}], 'compared': ['ctr', 'cvr', 'cart'], 'calibration_checked': ['ctr', 'cvr', 'cart']}
    >>> report["metrics"]["ctr"]["overall"]["run"]["auc"]
    {'value': 0.7612, 'n': 200000}
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.cli import run_job
from jobs.report import plots
from jobs.report.compute import ReportSettings, compute_metrics
from jobs.report.gate import (
    DEFAULT_CALIBRATION_BAND,
    DEFAULT_MAX_LOGLOSS_INCREASE,
    check_band,
    check_increase,
    describe_failure,
    describe_gate,
    gate_check,
    parse_band,
    parse_increase,
)
from jobs.report.render import render_html, render_markdown
from jobs.report.score import RunArtifacts, load_run, score_runs
from jobs.report.store import PredictionStore, merge_scores
from jobs.train import start_ray
from pipelines.read import inspect_logs, list_partitions, parse_dates
from pipelines.row_ids import file_row_ids
from pipelines.split import HoldoutSplit
from pipelines.validate import quarantine_summary

SCHEMA_VERSION = 1


def _inventories(run: RunArtifacts, logs: str, days: list[dt.date]) -> dict:
    """{day: LogInventory} with the run's spec (footers checked)."""

    data = run.cfg.data
    return {
        d.isoformat(): inspect_logs(
            logs, [d], run.spec, data.on_bad_files, data.on_bad_rows, data.check_duplicate_ids
        )
        for d in days
    }


AUTO_SLICE_COLUMN = "device"


def _auto_slice_column(logs: str, days: list, date_column: str) -> str | None:
    """AUTO_SLICE_COLUMN where it is an integer column of every file of the days, else None."""

    for log_file in list_partitions(logs, days, date_column):
        schema = pq.read_schema(log_file.path)
        field = schema.field(AUTO_SLICE_COLUMN) if AUTO_SLICE_COLUMN in schema.names else None
        if field is None or not pa.types.is_integer(field.type):
            print(
                f"no slices: {log_file.path} has no integer column {AUTO_SLICE_COLUMN!r} "
                "(--slice-column COLUMN names another)",
                flush=True,
            )
            return None
    return AUTO_SLICE_COLUMN


def _check_slice_column(inventories: dict, column: str | None) -> None:
    """The slice column must be an integer column of every file (a categorical id such as device)."""

    if not column:
        return
    for inventory in inventories.values():
        for log_file in inventory.files:
            schema = pq.read_schema(log_file.path)
            if column not in schema.names:
                raise ValueError(
                    f"slice column {column!r} is not in {log_file.path} (columns: {schema.names})"
                )
            if not pa.types.is_integer(schema.field(column).type):
                raise ValueError(
                    f"slice column {column!r} in {log_file.path} is {schema.field(column).type}; "
                    "slices need an integer (categorical) column"
                )


def _expected_rows(inventory, split, spec) -> int:
    """Rows of the inventory's files on the split's side (all rows without a split)."""
    if split is None:
        return inventory.rows
    return sum(int(split.keep(file_row_ids(f, spec)).sum()) for f in inventory.files)


def _row_accounting(
    inventories: dict, store: PredictionStore, quarantine_dir: Path, spec, split=None
) -> dict:
    """{day: {rows_in_files, rows_scored, rows_quarantined}}; RuntimeError if any row went missing."""

    by_file = quarantine_summary(quarantine_dir, spec.row_id_column)["by_file"]
    accounting = {}
    for day, inventory in inventories.items():
        quarantined = sum(by_file.get(f.path, 0) for f in inventory.files)
        scored = store.rows(day) if day in store.files else 0
        expected = _expected_rows(inventory, split, spec)
        accounting[day] = {
            "rows_in_files": inventory.rows,
            "rows_expected": expected,
            "rows_scored": scored,
            "rows_quarantined": quarantined,
        }
        if scored + quarantined != expected:
            where = "in the files" if split is None else f"in the {split.part} split of the files"
            raise RuntimeError(
                f"{day}: {expected} rows {where}, {scored} scored, {quarantined} quarantined: "
                f"{expected - scored - quarantined} rows lost"
            )
    return accounting


def _same_target(a, b) -> bool:
    return (a.label, a.space, a.conditional) == (b.label, b.space, b.conditional)


def _plots(report: dict, curves: dict, histories: dict) -> dict[str, bytes]:
    figures = {}
    for name, target in report["metrics"].items():
        models = ["run", *(["baseline"] if "baseline" in target["overall"] else [])]
        figures[f"roc_{name}"] = plots.roc_figure(name, curves[name], target["overall"])
        figures[f"reliability_{name}"] = plots.reliability_figure(name, target["overall"], models)
    figures["auc_by_day"] = plots.auc_by_day_figure(report["metrics"])
    figures["training_loss"] = plots.training_figure(histories, "loss", "loss")
    figures["training_weights"] = plots.training_figure(histories, "weights", "loss weight")
    figures["training_group_weights"] = plots.group_weights_figure(histories)
    return {name: png for name, png in figures.items() if png is not None}


def evaluate(
    run_dir: Path,
    logs: str,
    dates: str,
    out: Path,
    baseline: Path | None = None,
    gate: float | None = None,
    address: str | None = None,
    slice_column: str | None = "auto",
    top_k: int = 5,
    settings: ReportSettings | None = None,
    holdout: float | None = None,
    calibration_band: tuple[float, float] | None = DEFAULT_CALIBRATION_BAND,
    max_logloss_increase: float | None = DEFAULT_MAX_LOGLOSS_INCREASE,
) -> dict:
    """Score RUN_DIR's checkpoint (and BASELINE's, on the same rows) on `dates`; write OUT/report.*.

    Returns the report dict exactly as written to report.json; report["gate"] is
    jobs.report.gate.gate_check's {"threshold", "calibration_band", "max_logloss_increase", "passed",
    "failures": [{"task", "check", ...}], "compared", "calibration_checked"} when `gate` is given,
    else None; `calibration_band` and `max_logloss_increase` (None: off) are the gate's other checks.
    `holdout` (a fraction): score only the rows of the hash hold-out (pipelines.split) that
    jobs.train / jobs.daily left out of training. `slice_column`: "auto" slices by `device` where
    every file has it as an integer column, and by nothing (with a note) where not; None: no slices.
    """

    if gate is not None and baseline is None:
        raise ValueError("--gate compares with a baseline: pass --baseline OTHER_RUN_DIR")
    if gate is not None and (not math.isfinite(gate) or gate < 0):
        raise ValueError(f"--gate must be a non-negative AUC drop, got {gate}")
    calibration_band = check_band(calibration_band)
    max_logloss_increase = check_increase(max_logloss_increase)
    settings = settings or ReportSettings()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    days = parse_dates(dates)
    if slice_column == "auto":
        slice_column = _auto_slice_column(logs, days, load_run(run_dir).spec.date_column)
    run = load_run(run_dir, slice_column)
    base = load_run(baseline, slice_column) if baseline is not None else None
    inventories = {"run": _inventories(run, logs, days)}
    if base is not None:
        inventories["baseline"] = _inventories(base, logs, days)
    _check_slice_column(inventories["run"], slice_column)
    rows_in_files = sum(inv.rows for inv in inventories["run"].values())
    buckets = max(1, math.ceil(rows_in_files / settings.budget_rows))  # one bucket's rows fit the budget

    start_ray(address)
    for stale in ("predictions", "plots"):
        shutil.rmtree(out / stale, ignore_errors=True)
    split = HoldoutSplit(holdout, "holdout", run.spec.row_id_column) if holdout else None
    models = [(run, inventories["run"])] + ([(base, inventories["baseline"])] if base is not None else [])
    run_scores, base_scores = [*score_runs(models, out / "scores", buckets, slice_column, split), None][:2]
    shared, not_compared = [], []
    if base is not None:
        base_targets = {t.name: t for t in base.targets}
        for target in run.targets:
            ok = target.name in base_targets and _same_target(target, base_targets[target.name])
            (shared if ok else not_compared).append(target.name)
    day_names = list(inventories["run"])
    files = merge_scores(run_scores, base_scores, out / "predictions", day_names, shared, buckets)
    store = PredictionStore(files, chunk_rows=min(settings.budget_rows, 1 << 20))
    accounting = _row_accounting(inventories["run"], store, run_scores / "quarantine", run.spec, split)

    metrics, slices, curves = compute_metrics(store, list(run.targets), shared, slice_column, top_k, settings)
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": run.describe(),
        "baseline": base.describe() if base is not None else None,
        "data": {
            "logs": str(logs),
            "days": day_names,
            "group_key": run.spec.group_key,
            "rows_in_files": rows_in_files,
            "holdout": holdout,
            "rows_scored": sum(a["rows_scored"] for a in accounting.values()),
            "rows_quarantined": sum(a["rows_quarantined"] for a in accounting.values()),
            "by_day": accounting,
            "skipped_files": [s for inv in inventories["run"].values() for s in inv.skipped],
            "ignored_files": [s for inv in inventories["run"].values() for s in inv.ignored],
            "predictions": str(out / "predictions"),
            "group_buckets": buckets,
        },
        "settings": dataclasses.asdict(settings),
        "targets_not_compared": not_compared,
        "slices": slices,
        "metrics": metrics,
        "gate": (
            gate_check(metrics, gate, calibration_band, max_logloss_increase) if gate is not None else None
        ),
        "training": {"run": list(run.history), "baseline": list(base.history) if base else None},
    }
    histories = {"run": list(run.history), **({"baseline": list(base.history)} if base else {})}
    figures = _plots(report, curves, histories)
    (out / "plots").mkdir(exist_ok=True)
    for name, png in figures.items():
        (out / "plots" / f"{name}.png").write_bytes(png)
    report["plots"] = {name: f"plots/{name}.png" for name in figures}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(render_markdown(report, report["plots"]))
    (out / "report.html").write_text(render_html(report, figures))
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run", required=True, type=Path, help="run directory of `python -m jobs.train`")
    parser.add_argument("--logs", required=True)
    parser.add_argument("--dates", required=True, help="2026-11-20, 2026-11-20,2026-11-21 or A..B")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--baseline", type=Path, default=None, help="another run directory to compare with")
    parser.add_argument(
        "--gate", type=float, default=None, help="exit 1 if a task's AUC drops more than this"
    )
    parser.add_argument(
        "--calibration-band",
        type=parse_band,
        default=DEFAULT_CALIBRATION_BAND,
        metavar="LOW,HIGH",
        help="with --gate: fail a task whose pred/obs lies outside [LOW, HIGH] beyond its noise "
        "(default 0.9,1.1; 'off' for no check)",
    )
    parser.add_argument(
        "--max-logloss-increase",
        type=parse_increase,
        default=DEFAULT_MAX_LOGLOSS_INCREASE,
        metavar="FRACTION",
        help="with --gate: fail a task whose logloss rises more than this above the baseline's, "
        "relative (default 0.01 = 1%%; 'off' for no check)",
    )
    parser.add_argument(
        "--slice-column",
        default="auto",
        help="integer log column to slice by; auto (default): device where every file has it; '' for none",
    )
    parser.add_argument("--top-k", type=int, default=5, help="slices kept, by volume")
    parser.add_argument(
        "--memory-rows",
        type=int,
        default=ReportSettings.budget_rows,
        help="most rows a metric holds in memory at once",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=ReportSettings.bootstrap_replicates,
        help="bootstrap replicates of the AUC deltas",
    )
    parser.add_argument(
        "--holdout", type=float, default=None, help="score only this hash hold-out of the rows (jobs.daily)"
    )
    parser.add_argument("--address", default=None, help="Ray cluster address; default starts a local Ray")
    return parser


def gate_message(gate: dict) -> str:
    """One line per failure ("gate failed: TASK: ... by how much"), or one line saying it passed."""
    lines = [f"gate failed: {describe_failure(failure)}" for failure in gate["failures"]]
    return "\n".join(lines) or f"gate passed: {describe_gate(gate)} for every task"


def main(argv=None) -> int:
    """CLI; returns the exit status: 1 when the gate fails, else 0."""
    args = build_parser().parse_args(argv)
    settings = ReportSettings(budget_rows=args.memory_rows, bootstrap_replicates=args.bootstrap)
    report = evaluate(
        args.run,
        args.logs,
        args.dates,
        args.out,
        args.baseline,
        args.gate,
        args.address,
        args.slice_column or None,
        args.top_k,
        settings,
        args.holdout,
        args.calibration_band,
        args.max_logloss_increase,
    )
    print((args.out / "report.md").read_text())
    print(f"report: {args.out / 'report.html'}")
    gate = report["gate"]
    if gate is not None:
        print(gate_message(gate), file=sys.stderr if not gate["passed"] else sys.stdout)
        return 0 if gate["passed"] else 1
    return 0


if __name__ == "__main__":
    run_job(main)
