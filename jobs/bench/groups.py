"""`python -m jobs.bench groups`: task weights per group against one weight vector for every row.

Logs: jobs.make_logs with `domain_task_correlation` (--groups-correlation, default 0.9,0.9,0.0): in
domains 0 and 1 (90% of the traffic) a row's purchases follow its click affinity, in domain 2 (10%)
they depend on the purchase features alone: the domains trade the tasks off differently. Three days
of --groups-rows rows each, cached under CACHE/groups/logs.

Runs: the reference MMoE (--train-config) with `weighting.method` = --groups-method (default
uncertainty), once with one weight vector for every row and once with `weighting.groups` on the
domain column (the spec's domain_column), same seed, same rows; trained on the first two days and
scored on the third. jobs.evaluate then compares the grouped run against the global one, sliced by
domain: per domain and target both AUCs, the delta, its paired user-bootstrap CI and the oracle AUC.

Goal (issue 18): the weaker domain's post-click AUC (the lowest cvr AUC under global weights) rises
by more than the run-to-run noise: the CI of its delta lies above 0.

Example::

    python -m jobs.bench groups --out docs/bench-groups.json
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import replace
from pathlib import Path

from jobs.bench.common import day, local_ray
from jobs.bench.table import Row, format_table
from jobs.evaluate import evaluate
from jobs.make_logs import GeneratorConfig, generate_logs
from jobs.train import train
from mtl_rec.run_config import load_run_config
from pipelines.read import inspect_logs

FIRST = day(20)  # days of their own: other sections keep theirs at other sizes
POST_CLICK = ("cvr", "cart")
SPEC = ("domain_column=domain", "num_domains=3")


def _logs(root: Path, rows: int, correlation: tuple[float, ...], spec) -> Path:
    """Three days of generated logs with the per-domain task correlation, regenerated when stale."""
    logs = root / "logs"
    marker = logs / "KNOBS"
    knobs = f"rows={rows} domain_task_correlation={correlation}"
    days = [FIRST + dt.timedelta(days=i) for i in range(3)]
    fresh = marker.is_file() and marker.read_text() == knobs
    if not fresh or inspect_logs(logs, days, spec).rows != 3 * rows:
        shutil.rmtree(logs, ignore_errors=True)
        config = replace(GeneratorConfig(seed=0), domain_task_correlation=correlation)
        generate_logs(logs, FIRST, 3, rows, config, verbose=False)
        marker.write_text(knobs)
    return logs


def bench_groups(args) -> dict:
    root = Path(args.cache) / "groups"
    base = load_run_config(args.train_config)
    spec = base.feature_spec()
    logs = _logs(root, args.groups_rows, tuple(args.groups_correlation), spec)
    train_dates = f"{FIRST}..{FIRST + dt.timedelta(days=1)}"
    eval_date = str(FIRST + dt.timedelta(days=2))
    # --groups-set: the method's params (e.g. PE-LTR's weighting.params.min_weight), in both runs
    overrides = [f"weighting.method={args.groups_method}", "train.log_every=10", *args.groups_set]
    runs = {
        "global": load_run_config(args.train_config, overrides),
        "groups": load_run_config(args.train_config, [*overrides, "weighting.groups={column: domain}"]),
    }
    with local_ray():
        for name, cfg in runs.items():
            shutil.rmtree(root / name, ignore_errors=True)  # a left checkpoint would make the run resume
            train(cfg, str(logs), train_dates, eval_date, root / name, SPEC)
        report = evaluate(
            root / "groups",
            str(logs),
            eval_date,
            root / "report",
            baseline=root / "global",
            slice_column="domain",
        )
    slices = {}
    for target, metrics in report["metrics"].items():
        for value, block in metrics["by_slice"].items():
            ci = block.get("auc_delta_ci") or {}
            slices.setdefault(value, {})[target] = {
                "rows": block["rows"],
                "positives": block["positives"],
                "auc_global": block["baseline"]["auc"]["value"],
                "auc_groups": block["run"]["auc"]["value"],
                "delta": block["delta"]["auc"]["value"],
                "ci": [ci.get("low"), ci.get("high")],
                "oracle_auc": block["oracle_auc"]["value"],
            }
    weaker = min(slices, key=lambda value: slices[value]["cvr"]["auc_global"] or 1.0)
    return {
        "config": args.train_config,
        "method": args.groups_method,
        "overrides": list(args.groups_set),
        "rows_per_day": args.groups_rows,
        "domain_task_correlation": list(args.groups_correlation),
        "train_dates": train_dates,
        "eval_date": eval_date,
        "weaker_domain": weaker,
        "slices": slices,
        "group_weights": (report["training"]["run"] or [{}])[-1].get("group_weights"),
        "report": str(root / "report" / "report.md"),
    }


def groups_rows(r: dict) -> list[Row]:
    rows = []
    for value, targets in sorted(r["slices"].items()):
        for target, m in targets.items():
            low, high = m["ci"]
            ci = f"[{low:+.4f}, {high:+.4f}]" if low is not None else "n/a"
            is_goal = value == r["weaker_domain"] and target in POST_CLICK
            rows.append(
                Row(
                    "groups",
                    f"domain {value} {target}: AUC per-group - global",
                    f"{m['delta']:+.4f} {ci}",
                    f"global {m['auc_global']:.4f}, oracle {m['oracle_auc']:.4f}",
                    "CI above 0 (the weaker domain)" if is_goal else "",
                    (low is not None and low > 0) if is_goal else None,
                )
            )
    return rows


def print_groups(r: dict) -> None:
    print(
        f"\ngroups: {r['config']}, weighting {r['method']}, {r['rows_per_day']:,} rows a day, "
        f"domain_task_correlation {r['domain_task_correlation']}; weaker domain {r['weaker_domain']}"
    )
    print(format_table(groups_rows(r)))
    print(f"last per-group weights: {r['group_weights']}\nreport: {r['report']}")
