"""Batch scoring with an export: days of logs -> Parquet of request ids and per-target probabilities.

    python -m jobs.predict --model MODEL_DIR --logs DIR --dates 2026-11-20[..2026-11-21] --out OUT
        [--batch-rows 65536] [--on-bad-rows error|quarantine] [--on-bad-files error|skip] [--threads N]

    OUT/dt=D/<file>.parquet             request_id, then one float32 column per target (the export's
                                        manifest order), one row group per batch, rows in file order;
                                        logs without an id column get _row_id, the id training derived
    OUT/_quarantine/dt=D/<file>.parquet rows set aside (on_bad_rows=quarantine) with _reject_reason
    OUT/PREDICTED.json                  written last: per file rows read, scored and set aside

The logs need the request id and the model's input columns only (no labels: tomorrow's impressions
score as well as yesterday's). Files are listed and their footers checked the way training does
(hidden and temporary files ignored, a column of the wrong type is a bad file), then streamed
batch by batch through mtl_rec.serve.Predictor: memory is one batch whatever the day's size, and
every output file is written under a temporary name and renamed when complete. Rows read = scored +
set aside, per file, or the job fails.

Example::

    >>> summary = predict(Path("models/mmoe"), "data/logs", "2026-11-21", Path("scores/2026-11-21"))
    >>> summary["rows"], summary["scored"], summary["quarantined"]
    (200000, 200000, 0)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from jobs.cli import run_job
from mtl_rec.config.features import ROW_ID_COLUMN
from mtl_rec.serve import InvalidRowsError, Predictor
from mtl_rec.transform import describe_failures
from pipelines.errors import BadInputError, BadRowsError
from pipelines.read import LogFile, inspect_logs, parse_dates, readable_blocks
from pipelines.row_ids import block_row_ids, days_since_1970
from pipelines.validate import REASON_COLUMN

SUMMARY = "PREDICTED.json"


def _score_file(
    predictor: Predictor,
    log_file: LogFile,
    columns: list[str],
    out: Path,
    quarantine: Path | None,
    batch_rows: int,
    progress,
) -> dict:
    """Score one log file into `out`, atomically: a partial file never appears under its name.
    Bad rows raise BadRowsError, or go to `quarantine`. Returns the file's counts."""
    path, derive_ids = log_file.path, not predictor.spec.id_column
    temporary = out.with_name(f".{out.name}.tmp")
    writer, rejected, counts = None, [], {"path": path, "rows": 0, "scored": 0, "quarantined": 0}
    try:
        for block in readable_blocks(path, columns, batch_rows):
            if derive_ids:  # logs without an id column: the ids training and jobs.evaluate derive
                day = days_since_1970(log_file.date)
                ids = block_row_ids(day, log_file.ordinal, counts["rows"], block.num_rows)  # [n]
                block = block.append_column(ROW_ID_COLUMN, pa.array(ids))
            scored, set_aside = _score_block(predictor, block, path, quarantine is not None)
            if set_aside is not None:
                rejected.append(set_aside)
            if writer is None:
                temporary.parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(str(temporary), scored.schema)
            writer.write_table(scored)
            counts["rows"] += block.num_rows
            counts["scored"] += scored.num_rows
            counts["quarantined"] += block.num_rows - scored.num_rows
            progress.update(block.num_rows)
    except BaseException:
        if writer is not None:
            writer.close()
        temporary.unlink(missing_ok=True)
        raise
    if writer is not None:
        writer.close()
        temporary.replace(out)
    if rejected:
        quarantine.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(rejected), quarantine / out.name)
    return counts


def _score_block(predictor: Predictor, block: pa.Table, path: str, keep_bad: bool):
    """(scores: request id + one column per target, the bad rows with their reasons or None)."""
    try:
        table = predictor.as_table(block, source=path)
    except InvalidRowsError as e:
        raise BadInputError(str(e)) from None  # a column of the wrong kind: the whole file is bad
    first, reasons = predictor.bad_rows(table)
    bad = first >= 0  # [B] bool
    set_aside = None
    if bad.any():
        if not keep_bad:
            raise BadRowsError(
                f"{describe_failures(path, first, reasons)} in this block; policy on_bad_rows=error "
                "(--on-bad-rows quarantine sets them aside)"
            )
        reason_text = np.asarray(reasons, dtype=object)[first[bad]]
        set_aside = block.filter(pa.array(bad)).append_column(
            REASON_COLUMN, pa.array(reason_text, pa.string())
        )
        block, table = block.filter(pa.array(~bad)), table.filter(pa.array(~bad))
    scores = predictor.predict_checked(table)  # {target: [B'] float32}
    id_column = predictor.spec.row_id_column
    return pa.table({id_column: block[id_column], **{n: pa.array(v) for n, v in scores.items()}}), set_aside


def predict(
    model_dir: Path,
    logs: str,
    dates,
    out: Path,
    batch_rows: int = 65536,
    on_bad_rows: str = "error",
    on_bad_files: str = "error",
    threads: int | None = None,
) -> dict:
    """Score the days (see module doc); returns the summary also written to OUT/PREDICTED.json."""
    if on_bad_rows not in ("error", "quarantine"):
        raise ValueError(f"on_bad_rows must be error or quarantine, got {on_bad_rows!r}")
    started = time.perf_counter()
    predictor = Predictor(model_dir, threads=threads)
    loaded = time.perf_counter()
    spec = predictor.spec
    columns = list(dict.fromkeys(c for c in (spec.id_column, *predictor.columns) if c))
    days = parse_dates(dates)
    inventory = inspect_logs(logs, days, spec, on_bad_files=on_bad_files, check_ids=False, columns=columns)
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)  # a previous, maybe interrupted, scoring of these days
    files = []
    with tqdm(total=inventory.rows, unit="rows", unit_scale=True, desc="predict", mininterval=5) as progress:
        for log_file in inventory.files:
            day = f"{spec.date_column}={log_file.date.isoformat()}"
            quarantine = out / "_quarantine" / day if on_bad_rows == "quarantine" else None
            target = out / day / Path(log_file.path).name
            try:
                counts = _score_file(predictor, log_file, columns, target, quarantine, batch_rows, progress)
            except BadRowsError:
                raise
            except BadInputError as e:  # a data page that does not decode, a column of the wrong kind
                if on_bad_files != "skip":
                    raise
                inventory.skipped.append({"path": log_file.path, "reason": str(e), "rows": log_file.rows})
                continue
            if counts["rows"] != log_file.rows or counts["scored"] + counts["quarantined"] != counts["rows"]:
                raise RuntimeError(f"{log_file.path}: {counts} does not account for its {log_file.rows} rows")
            files.append(counts)
    seconds = time.perf_counter() - loaded
    summary = {
        "model": str(model_dir),
        "targets": list(predictor.targets),
        "dates": [d.isoformat() for d in days],
        "rows": sum(f["rows"] for f in files),
        "scored": sum(f["scored"] for f in files),
        "quarantined": sum(f["quarantined"] for f in files),
        "skipped_files": inventory.skipped,
        "ignored": inventory.ignored,
        "files": files,
        "program": predictor.runs,
        "load_s": round(loaded - started, 3),
        "seconds": round(seconds, 3),  # reading, checking, scoring and writing, after the load
        "rows_per_s": round(sum(f["rows"] for f in files) / seconds, 1),
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, required=True, help="an export directory (python -m jobs.export)"
    )
    parser.add_argument("--logs", required=True)
    parser.add_argument("--dates", required=True, help="2026-11-20, 2026-11-20,2026-11-22 or A..B")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows per batch (memory is one batch)")
    parser.add_argument("--on-bad-rows", choices=("error", "quarantine"), default="error")
    parser.add_argument("--on-bad-files", choices=("error", "skip"), default="error")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    summary = predict(
        args.model,
        args.logs,
        args.dates,
        args.out,
        args.batch_rows,
        args.on_bad_rows,
        args.on_bad_files,
        args.threads,
    )
    print(
        f"predict: {summary['scored']:,} of {summary['rows']:,} rows scored, {summary['quarantined']:,} set "
        f"aside, {len(summary['skipped_files'])} files skipped, {summary['rows_per_s']:,.0f} rows/s "
        f"-> {args.out}"
    )
    return 0


if __name__ == "__main__":
    run_job(main)
