"""Convert a public dataset into the project's log layout, feature spec and presets.

    python -m jobs.datasets adult --out data/adult [--cache ~/.cache/mtl-rec] [--buckets N]

Prints the row counts, positive rates and the `python -m jobs.train` command for the written logs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.datasets import adult

DATASETS = {"adult": (adult.write_adult, adult.format_summary, adult.__doc__.split("\n\n")[0])}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.datasets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    for name, (_, _, summary) in DATASETS.items():
        command = commands.add_parser(name, help=summary, description=summary)
        command.add_argument(
            "--out", required=True, type=Path, help="output folder (logs/, features.yaml, ...)"
        )
        command.add_argument(
            "--cache",
            type=Path,
            default=adult.DEFAULT_CACHE,
            help=f"where the downloaded source is kept (default {adult.DEFAULT_CACHE})",
        )
        command.add_argument(
            "--buckets",
            type=int,
            default=0,
            help="also bucketize each numeric column into up to N quantile buckets of the training rows "
            "(a sparse feature `<column>_bucket` beside the dense one); 0: none (default)",
        )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    write, describe, _ = DATASETS[args.dataset]
    print(describe(write(args.out, args.cache, args.buckets)))


if __name__ == "__main__":
    main()
