"""`make demo`: generate three days of sample logs, check them through the pipeline, train
Shared-Bottom, MMoE, PLE and ESMM on two days under Ray Train (2 workers), evaluate each on the
third, and print their AUCs next to the oracle AUCs. Then run the daily retraining schedule
(jobs.daily) on the three days in turn: cold start, then two warm-started, gated days, each with
its report under OUT/daily/reports/DATE/.

    python -m jobs.demo --out demo [--rows-per-day 200000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from mtl_rec.config.data import DataConfig

PRESETS = ("shared_bottom", "mmoe", "ple", "esmm")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def comparison_table(results: dict[str, dict]) -> str:
    """Markdown: per model and task (RUN_DIR/metrics.json "tasks"), AUC next to the oracle AUC,
    and calibration: pred/obs (sum of predictions / positives) and ECE (10 equal-mass bins)."""
    lines = [
        "| model | task | space | rows | AUC | oracle AUC | gap | pred/obs | ECE | samples/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, metrics in results.items():
        for task, m in metrics["tasks"].items():
            auc, oracle = m["auc"], m.get("oracle_auc")
            gap = oracle - auc if auc is not None and oracle is not None else None
            lines.append(
                f"| {model} | {task} | {m['space']} | {m['rows']:,} | {_fmt(auc)} | {_fmt(oracle)} "
                f"| {_fmt(gap)} | {_fmt(m.get('pred_over_obs'), 3)} | {_fmt(m.get('ece'))} "
                f"| {metrics['train']['samples_per_s']:,.0f} |"
            )
    return "\n".join(lines)


def daily_table(decisions: list[dict]) -> str:
    """Markdown: one row per day and task of the daily schedule: the decision, and the candidate's
    AUC, oracle AUC, pred/obs and ECE on the day's held-out rows (decision "calibration")."""
    lines = [
        "| date | decision | task | rows | positives | AUC | oracle AUC | pred/obs | ECE |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for d in decisions:
        for task, m in d.get("calibration", {}).items():
            lines.append(
                f"| {d['date']} | {d['status']} | {task} | {m['rows']:,} | {m['positives']:,} "
                f"| {_fmt(m['auc'])} | {_fmt(m['oracle_auc'])} | {_fmt(m['pred_over_obs'], 3)} "
                f"| {_fmt(m['ece'])} |"
            )
    lines += ["", "| date | decision | reason | trained rows | report |", "| --- | --- | --- | ---: | --- |"]
    for d in decisions:
        lines.append(
            f"| {d['date']} | {d['status']} | {d['reason']} | {d['trained_rows']:,} | {d['report']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__)
    parser.add_argument("--out", default="demo", type=Path)
    parser.add_argument("--rows-per-day", type=int, default=200_000)
    parser.add_argument("--start", default="2026-11-18")
    parser.add_argument("--models", default=",".join(PRESETS))
    args = parser.parse_args(argv)

    from jobs.check_logs import check_logs
    from jobs.make_logs import GeneratorConfig, generate_logs
    from jobs.train import start_ray, train
    from mtl_rec.run_config import load_run_config

    logs = args.out / "logs"
    start = dt.date.fromisoformat(args.start)
    if not (logs / "_SUCCESS").exists():
        generate_logs(logs, start, 3, args.rows_per_day, GeneratorConfig(seed=0))
        (logs / "_SUCCESS").touch()
    train_dates = f"{start}..{start + dt.timedelta(days=1)}"
    eval_dates = str(start + dt.timedelta(days=2))
    start_ray(None)
    check_logs(
        str(logs),
        f"{train_dates.split('..')[0]}..{eval_dates}",
        "jobs/configs/features.yaml",
        args.out / "data-check",
        DataConfig(on_bad_rows="quarantine"),
    )

    results = {}
    for preset in args.models.split(","):
        cfg = load_run_config(f"jobs/configs/{preset}.yaml")  # the presets as a user gets them
        print(f"\n=== training {preset}: {train_dates} -> {eval_dates} ===", flush=True)
        results[preset] = train(cfg, str(logs), train_dates, eval_dates, args.out / "runs" / preset)
    table = comparison_table(results)
    (args.out / "models.md").write_text(f"# Models on {train_dates} -> {eval_dates}\n\n{table}\n")
    (args.out / "models.json").write_text(json.dumps(results, indent=2))
    print("\n" + table)

    from jobs.daily import daily

    schedule = load_run_config("jobs/configs/mmoe.yaml")
    decisions = []
    for offset in range(3):
        day = start + dt.timedelta(days=offset)
        print(f"\n=== daily retraining: {day} ===", flush=True)
        decisions.append(daily(schedule, day, str(logs), args.out / "daily"))
    table = daily_table(decisions)
    (args.out / "daily.md").write_text("# Daily retraining\n\n" + table + "\n")
    print("\n" + table)
    print(
        f"\ndemo: logs in {logs}, data report in {args.out / 'data-check'}, runs in {args.out / 'runs'}, "
        f"table in {args.out / 'models.md'}, daily schedule in {args.out / 'daily'} ({args.out / 'daily.md'})"
    )


if __name__ == "__main__":
    main()
