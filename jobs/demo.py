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


def comparison_table(results: dict[str, dict]) -> str:
    lines = [
        "| model | task | space | rows | AUC | oracle AUC | gap | samples/s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, metrics in results.items():
        for task, m in metrics["tasks"].items():
            auc, oracle = m["auc"], m.get("oracle_auc")
            gap = f"{oracle - auc:.4f}" if auc is not None and oracle is not None else "n/a"
            lines.append(
                f"| {model} | {task} | {m['space']} | {m['rows']:,} | "
                f"{'n/a' if auc is None else f'{auc:.4f}'} | {'n/a' if oracle is None else f'{oracle:.4f}'} "
                f"| {gap} | {metrics['train']['samples_per_s']:,.0f} |"
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
    from mtl_rec.config.run import load_run_config

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
        cfg = load_run_config(f"jobs/configs/{preset}.yaml", ["data.batch_size=512"])
        print(f"\n=== training {preset}: {train_dates} -> {eval_dates} ===", flush=True)
        results[preset] = train(cfg, str(logs), train_dates, eval_dates, args.out / "runs" / preset)
    table = comparison_table(results)
    (args.out / "models.md").write_text(f"# Models on {train_dates} -> {eval_dates}\n\n{table}\n")
    (args.out / "models.json").write_text(json.dumps(results, indent=2))
    print("\n" + table)

    from jobs.daily import daily

    schedule = load_run_config("jobs/configs/mmoe.yaml", ["data.batch_size=512"])
    decisions = []
    for offset in range(3):
        day = start + dt.timedelta(days=offset)
        print(f"\n=== daily retraining: {day} ===", flush=True)
        decisions.append(daily(schedule, day, str(logs), args.out / "daily"))
    lines = ["| date | decision | reason | trained rows | report |", "| --- | --- | --- | ---: | --- |"]
    for d in decisions:
        lines.append(
            f"| {d['date']} | {d['status']} | {d['reason']} | {d['trained_rows']:,} | {d['report']} |"
        )
    (args.out / "daily.md").write_text("# Daily retraining\n\n" + "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    print(
        f"\ndemo: logs in {logs}, data report in {args.out / 'data-check'}, runs in {args.out / 'runs'}, "
        f"table in {args.out / 'models.md'}, daily schedule in {args.out / 'daily'} ({args.out / 'daily.md'})"
    )


if __name__ == "__main__":
    main()
