"""`make demo`: generate three days of sample logs, run the pipeline on a local Ray, write a report.

python -m jobs.demo --out demo [--rows-per-day 200000]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from mtl_rec.config.data import DataConfig


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.demo", description=__doc__)
    parser.add_argument("--out", default="demo", type=Path)
    parser.add_argument("--rows-per-day", type=int, default=200_000)
    parser.add_argument("--start", default="2026-11-18")
    args = parser.parse_args(argv)

    from jobs.check_logs import check_logs, to_markdown
    from jobs.make_logs import GeneratorConfig, generate_logs

    logs = args.out / "logs"
    start = dt.date.fromisoformat(args.start)
    if not (logs / "_SUCCESS").exists():
        generate_logs(logs, start, 3, args.rows_per_day, GeneratorConfig(seed=0))
        (logs / "_SUCCESS").touch()
    dates = f"{start}..{start + dt.timedelta(days=2)}"
    report = check_logs(
        str(logs),
        dates,
        "jobs/configs/features.yaml",
        args.out / "data-check",
        DataConfig(on_bad_rows="quarantine"),
    )
    print(to_markdown(report))
    print(f"demo: logs in {logs}, report in {args.out / 'data-check'}/data_report.md")


if __name__ == "__main__":
    main()
