"""Row-level validation of a block of logs, vectorised with pyarrow / numpy.

Each row gets the FIRST reason it fails (checks run in a fixed order), so counts add up to the
number of bad rows. Under `on_bad_rows: error` the first bad block stops the job with the file,
column and counts; under `quarantine` bad rows are written with a `_reject_reason` column to
QUARANTINE_DIR/<file-stem>-<first request id>.parquet and dropped from the block. The name is a
function of the rows, so re-running a block (a second epoch, a stats pass, a retried task) rewrites
the same file, and `quarantine_summary` counts distinct rows (file and position): nothing is
counted twice.

Example::

    >>> good = validate_block(table, spec, policy="quarantine", quarantine_dir="run/quarantine")
    >>> quarantine_summary("run/quarantine")["rows"]
    3
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtl_rec.config import FeatureSpec
from mtl_rec.data_position import POSITION_COLUMN
from mtl_rec.transform import describe_failures, feature_checks, filled, first_failures, null_mask
from pipelines.errors import BadRowsError
from pipelines.ids import DUPLICATE_COLUMN, PARTITION_DAY_COLUMN

REASON_COLUMN = "_reject_reason"
# A row's time (seconds since 1970, UTC) may fall this many days either side of its dt= partition:
# events near midnight land in the next day's export. Beyond it the time is wrong (0 for 1970, ms
# written as s), and so is everything computed by time.
PARTITION_SLACK_DAYS = 1
SOURCE_COLUMN = "_source_file"


def _row_checks(table: pa.Table, spec: FeatureSpec):
    """Yield (reason, [B] bool) for every check, in order. The spec's optional row columns (id, time,
    group key: "" when the logs have none) are checked where they exist."""
    if spec.id_column:  # else the reader derived the ids from positions: never null, never repeated
        yield from _id_checks(table, spec.id_column)
    if spec.time_column:
        yield from _time_checks(table, spec.time_column)
    if spec.group_key:
        yield f"{spec.group_key}: null", null_mask(table[spec.group_key])
    yield from feature_checks(table, spec)  # the model inputs: the checks serving runs too
    labels = {}
    for label in spec.labels:
        # float64 first: -1 (the null fill) does not fit a uint8 or bool label column.
        column = table[label].cast(pa.float64())
        values = filled(column, -1.0)
        nulls = null_mask(column)
        yield f"{label}: null or NaN label", nulls
        outside = ~np.isin(values, (0.0, 1.0))  # [B]; nulls were filled with -1, reported just above
        yield f"{label}: label not in {{0, 1}}", outside if nulls is False else outside & ~nulls
        labels[label] = values
    for parent, child in zip(spec.funnel, spec.funnel[1:]):
        yield f"{child}: {child}=1 without {parent}=1 (funnel)", (labels[child] == 1) & (labels[parent] != 1)
    # The oracle's true probabilities (generated logs): a bad one would make the oracle AUC
    # meaningless (or crash the exact AUC), so its row is bad like any other.
    for name in (c for c in table.column_names if c.startswith(spec.truth_prefix)):
        column = table[name].cast(pa.float64())
        values = filled(column, -1.0)  # [B]; nulls filled outside [0, 1]
        yield f"{name}: truth probability null, NaN or outside [0, 1]", ~((values >= 0) & (values <= 1))


def _id_checks(table: pa.Table, column: str):
    yield f"{column}: null", null_mask(table[column])
    if DUPLICATE_COLUMN in table.column_names:  # the reader's mark from the id audit (pipelines.ids)
        yield f"{column}: duplicate id (an earlier row has it)", filled(table[DUPLICATE_COLUMN], False)
    if pa.types.is_uint64(table.schema.field(column).type):  # ids are int64 from here on
        ids = filled(table[column], 0)  # [B] uint64
        yield f"{column}: id >= 2**63 (does not fit int64)", ids > np.iinfo(np.int64).max


def _time_checks(table: pa.Table, column: str):
    yield f"{column}: null", null_mask(table[column])
    if PARTITION_DAY_COLUMN in table.column_names:  # the reader's dt= date of the row's file
        day = filled(table[column], 0).astype(np.int64) // 86400  # [B] days since 1970
        away = np.abs(day - filled(table[PARTITION_DAY_COLUMN], 0))  # [B]
        yield (
            f"{column}: more than {PARTITION_SLACK_DAYS} day from its partition's date "
            "(seconds since 1970, UTC)",
            away > PARTITION_SLACK_DAYS,
        )


def find_bad_rows(table: pa.Table, spec: FeatureSpec) -> tuple[np.ndarray, list[str]]:
    """([B] int16 index into reasons, -1 for good rows; reasons)."""
    return first_failures(_row_checks(table, spec), table.num_rows)


def validate_block(
    table: pa.Table, spec: FeatureSpec, policy: str, quarantine_dir: str | None, source: str = "<memory>"
) -> pa.Table:
    """The block's good rows; the bad ones are raised or quarantined per `policy`. `source` names the file."""
    first, reasons = find_bad_rows(table, spec)
    bad = first >= 0
    if not bad.any():
        return table
    if policy == "error":
        raise BadRowsError(_describe(source, first, reasons))
    if policy != "quarantine" or not quarantine_dir:
        raise ValueError(
            f"on_bad_rows must be 'error' or 'quarantine' (with a quarantine dir), got {policy!r}"
        )
    rejected = table.filter(pa.array(bad))
    reason_text = np.asarray(reasons, dtype=object)[first[bad]]
    rejected = rejected.append_column(REASON_COLUMN, pa.array(reason_text, pa.string()))
    rejected = rejected.append_column(SOURCE_COLUMN, pa.array([source] * rejected.num_rows, pa.string()))
    _write_quarantine(rejected, spec, Path(quarantine_dir), source)
    return table.filter(pa.array(~bad))


def _describe(source: str, first: np.ndarray, reasons: list[str]) -> str:
    return (
        f"{describe_failures(source, first, reasons)} in this block; "
        "policy on_bad_rows=error (set data.on_bad_rows=quarantine to set them aside)"
    )


def _write_quarantine(rejected: pa.Table, spec: FeatureSpec, quarantine_dir: Path, source: str) -> None:
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    ids = rejected[spec.row_id_column]
    key = hashlib.sha1(f"{source}|{ids[0].as_py()}|{ids[-1].as_py()}|{len(ids)}".encode()).hexdigest()[:16]
    final = quarantine_dir / f"{Path(source).stem}-{key}.parquet"
    temporary = final.with_suffix(f".{np.random.randint(1 << 30)}.tmp")
    pq.write_table(rejected, temporary)
    temporary.replace(final)  # atomic: a reader never sees half a file


def quarantine_summary(quarantine_dir: str | Path, id_column: str = "request_id") -> dict:
    """{"rows": quarantined rows, "by_reason": {...}, "by_file": {...}}, each row counted once.

    A row is known by its file and its position there (POSITION_COLUMN, set by the reader), not by its
    request id: null ids and duplicated ids are distinct rows. Blocks cut differently by two passes
    (the stats pass, an epoch) write the same row to two quarantine files; it counts once. Rows
    validated outside the reader (no position) are known by (file, request id), nulls each apart.
    """
    quarantine_dir = Path(quarantine_dir)
    files = sorted(quarantine_dir.glob("*.parquet")) if quarantine_dir.is_dir() else []
    if not files:
        return {"rows": 0, "by_reason": {}, "by_file": {}}
    tables = []
    for path in files:
        names = pq.read_schema(path).names
        key = POSITION_COLUMN if POSITION_COLUMN in names else id_column
        table = pq.read_table(path, columns=[key, REASON_COLUMN, SOURCE_COLUMN])
        tables.append(table.rename_columns(["_key", REASON_COLUMN, SOURCE_COLUMN]))
    merged = pa.concat_tables(tables, promote_options="permissive")
    keys = merged["_key"].combine_chunks()  # positions and request ids: integers
    nulls = filled(pc.is_null(keys), False)  # [n]
    null_rank = np.where(nulls, np.cumsum(nulls), 0)  # [n]: every null its own row
    _, source_code = np.unique(filled(merged[SOURCE_COLUMN], "?"), return_inverse=True)  # [n]
    key_values = filled(keys, 0).astype(np.int64)  # [n]; a uint64 id wraps: still one value per id
    identity = np.stack([source_code, key_values, null_rank], axis=1)  # [n, 3]
    _, first = np.unique(identity, axis=0, return_index=True)
    merged = merged.take(pa.array(np.sort(first)))
    count = lambda col: {
        str(k): int(v) for k, v in zip(*np.unique(filled(merged[col], "?"), return_counts=True))
    }  # noqa: E731
    return {"rows": merged.num_rows, "by_reason": count(REASON_COLUMN), "by_file": count(SOURCE_COLUMN)}
