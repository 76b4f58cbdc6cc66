"""Train the same model with each loss-weighting method on the same logs and compare.

    python -m jobs.compare_weighting --logs DIR --out OUT [--config jobs/configs/mmoe.yaml]
        [--train-dates 2026-11-18..2026-11-19 --eval-dates 2026-11-20] [--methods fixed,dwa,...]
        [--set key=value ...] [--spec-set key=value ...] [--address ADDR]

Writes OUT/compare_weighting.md and OUT/compare_weighting.json: per method and task the AUC next to
the oracle AUC, the final weights, and training samples/s; each method's run directory is OUT/<method>.
Without --train-dates/--eval-dates the logs' last day is held out and the others train.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mtl_rec.run_config import load_run_config


def default_dates(logs: str) -> tuple[str, str]:
    days = sorted(p.name.split("=", 1)[1] for p in Path(logs).glob("dt=*") if p.is_dir())
    if len(days) < 2:
        raise SystemExit(f"{logs}: need at least two dt=YYYY-MM-DD partitions, found {days}")
    return ",".join(days[:-1]), days[-1]


def compare(
    config: str,
    logs: str,
    out: Path,
    methods: list[str],
    train_dates: str,
    eval_dates: str,
    overrides: list[str],
    spec_overrides: tuple[str, ...],
    address: str | None = None,
) -> dict:
    from jobs.train import train

    results = {}
    for method in methods:
        cfg = load_run_config(config, [*overrides, f"weighting.method={method}"])
        print(f"\n=== {method} ===", flush=True)
        metrics = train(cfg, logs, train_dates, eval_dates, out / method, spec_overrides, address)
        history = metrics["train"]["history"]
        results[method] = {
            "tasks": {
                t: {"auc": m["auc"], "oracle_auc": m.get("oracle_auc"), "rows": m["rows"]}
                for t, m in metrics["tasks"].items()
            },
            "final_weights": history[-1]["weights"] if history else None,
            "samples_per_s": metrics["train"]["samples_per_s"],
        }
    summary = {
        "config": config,
        "logs": logs,
        "train_dates": train_dates,
        "eval_dates": eval_dates,
        "methods": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_weighting.json").write_text(json.dumps(summary, indent=2))
    (out / "compare_weighting.md").write_text(to_markdown(summary))
    return summary


def to_markdown(summary: dict) -> str:
    methods = summary["methods"]
    tasks = list(next(iter(methods.values()))["tasks"])
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    oracle = {t: next(iter(methods.values()))["tasks"][t]["oracle_auc"] for t in tasks}
    lines = [
        f"# Loss weighting on {summary['config']}: {summary['train_dates']} -> {summary['eval_dates']}",
        "",
        "| method | " + " | ".join(f"{t} AUC" for t in tasks) + " | final weights | samples/s |",
        "| --- |" + " ---: |" * len(tasks) + " --- | ---: |",
        "| oracle | " + " | ".join(fmt(oracle[t]) for t in tasks) + " | | |",
    ]
    for method, r in methods.items():
        weights = ", ".join(f"{k} {v:.3g}" for k, v in (r["final_weights"] or {}).items()) or "n/a"
        lines.append(
            f"| {method} | "
            + " | ".join(fmt(r["tasks"][t]["auc"]) for t in tasks)
            + f" | {weights} | {r['samples_per_s']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from mtl_rec.weighting import METHODS

    parser = argparse.ArgumentParser(
        prog="python -m jobs.compare_weighting",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--logs", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default="jobs/configs/mmoe.yaml")
    parser.add_argument("--train-dates")
    parser.add_argument("--eval-dates")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated; default all: {', '.join(METHODS)}"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--spec-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", default=None)
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    train_dates, eval_dates = default_dates(args.logs)
    summary = compare(
        args.config,
        args.logs,
        args.out,
        methods,
        args.train_dates or train_dates,
        args.eval_dates or eval_dates,
        args.set,
        tuple(args.spec_set),
        args.address,
    )
    print("\n" + to_markdown(summary))


if __name__ == "__main__":
    main()
