"""Export a trained run as one self-contained serving artefact (see mtl_rec/export.py for the layout).

    python -m jobs.export --run RUN_DIR --out MODEL_DIR [--tables float32|float16|int8] [--compile]
        [--dense float32|bfloat16]

Runs on a plain CPU machine with no process group: the tables are gathered whole from the
checkpoint whatever its world size and sharding plan. MODEL_DIR then serves with
mtl_rec.serve.Predictor, `python -m jobs.predict` (batch) and `python -m jobs.serve` (HTTP).
float16 and int8 tables shrink the tables 2x and ~2.7x; `python -m jobs.bench serve` measures what
that costs in AUC (docs/benchmarks.md). --compile also builds the program with AOTInductor (C++
kernels, ~1.7x the rows/s on CPU; needs a C++ compiler here, not where it is served; ~30 s).
--dense bfloat16 runs the backbone (the experts' matmuls) in bfloat16: ~2x its rows/s on CPUs with
AVX512-BF16 or AMX, scores moved in the third decimal (the AUC change is in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs.cli import run_job
from mtl_rec.export import DENSE_FORMATS, TABLE_FORMATS, export_run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a jobs.train output directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tables", choices=TABLE_FORMATS, default="float32", help="table storage")
    parser.add_argument("--compile", action="store_true", help="also an AOTInductor build (model.aoti.pt2)")
    parser.add_argument("--dense", choices=DENSE_FORMATS, default="float32", help="the backbone's precision")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    manifest = export_run(args.run, args.out, args.tables, args.compile, args.dense)
    targets = ", ".join(t["name"] for t in manifest["targets"])
    print(
        f"export: {manifest['arch']} from {manifest['run']} (step {manifest['checkpoint']['step']}, "
        f"{manifest['checkpoint']['world_size']} ranks) -> {args.out}: targets {targets}; "
        f"{manifest['tables']} tables {manifest['table_bytes'] / 2**20:.1f} MiB, {manifest['dense']} backbone"
        f"{', compiled (AOTInductor)' if manifest['compiled'] else ''}; "
        f"{time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    run_job(main)
