"""Row ids for logs without an id column (FeatureSpec id_column: ""): a row's id is where it sits.

    id = days since 1970 << 42 | ordinal of its file in its dt= folder << 30 | row in the file

The same in every inventory that reads the file (training, evaluation, prediction: an evaluation
day alone splits its hold-out as it does among the training days), and unique by construction, so
there is nothing to audit. A file's ordinal is its place among the folder's data files in name
order (pipelines.read.list_partitions): a file added, removed or renamed before others shifts theirs.

Example::

    >>> block_row_ids(20_000, 1, 0, 3) == (20_000 << 42 | 1 << 30) + np.arange(3)
    array([ True,  True,  True])
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtl_rec.config.features import ROW_ID_COLUMN, FeatureSpec

if TYPE_CHECKING:
    from pipelines.read import LogFile

DAY_SHIFT, FILE_SHIFT = 42, 30
MAX_DAYS, MAX_FILES, MAX_ROWS = 1 << (63 - DAY_SHIFT), 1 << (DAY_SHIFT - FILE_SHIFT), 1 << FILE_SHIFT


def days_since_1970(date: dt.date) -> int:
    return (date - dt.date(1970, 1, 1)).days


def block_row_ids(day: int, ordinal: int, first_row: int, rows: int) -> np.ndarray:
    """The ids of rows [first_row, first_row + rows) of the file `ordinal` of day `day`: [rows] int64."""
    last = first_row + rows  # exclusive
    if not (0 <= day < MAX_DAYS and 0 <= ordinal < MAX_FILES and 0 <= first_row <= last <= MAX_ROWS):
        raise ValueError(f"no derived row id for day {day}, file {ordinal}, rows {first_row}+{rows}")
    base = np.int64(day) << np.int64(DAY_SHIFT) | np.int64(ordinal) << np.int64(FILE_SHIFT)
    return base | np.arange(first_row, first_row + rows, dtype=np.int64)  # [rows]


def file_row_ids(log_file: LogFile, spec: FeatureSpec) -> pa.Table:
    """One file's row ids, as a table of the one column spec.row_id_column: read, or derived."""
    if spec.id_column:
        return pq.read_table(log_file.path, columns=[spec.id_column])
    ids = block_row_ids(days_since_1970(log_file.date), log_file.ordinal, 0, log_file.rows)  # [rows]
    return pa.table({ROW_ID_COLUMN: ids})


def row_id_problem(log_file: LogFile, rows: int) -> str | None:
    """Why the rows of a file of logs without an id column cannot get derived ids, or None."""
    why = "the logs have no id column, and a derived row id"
    if not 0 <= days_since_1970(log_file.date) < MAX_DAYS:
        return f"{why} needs a partition date from 1970 on"
    if log_file.ordinal >= MAX_FILES:
        return f"{why} allows at most {MAX_FILES:,} files per date folder (this is a later one)"
    if rows >= MAX_ROWS:
        return f"{why} allows at most {MAX_ROWS:,} rows a file"
    return None
