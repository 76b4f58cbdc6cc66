"""`python -m jobs.bench SECTION --out FILE.json`: run the sections, print their tables and a summary.

Example::

    python -m jobs.bench all --out docs/bench-latest.json          # `make bench`, ~15 minutes
    python -m jobs.bench all --quick --out /tmp/bench-quick.json    # smoke run of every section
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.bench import __doc__ as OVERVIEW
from jobs.bench.quality import PRESETS

SECTIONS = ("loader", "flops", "train", "growth", "weighting")  # `all`: the speed sections
QUALITY_SIZES = [100_000, 400_000]
SMALL_EVAL_ROWS = 16_384
# --quick: every section on small sizes, in its own cache (the full-size logs stay cached).
QUICK = {
    "cache": "data/bench-quick",
    "rows_per_day": 40_000,
    "batch_size": 1024,
    "train_batch_size": 1024,
    "weighting_batch_size": 1024,
    "repeat": 1,
    "train_repeat": 1,
    "adult_repeat": 1,
    "weighting_steps": 2,
    "weighting_warmup": 1,
    "weighting_rounds": 1,
    "growth_rows": [1, 2],
    "growth_tables": [2],
    "growth_workers": [1],
    "serve_rows": 20_000,
    "serve_repeat": 1,
    "groups_rows": 20_000,
    "headroom_rows": 20_000,
}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.bench",
        description=OVERVIEW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("what", choices=[*SECTIONS, "quality", "serve", "groups", "headroom", "all"])
    parser.add_argument("--out", default="docs/bench-latest.json")
    parser.add_argument(
        "--quick", action="store_true", help="small sizes for a smoke run (figures mean nothing)"
    )
    parser.add_argument(
        "--spec", default="jobs/configs/features.yaml", help="feature spec of the loader section"
    )
    parser.add_argument("--cache", default="data/bench", help="where generated logs and run folders are kept")
    parser.add_argument(
        "--rows-per-day", type=int, default=1_000_000, help="rows per generated benchmark day"
    )
    parser.add_argument("--days", type=int, default=2, help="days the loader section reads")
    parser.add_argument("--batch-size", type=int, default=4096, help="loader section batch")
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the loader section's Ray")
    parser.add_argument("--consumer-cpus", type=float, default=0.5, help="logical CPUs per consumer actor")
    parser.add_argument("--repeat", type=int, default=2, help="loader runs (the best is kept)")
    parser.add_argument("--train-config", default="jobs/configs/mmoe.yaml")
    parser.add_argument("--train-batch-size", type=int, default=4096, help="per worker")
    parser.add_argument(
        "--train-repeat", type=int, default=3, help="alternating end-to-end and ceiling runs (best kept)"
    )
    parser.add_argument("--growth-rows", type=_ints, default=[1, 2, 4], help="rows factors, e.g. 1,2,4")
    parser.add_argument("--growth-tables", type=_ints, default=[2, 4], help="table-size factors, e.g. 2,4")
    parser.add_argument("--growth-workers", type=_ints, default=[1], help="worker counts beside 2, e.g. 1")
    parser.add_argument("--weighting-batch-size", type=int, default=4096)
    parser.add_argument("--weighting-steps", type=int, default=20)
    parser.add_argument("--weighting-warmup", type=int, default=3)
    parser.add_argument("--weighting-rounds", type=int, default=2)
    parser.add_argument(
        "--quality-sizes",
        type=_ints,
        default=QUALITY_SIZES,
        help="rows per generated day, e.g. 100000,400000",
    )
    parser.add_argument("--quality-presets", type=lambda t: t.split(","), default=list(PRESETS))
    parser.add_argument(
        "--quality-set", action="append", default=[], metavar="KEY=VALUE", help="preset override"
    )
    parser.add_argument("--no-single-task", dest="quality_single_task", action="store_false")
    parser.add_argument("--no-adult", dest="quality_adult", action="store_false")
    parser.add_argument(
        "--adult-buckets", type=int, default=0, metavar="N",
        help="quality on Adult converted with `--buckets N`: every library sees the bucket features",
    )  # fmt: skip
    parser.add_argument(
        "--serve-rows", type=int, default=200_000, help="serve: rows of its train and eval day"
    )
    parser.add_argument(
        "--serve-repeat", type=int, default=2, help="serve: batch-prediction runs (best kept)"
    )
    parser.add_argument(
        "--quality-epochs", type=_ints, default=[1, 20], help="Adult: fixed epochs of every library"
    )
    parser.add_argument(
        "--adult-repeat", type=int, default=2,
        help="Adult: rounds of the fixed-epoch runs, alternating libraries; each keeps its fastest speed",
    )  # fmt: skip
    parser.add_argument(
        "--headroom-rows", type=int, default=400_000, help="headroom: rows of the evaluation day scored"
    )
    parser.add_argument("--groups-rows", type=int, default=300_000, help="groups: rows of each of its 3 days")
    parser.add_argument(
        "--groups-method", default="uncertainty", help="groups: the weighting method of both runs"
    )
    parser.add_argument(
        "--groups-set", action="append", default=[], metavar="KEY=VALUE", help="groups: override, both runs"
    )
    parser.add_argument(
        "--groups-correlation",
        type=lambda t: [float(x) for x in t.split(",")],
        default=[0.9, 0.9, 0.0],
        help="groups: the generator's domain_task_correlation, one value per domain",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:  # quick sizes, except where the command line set a value itself
        given = {
            a.dest for a in parser._actions if any(opt in (argv or sys.argv[1:]) for opt in a.option_strings)
        }
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    return args


def needed_days(args, sections: list[str]) -> dict:
    from jobs.bench.common import SMALL_EVAL_DAY, day

    days = {}
    if "loader" in sections:
        days |= {day(i): args.rows_per_day for i in range(args.days)}
    if {"train", "weighting"} & set(sections):
        days |= {day(0): args.rows_per_day, day(1): args.rows_per_day}
    if "growth" in sections:
        days |= {day(0): args.rows_per_day, SMALL_EVAL_DAY: SMALL_EVAL_ROWS}
    return days


def run(args, argv: list[str] | None = None) -> dict:
    """Run the chosen sections; return (and write to args.out) the results with a summary table."""
    from jobs.bench.common import ensure_logs, local_ray, machine
    from jobs.bench.report import format_table, summary_rows
    from mtl_rec.config.features import load_feature_spec
    from mtl_rec.run_config import load_run_config

    sections = (
        list(SECTIONS)
        if args.what == "all"
        else []
        if args.what in ("quality", "serve", "groups", "headroom")
        else [args.what]
    )
    command = "python -m jobs.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict = {"machine": machine(), "command": command}
    spec = load_feature_spec(args.spec)
    train_spec = load_run_config(args.train_config).feature_spec()
    ensure_logs(Path(args.cache), spec if "loader" in sections else train_spec, needed_days(args, sections))

    if "loader" in sections:
        from jobs.bench.loader import bench_loader, print_loader

        results["loader"] = bench_loader(args, spec)
        print_loader(results["loader"])
    if {"flops", "train"} & set(sections):
        from jobs.bench.flops import bench_flops, print_flops

        results["flops"] = bench_flops(args)
        print_flops(results["flops"])
    if {"train", "growth"} & set(sections):
        with local_ray():
            if "train" in sections:
                from jobs.bench.train import bench_train, print_train

                results["train"] = bench_train(args, results["flops"])
                print_train(results["train"])
            if "growth" in sections:
                from jobs.bench.growth import bench_growth, print_growth

                results["growth"] = bench_growth(args, train_spec)
                print_growth(results["growth"])
    if "weighting" in sections:
        from jobs.bench.weighting import bench_weighting, print_weighting

        results["weighting"] = bench_weighting(args)
        print_weighting(results["weighting"])
    if args.what == "quality":
        from jobs.bench.quality import bench_quality, print_quality

        results["quality"] = bench_quality(args)
        print_quality(results["quality"])

    if args.what == "groups":
        from jobs.bench.groups import bench_groups, print_groups

        results["groups"] = bench_groups(args)
        print_groups(results["groups"])

    if args.what == "headroom":
        from jobs.bench.headroom import bench_headroom, print_headroom

        results["headroom"] = bench_headroom(args)
        print_headroom(results["headroom"])

    if args.what == "serve":
        from jobs.bench.serve import bench_serve, print_serve

        results["serve"] = bench_serve(args)
        print_serve(results["serve"])

    rows = summary_rows(results)
    results["summary"] = [
        dict(zip(("section", "measure", "value", "compared_with", "goal", "met"), r.cells())) for r in rows
    ]
    print(
        f"\nsummary ({results['machine']['cores']} cores, {results['machine']['cpu']}):\n{format_table(rows)}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return results


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv), argv)


if __name__ == "__main__":
    main()
