"""The request-id audit: every row of the logs is one impression, so a request id seen twice is a
duplicate (a file copied within a day, a writer that retried a batch, a day copied under another
date), and an evaluation day that shares ids with the training days leaks them into the score.

The audit reads the id column of every file (that column only, a thread per file) on the driver
before any Ray task, so the job knows its duplicates, with counts by file, before it trains:

- the first occurrence in inventory order (date, then file name, then row) is the row; every later
  one is a bad row "duplicate id" under `on_bad_rows` (error: the job stops before training, naming
  each file, the file the id was first seen in, and the count; quarantine: the repeats are set aside
  by position in the read task, like any other bad row, so rows in files = valid + quarantined);
- `shared_ids` between the training and the evaluation inventories is an error (leakage).

Memory on the driver: 16 bytes per row (ids and positions), e.g. 1.6 GB for 100M rows; with
`data.check_duplicate_ids: false` the audit is skipped and the report says so.

Null ids are not audited: they are bad rows of their own ("null"), each counted once.

Example::

    >>> audit = audit_ids(inventory.files, "request_id")
    >>> audit.duplicate_rows, audit.by_file[0]["rows"], audit.by_file[0]["first_seen_in"]
    (100, 100, '.../dt=2026-11-18/part-00000.parquet')
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtl_rec.data_position import FILE_SHIFT, encode_positions, to_intervals
from pipelines.errors import BadInputError

DUPLICATE_COLUMN = "_duplicate_id"  # [n] bool, set by the reader on rows whose id an earlier row has
PARTITION_DAY_COLUMN = "_partition_day"  # [n] int64 days since 1970 of the row's dt= folder (reader)


@dataclass
class IdAudit:
    """ids: [U] sorted distinct non-null ids (int64; a uint64 id is viewed as int64, one value per id);
    id_files: [U] inventory index of the file each id was first seen in;
    duplicates: [m, 2] merged position intervals (mtl_rec.data_position) of the repeated rows;
    by_file: [{"path", "first_seen_in", "rows"}], one entry per (file, file of first occurrence)."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    id_files: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    duplicates: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    by_file: list[dict] = field(default_factory=list)
    checked: bool = True

    @property
    def duplicate_rows(self) -> int:
        return int((self.duplicates[:, 1] - self.duplicates[:, 0]).sum())


def _read_ids(path: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """([n] int64 ids of one file, [n] bool null); a null's id is a placeholder the caller drops."""
    ids = pq.read_table(path, columns=[column])[column].combine_chunks()
    nulls = pc.is_null(ids).to_numpy(zero_copy_only=False)  # [n] bool
    values = pc.fill_null(ids, 0).to_numpy(zero_copy_only=False).astype(np.uint64).view(np.int64)  # [n]
    return np.where(nulls, np.int64(-1), values), nulls


def audit_ids(files: Sequence, column: str) -> IdAudit:
    """The audit of `files` (LogFile-like: .path, in inventory order); see the module doc."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        try:
            read = list(pool.map(lambda f: _read_ids(f.path, column), files))
        except (pa.ArrowException, OSError) as e:
            raise BadInputError(f"{column}: cannot read the id column for the duplicate audit: {e}") from e
    if not read:
        return IdAudit()
    ids = np.concatenate([r[0] for r in read])  # [N]
    valid = ~np.concatenate([r[1] for r in read])  # [N] bool
    positions = np.concatenate([encode_positions(i, np.arange(len(r[0]))) for i, r in enumerate(read)])  # [N]
    ids, positions = ids[valid], positions[valid]  # [N'] non-null rows, in inventory order
    if ids.size == 0:
        return IdAudit()

    order = np.argsort(ids, kind="stable")  # [N']; stable: equal ids keep inventory order
    sorted_ids = ids[order]  # [N']
    first_of_run = np.r_[True, sorted_ids[1:] != sorted_ids[:-1]]  # [N'] bool: an id's first row
    run_start = np.maximum.accumulate(np.where(first_of_run, np.arange(len(order)), 0))  # [N']
    first_position = positions[order[run_start]]  # [N'] position of each row's first occurrence
    repeat = ~first_of_run  # [N'] bool
    distinct = sorted_ids[first_of_run]  # [U]
    id_files = first_position[first_of_run] >> np.int64(FILE_SHIFT)  # [U]

    by_file = []
    if repeat.any():
        pairs = np.stack([positions[order][repeat], first_position[repeat]], axis=1) >> np.int64(FILE_SHIFT)
        found, counts = np.unique(pairs, axis=0, return_counts=True)  # [P, 2], [P]
        by_file = [
            {"path": files[a].path, "first_seen_in": files[b].path, "rows": int(k)}
            for (a, b), k in zip(found.tolist(), counts.tolist())
        ]
    return IdAudit(distinct, id_files, to_intervals(positions[order][repeat]), by_file)


def duplicates_error(audit: IdAudit, column: str) -> BadInputError:
    """The on_bad_rows=error stop: one line per file, each naming the file, column, reason and count."""
    lines = [
        f"{d['path']}: {column}: duplicate id: {d['rows']:,} rows repeat ids first seen in "
        + ("the same file" if d["first_seen_in"] == d["path"] else d["first_seen_in"])
        for d in audit.by_file
    ]
    return BadInputError(
        f"{column}: {audit.duplicate_rows:,} rows repeat an earlier row's id, in {len(lines)} "
        "file(s) (policy on_bad_rows=error; data.on_bad_rows=quarantine sets the repeats aside "
        "and trains on the first occurrence):\n  " + "\n  ".join(lines)
    )


def shared_ids(train_inventory, eval_inventory, column: str) -> None:
    """Raise BadInputError when the evaluation inventory (a LogInventory) shares ids with the training
    inventory (leakage: a day copied under another date, overlapping exports); a line per file pair."""
    train, train_files = train_inventory.ids, train_inventory.files
    held, held_files = eval_inventory.ids, eval_inventory.files
    if not (train.checked and held.checked) or not len(held.ids) or not len(train.ids):
        return
    in_train = np.isin(held.ids, train.ids, assume_unique=True)  # [U_eval] bool
    if not in_train.any():
        return
    where = np.searchsorted(train.ids, held.ids[in_train])  # [S] index into train.ids
    pairs = np.stack([held.id_files[in_train], train.id_files[where]], axis=1)  # [S, 2]
    found, counts = np.unique(pairs, axis=0, return_counts=True)
    lines = [
        f"{held_files[a].path}: {column}: {k:,} ids also in the training file {train_files[b].path}"
        for (a, b), k in zip(found.tolist(), counts.tolist())
    ]
    raise BadInputError(
        f"{column}: the evaluation dates share {int(in_train.sum()):,} ids with the training dates "
        "(leakage: the same impressions would be trained on and scored):\n  " + "\n  ".join(lines)
    )
