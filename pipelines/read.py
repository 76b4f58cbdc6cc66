"""Find the day partitions, check every file's footer, then read them with Ray Data.

The footer pass (Parquet metadata only, no data pages) runs on the driver before any Ray task and
catches file-level problems with a precise message: a missing day, an empty or corrupt file, a
missing column, a column of the wrong type, a schema that drifts between files. Row counts come
from the footers too, so the pipeline knows how many rows it must deliver. Under on_bad_files=skip
the driver also decodes every page of the columns read (threads, a block at a time), so a file whose
data does not decode behind an intact footer is set aside with its row count before any row of it
is trained, instead of stopping the job halfway through a pass.

Example::

    >>> dates = parse_dates("2026-11-18..2026-11-20")
    >>> inventory = inspect_logs("data/logs", dates, spec)        # raises BadInputError on bad files
    >>> ds = read_logs(inventory, prepare)                         # ray.data.Dataset of prepare()d blocks
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl_rec.config import FeatureSpec
from mtl_rec.config.features import ROW_ID_COLUMN
from mtl_rec.data_position import POSITION_COLUMN, DataPosition, contains, encode_positions
from pipelines.errors import BadInputError
from pipelines.ids import DUPLICATE_COLUMN, PARTITION_DAY_COLUMN, IdAudit, audit_ids, duplicates_error
from pipelines.row_ids import block_row_ids, days_since_1970, row_id_problem


def parse_dates(text: str | Sequence[str]) -> list[dt.date]:
    """'2026-11-18..2026-11-20' (inclusive range), '2026-11-18,2026-11-20', or a list of ISO dates."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    dates: list[dt.date] = []
    for part in (p.strip() for p in parts if p.strip()):
        try:
            if ".." in part:
                first, last = (dt.date.fromisoformat(x) for x in part.split(".."))
                if last < first:
                    raise BadInputError(f"date range {part!r} ends before it starts")
                dates += [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
            else:
                dates.append(dt.date.fromisoformat(part))
        except ValueError as e:
            if isinstance(e, BadInputError):
                raise
            raise BadInputError(f"cannot parse date {part!r}: expected YYYY-MM-DD or FIRST..LAST") from e
    if not dates:
        raise BadInputError(f"no dates in {text!r}")
    return sorted(set(dates))


@dataclass(frozen=True)
class LogFile:
    path: str
    date: dt.date
    rows: int
    ordinal: int = 0  # its place among the data files of its date folder, in name order (pipelines.row_ids)


@dataclass
class LogInventory:
    """The files to read, their row counts, and the files set aside (on_bad_files: skip)."""

    files: list[LogFile]
    columns: list[str]  # columns the reader loads: the spec's inputs plus any _truth_ columns present
    truth_columns: list[str]
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason", "rows"}
    ignored: list[dict] = field(default_factory=list)  # {"path", "reason"}: in a day folder, not data
    ids: IdAudit = field(default_factory=lambda: IdAudit(checked=False))  # duplicates (pipelines.ids)
    # column -> (type, first file that had it): what a later inventory must match (inspect_logs' like=)
    types: dict = field(default_factory=dict)
    derive_row_ids: bool = False  # no id column in the logs: the reader derives ids (pipelines.row_ids)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]


def _expected_kind(spec: FeatureSpec) -> dict[str, str]:
    """Column -> type class the spec requires: int, int_list, number, label."""
    kinds = {spec.id_column: "int", spec.time_column: "int", spec.group_key: "key"}
    kinds.pop("", None)  # an optional row column the logs do not have (FeatureSpec)
    kinds |= {column: "number" for column in spec.numeric_columns()}  # dense and bucketized values
    # A column read as ids must hold integers, also where another feature reads it as a number.
    kinds |= {
        c: "int_list" if f.multi_hot else "int" for f in spec.sparse if not f.boundaries for c in f.columns
    }
    kinds |= {label: "label" for label in spec.labels}
    if spec.domain_column:  # multi-domain models index per-domain parameters with it
        kinds[spec.domain_column] = "int"
    return kinds


def _type_matches(kind: str, t: pa.DataType) -> bool:
    if kind == "int":
        return pa.types.is_integer(t)
    if kind == "key":
        return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
    if kind == "int_list":
        return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)
    if kind == "number":
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    if kind == "label":
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    return True


_KIND_TEXT = {
    "int": "an integer type",
    "key": "an integer or string type",
    "int_list": "list<integer>",
    "number": "an integer or floating type",
    "label": "an integer, floating or boolean type",
}


def is_data_file(path: Path) -> str | None:
    """None for a log file; otherwise why the file is not data. Hive/Spark convention: names starting
    with `_` or `.` are markers and temporary files (`_SUCCESS`, `_tmp-*`, `.part-*` of a writer that
    has not finished), never data."""
    if path.name.startswith((".", "_")):
        return "hidden or temporary file (name starts with '.' or '_', the Hive/Spark convention)"
    if path.is_dir():
        return "a folder: a day partition is read flat, its subfolders are not"
    if path.suffix != ".parquet":
        return "not a .parquet file"
    return None


def list_partitions(
    logs_dir: str | Path, dates: Sequence[dt.date], date_column: str = "dt", ignored: list | None = None
) -> list[LogFile]:
    """Every data file (`is_data_file`) in LOGS/<date_column>=YYYY-MM-DD for the dates; a missing day
    is an error. Everything else in a day folder is appended to `ignored` as {"path", "reason"}."""
    logs_dir = Path(logs_dir)
    files, missing = [], []
    for day in dates:
        part = logs_dir / f"{date_column}={day.isoformat()}"
        found = []
        for path in sorted(part.iterdir()) if part.is_dir() else []:
            reason = is_data_file(path)
            if reason is None:
                found.append(path)
            elif ignored is not None:
                ignored.append({"path": str(path), "reason": reason})
        if not found:
            missing.append(str(part))
        files += [LogFile(str(p), day, -1, ordinal) for ordinal, p in enumerate(found)]
    if missing:
        have = sorted(p.name for p in logs_dir.glob(f"{date_column}=*")) if logs_dir.is_dir() else []
        raise BadInputError(
            f"missing date partition{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
            f"(no .parquet data files there); "
            f"partitions present under {logs_dir}: {', '.join(have) or 'none'}"
        )
    return files


def _read_footer(path: str) -> tuple[pa.Schema | None, int, str | None]:
    """(schema, rows, problem) for one file without reading data pages."""
    try:
        size = Path(path).stat().st_size
        if size == 0:
            return None, 0, "empty file (0 bytes), not Parquet"
        meta = pq.read_metadata(path)
        return meta.schema.to_arrow_schema(), meta.num_rows, None
    except (pa.ArrowException, OSError) as e:
        return None, 0, f"unreadable Parquet file: {e}"


def inspect_logs(
    logs_dir: str | Path,
    dates: Sequence[dt.date],
    spec: FeatureSpec,
    on_bad_files: str = "error",
    on_bad_rows: str = "error",
    check_ids: bool = True,
    like: LogInventory | None = None,
    columns: Sequence[str] | None = None,
) -> LogInventory:
    """Check every file's footer against the spec and against each other (drift); see module doc.

    check_ids: audit the request ids (pipelines.ids): under on_bad_rows=error a duplicate stops the
    job here, naming the files; under quarantine the repeats are set aside when read.
    like: an inventory (the training days') whose column types these files must have too: a type
    that drifts between the days trained on and the days scored is a bad file like any other.
    columns: check and read only these (jobs.predict: the id and the model's inputs; logs to score
    need no labels); None: everything training reads."""
    ignored: list[dict] = []
    candidates = list_partitions(logs_dir, dates, spec.date_column, ignored)
    with ThreadPoolExecutor(max_workers=8) as pool:
        footers = list(pool.map(_read_footer, [f.path for f in candidates]))

    expected = _expected_kind(spec)
    if columns is not None:
        expected = {c: expected[c] for c in columns}
    files, skipped, problems = [], [], []
    reference: dict[str, tuple[pa.DataType, str]] = dict(like.types) if like else {}
    truth: list[str] | None = None
    for candidate, (schema, rows, problem) in zip(candidates, footers):
        if problem is None:
            problem = _schema_problem(schema, expected, reference, candidate.path)
        if problem is None and not spec.id_column:
            problem = row_id_problem(candidate, rows)
        if problem is None and columns is None:
            file_truth = sorted(n for n in schema.names if n.startswith(spec.truth_prefix))
            if truth is None:
                truth = file_truth
            elif file_truth != truth:
                problem = f"schema drift: _truth_ columns {file_truth} differ from {truth} in earlier files"
        if problem is not None:
            if on_bad_files == "error":
                problems.append(f"{candidate.path}: {problem}")
            else:
                # An unreadable footer has no row count: None says "unknown", not 0 rows.
                known = schema is not None or problem.startswith("empty file")
                skipped.append({"path": candidate.path, "reason": problem, "rows": rows if known else None})
            continue
        for column in expected:
            reference.setdefault(column, (schema.field(column).type, candidate.path))
        files.append(LogFile(candidate.path, candidate.date, rows, candidate.ordinal))

    if problems:
        raise BadInputError(
            f"{len(problems)} bad log file{'s' if len(problems) > 1 else ''} (policy on_bad_files=error):\n  "
            + "\n  ".join(problems)
        )
    if not files:
        raise BadInputError(
            f"no usable log files for {', '.join(d.isoformat() for d in dates)} under {logs_dir}"
        )
    truth = truth or []
    read = list(columns) if columns is not None else spec.input_columns() + truth
    if on_bad_files == "skip":
        files = _without_undecodable(files, read, skipped)
        if not files:
            raise BadInputError(
                f"no readable log files for {', '.join(d.isoformat() for d in dates)} under {logs_dir}"
            )
    # Without an id column the ids are derived from positions: unique by construction, nothing to audit.
    audit = audit_ids(files, spec.id_column) if check_ids and spec.id_column else IdAudit(checked=False)
    if audit.duplicate_rows and on_bad_rows == "error":
        raise duplicates_error(audit, spec.id_column)
    return LogInventory(files, read, truth, skipped, ignored, audit, reference, not spec.id_column)


def _without_undecodable(files: list[LogFile], columns: list[str], skipped: list[dict]) -> list[LogFile]:
    """The files whose every page of `columns` decodes; the others appended to `skipped`."""

    def problem(log_file: LogFile) -> str | None:
        try:
            for _ in readable_blocks(log_file.path, columns, 1 << 16):
                pass
        except BadInputError as e:
            return str(e).removeprefix(f"{log_file.path}: ")
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        problems = list(pool.map(problem, files))
    skipped += [{"path": f.path, "reason": p, "rows": f.rows} for f, p in zip(files, problems) if p]
    return [f for f, p in zip(files, problems) if p is None]


def _schema_problem(schema: pa.Schema, expected: dict[str, str], reference: dict, path: str) -> str | None:
    missing = [c for c in expected if c not in schema.names]
    if missing:
        return f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    for column, kind in expected.items():
        found = schema.field(column).type
        if not _type_matches(kind, found):
            return f"column {column} has type {found}, expected {_KIND_TEXT[kind]}"
        if column in reference and reference[column][0] != found:
            ref_type, ref_path = reference[column]
            return f"schema drift: column {column} is {found} here but {ref_type} in {ref_path}"
    return None


def read_file_blocks(path: str, columns: list[str], rows_per_block: int) -> Iterator[pa.Table]:
    """Stream one Parquet file as tables of at most rows_per_block rows (row group by row group)."""
    parquet = pq.ParquetFile(path)
    for record_batch in parquet.iter_batches(batch_size=rows_per_block, columns=columns, use_threads=False):
        yield pa.Table.from_batches([record_batch])


def readable_blocks(path: str, columns: list[str], rows_per_block: int) -> Iterator[pa.Table]:
    """read_file_blocks, where a data page that cannot be decoded behind an intact footer (a torn
    copy, a flipped bit under compression) is a BadInputError naming the file and how far it got,
    instead of a bare "OSError: ZSTD decompression failed" from inside a Ray task."""
    blocks, rows = read_file_blocks(path, columns, rows_per_block), 0
    while True:
        try:
            table = next(blocks)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise BadInputError(
                f"{path}: unreadable Parquet data after its first {rows:,} rows "
                f"(the footer was intact, a data page is not): {e}"
            ) from e
        rows += table.num_rows
        yield table


def _read_and_prepare(
    files: dict,
    columns,
    rows_per_block,
    prepare,
    prepare_kwargs,
    position_file=None,
    all_paths=(),
    split=None,
    duplicates=None,
    derive_row_ids=False,
) -> Iterator[pa.Table]:
    """One file's blocks, each with its rows' positions (mtl_rec.data_position) in POSITION_COLUMN,
    minus the rows a saved data position says were already trained on, then `prepare`d.
    duplicates: [m, 2] position intervals of rows repeating an earlier id (pipelines.ids): marked in
    DUPLICATE_COLUMN, which validation turns into a bad row. derive_row_ids: the logs have no id
    column; each row gets its derived id (pipelines.row_ids) in ROW_ID_COLUMN, before the split hashes it."""
    saved = DataPosition.load(position_file) if position_file else None
    if saved is not None:
        saved.check_files(list(all_paths), position_file)
    days = files.get("day", files["index"])
    # derived ids need each file's ordinal in its folder: no default there (ids would collide)
    ordinals = files["ordinal"] if derive_row_ids else files.get("ordinal", np.zeros_like(files["index"]))
    for path, file_index, day, ordinal in zip(files["path"], files["index"], days, ordinals):
        offset = 0
        for table in readable_blocks(str(path), columns, rows_per_block):
            positions = encode_positions(int(file_index), np.arange(offset, offset + table.num_rows))  # [n]
            offset += table.num_rows
            table = table.append_column(POSITION_COLUMN, pa.array(positions, pa.int64()))
            if derive_row_ids:
                ids = block_row_ids(int(day), int(ordinal), offset - table.num_rows, table.num_rows)  # [n]
                table = table.append_column(ROW_ID_COLUMN, pa.array(ids))
            if "day" in files:  # the partition's date, for the timestamp check (pipelines.validate)
                table = table.append_column(PARTITION_DAY_COLUMN, pa.array(np.full(table.num_rows, day)))
            if duplicates is not None and duplicates.shape[0]:
                table = table.append_column(DUPLICATE_COLUMN, pa.array(contains(duplicates, positions)))
            keep = np.ones(table.num_rows, dtype=bool)  # [n]
            if saved is not None and saved.consumed.shape[0]:
                keep &= ~contains(saved.consumed, positions)  # already trained on
            if split is not None:
                keep &= split.keep(table)  # this side of the hold-out split (pipelines.split)
            if not keep.all():
                table = table.filter(pa.array(keep))
                if table.num_rows == 0:
                    continue
            yield prepare(table, source=str(path), **prepare_kwargs)


def read_items(inventory: LogInventory) -> list[dict]:
    """One item per file for the read tasks (_read_and_prepare): its path, its index in the inventory
    (data positions), its partition's date as days since 1970 (the timestamp check, derived row ids)
    and its ordinal in its date folder (derived row ids)."""
    return [
        {"path": f.path, "index": i, "day": days_since_1970(f.date), "ordinal": f.ordinal}
        for i, f in enumerate(inventory.files)
    ]


def read_logs(
    inventory: LogInventory,
    prepare: Callable[..., pa.Table],
    rows_per_block: int = 65536,
    position_file: str | None = None,
    split=None,
    max_tasks: int | None = None,
    file_order_seed: int | None = None,
    **kwargs,
):
    """A lazy ray.data.Dataset: one task per file, streaming `prepare(table, source=path, **kwargs)` blocks.

    We read files ourselves rather than with ray.data.read_parquet: Ray 2.60 packs a small day into a
    single read task and block, which leaves one of two cores idle and lets one training worker take
    every block. A task per file, yielding row-group-sized blocks, keeps both busy and streams.
    max_tasks caps the read tasks running at once (None: as many as the free logical CPUs allow).
    file_order_seed: read the files in a seeded random order, so that days and files interleave in
    training (with a capped number of read tasks they are otherwise read one after the other); each
    keeps its inventory index, which its rows' data positions name.
    """
    import ray.data

    files = read_items(inventory)
    if file_order_seed is not None:
        order = np.random.default_rng(file_order_seed).permutation(len(files))
        files = [files[i] for i in order]
    return ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
        _read_and_prepare,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={
            "columns": inventory.columns,
            "rows_per_block": rows_per_block,
            "prepare": prepare,
            "prepare_kwargs": kwargs,
            "position_file": position_file,
            "all_paths": inventory.paths if position_file else (),
            "split": split,
            "duplicates": inventory.ids.duplicates,
            "derive_row_ids": inventory.derive_row_ids,
        },
        compute=ray.data.TaskPoolStrategy(size=max_tasks),
    )
