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
from pipelines.errors import BadRowsError
from pipelines.ids import DUPLICATE_COLUMN, PARTITION_DAY_COLUMN

REASON_COLUMN = "_reject_reason"
FLOAT32_MAX = float(np.finfo(np.float32).max)
# A row's time (seconds since 1970, UTC) may fall this many days either side of its dt= partition:
# events near midnight land in the next day's export. Beyond it the time is wrong (0 for 1970, ms
# written as s), and so is everything computed by time.
PARTITION_SLACK_DAYS = 1
SOURCE_COLUMN = "_source_file"


def _np(array: pa.Array | pa.ChunkedArray, fill) -> np.ndarray:
    """A numpy view of an Arrow column with nulls replaced by `fill` (a sentinel the checks reject)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.null_count:
        array = pc.fill_null(array, fill)
    return array.to_numpy(zero_copy_only=False)


def _null(array) -> np.ndarray | bool:
    """[B] bool: null (or NaN) entries. Plain False, which broadcasts, when Arrow counts no nulls and
    the type cannot hold NaN: most columns, and the scan is skipped."""
    if array.null_count == 0 and not pa.types.is_floating(array.type):
        return False
    return _np(pc.is_null(array, nan_is_null=True), False)


def _id_checks(name: str, ids: np.ndarray, nulls: np.ndarray, limit: int | None):
    yield f"{name}: null id", nulls
    yield f"{name}: negative id", ids < 0
    if limit is not None:
        yield f"{name}: id >= num_embeddings ({limit}) of an identity-mapped table", ids >= limit


def _row_checks(table: pa.Table, spec: FeatureSpec):
    """Yield (reason, [B] bool) for every check, in order."""
    n = table.num_rows
    yield f"{spec.id_column}: null", _null(table[spec.id_column])
    if DUPLICATE_COLUMN in table.column_names:  # the reader's mark from the id audit (pipelines.ids)
        yield f"{spec.id_column}: duplicate id (an earlier row has it)", _np(table[DUPLICATE_COLUMN], False)
    if pa.types.is_uint64(table.schema.field(spec.id_column).type):  # ids are int64 from here on
        ids = _np(table[spec.id_column], 0)  # [B] uint64
        yield f"{spec.id_column}: id >= 2**63 (does not fit int64)", ids > np.iinfo(np.int64).max
    yield f"{spec.time_column}: null", _null(table[spec.time_column])
    if PARTITION_DAY_COLUMN in table.column_names:  # the reader's dt= date of the row's file
        day = _np(table[spec.time_column], 0).astype(np.int64) // 86400  # [B] days since 1970
        away = np.abs(day - _np(table[PARTITION_DAY_COLUMN], 0))  # [B]
        yield (
            f"{spec.time_column}: more than {PARTITION_SLACK_DAYS} day from its partition's date "
            "(seconds since 1970, UTC)",
            away > PARTITION_SLACK_DAYS,
        )
    yield f"{spec.group_key}: null", _null(table[spec.group_key])
    for feature in spec.sparse:
        column = table[feature.column].combine_chunks()
        table_spec = spec.tables[feature.table]
        limit = table_spec.num_embeddings if table_spec.id_map == "identity" else None
        if not feature.multi_hot:
            yield from _id_checks(feature.column, _np(column, 0), _null(column), limit)
            continue
        yield f"{feature.column}: null list", _null(column)
        values = pc.list_flatten(column)
        parents = _np(pc.list_parent_indices(column), 0)
        for reason, bad_values in _id_checks(feature.column, _np(values, 0), _null(values), limit):
            bad_rows = np.zeros(n, dtype=bool)
            if bad_values is not False:
                bad_rows[parents[bad_values]] = True  # a row is bad when any of its ids is
            yield reason.replace(" id", " id in list", 1), bad_rows
    for feature in spec.dense:
        column = table[feature.column]
        values = _np(column, 0.0).astype(np.float64, copy=False)
        yield f"{feature.column}: null, NaN or inf", _null(column) | ~np.isfinite(values)
        # The tables and the scaling run in float32: a finite float64 beyond its range becomes inf.
        yield f"{feature.column}: |value| beyond float32 range (3.4e38)", np.abs(values) > FLOAT32_MAX
        if feature.transform == "log1p":
            yield f"{feature.column}: negative value (log1p transform needs >= 0)", values < 0
    if spec.domain_column:
        domains = _np(table[spec.domain_column], -1)  # [B]; an integer column (read.py), nulls as -1
        bad = (domains < 0) | (domains >= spec.num_domains)  # [B] bool
        yield f"{spec.domain_column}: domain null or not in [0, {spec.num_domains})", bad
    labels = {}
    for label in spec.labels:
        # float64 first: -1 (the null fill) does not fit a uint8 or bool label column.
        column = table[label].cast(pa.float64())
        values = _np(column, -1.0)
        nulls = _null(column)
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
        values = _np(column, -1.0)  # [B]; nulls filled outside [0, 1]
        yield f"{name}: truth probability null, NaN or outside [0, 1]", ~((values >= 0) & (values <= 1))


def find_bad_rows(table: pa.Table, spec: FeatureSpec) -> tuple[np.ndarray, list[str]]:
    """([B] int16 index into reasons, -1 for good rows; reasons)."""
    first = np.full(table.num_rows, -1, dtype=np.int16)
    reasons = []
    for reason, bad in _row_checks(table, spec):
        if bad is not False:
            first[(first < 0) & bad] = len(reasons)
        reasons.append(reason)
    return first, reasons


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
    codes, counts = np.unique(first[first >= 0], return_counts=True)
    detail = "; ".join(f"{reasons[c]}: {k} rows" for c, k in zip(codes, counts))
    return (
        f"{source}: {counts.sum()} bad of {len(first)} rows in this block ({detail}); "
        "policy on_bad_rows=error (set data.on_bad_rows=quarantine to set them aside)"
    )


def _write_quarantine(rejected: pa.Table, spec: FeatureSpec, quarantine_dir: Path, source: str) -> None:
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    ids = rejected[spec.id_column]
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
    nulls = _np(pc.is_null(keys), False)  # [n]
    null_rank = np.where(nulls, np.cumsum(nulls), 0)  # [n]: every null its own row
    _, source_code = np.unique(_np(merged[SOURCE_COLUMN], "?"), return_inverse=True)  # [n]
    key_values = _np(keys, 0).astype(np.int64)  # [n]; a uint64 id wraps: still one value per id
    identity = np.stack([source_code, key_values, null_rank], axis=1)  # [n, 3]
    _, first = np.unique(identity, axis=0, return_index=True)
    merged = merged.take(pa.array(np.sort(first)))
    count = lambda col: {
        str(k): int(v) for k, v in zip(*np.unique(_np(merged[col], "?"), return_counts=True))
    }  # noqa: E731
    return {"rows": merged.num_rows, "by_reason": count(REASON_COLUMN), "by_file": count(SOURCE_COLUMN)}
