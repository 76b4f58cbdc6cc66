"""Logs without a row id, a time or a group column (a public tabular set): nothing is invented in the
files; each row gets an id derived from its file and row, the same wherever the file is read."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl_rec.config import DenseStats, FeatureStats, SampleSpace
from mtl_rec.config.features import ROW_ID_COLUMN
from pipelines.errors import BadInputError, BadRowsError
from pipelines.prepare import prepare_block
from pipelines.read import _read_and_prepare, inspect_logs, read_items
from pipelines.row_ids import FILE_SHIFT, block_row_ids, days_since_1970, file_row_ids
from pipelines.split import HoldoutSplit
from tests.pipelines.tables import tiny_spec, tiny_table

DAYS = (dt.date(2026, 11, 18), dt.date(2026, 11, 19))
ROWS = {0: 700, 1: 300}  # rows per file ordinal within a day


def _no_row_columns_spec():
    return dataclasses.replace(tiny_spec(), id_column="", time_column="", group_key="")


@pytest.fixture
def logs(tmp_path):
    """Two days of two files each, without request_id and ts (user_id stays: it is a feature)."""
    for day_index, day in enumerate(DAYS):
        for ordinal, rows in ROWS.items():
            table = tiny_table(rows, seed=10 * day_index + ordinal).drop_columns(["request_id", "ts"])
            path = tmp_path / f"dt={day.isoformat()}" / f"part-{ordinal}.parquet"
            path.parent.mkdir(exist_ok=True)
            pq.write_table(table, path, row_group_size=128)
    return tmp_path


def _prepared(inventory, spec):
    """Every row the read tasks deliver, validated and transformed, in file order."""
    items = read_items(inventory)
    files = {key: np.array([item[key] for item in items]) for key in items[0]}
    stats = FeatureStats({f.name: DenseStats(1, 0.0, 1.0, 0.0, 1.0) for f in spec.dense})  # scale nothing
    kwargs = {"spec": spec, "stats": stats, "spaces": {"all": SampleSpace()}, "policy": "error"}
    kwargs["quarantine_dir"] = None
    blocks = _read_and_prepare(files, inventory.columns, 100, prepare_block, kwargs, derive_row_ids=True)
    return pa.concat_tables(list(blocks))


def test_rows_get_ids_from_their_file_and_row_and_no_row_column_is_read_or_checked(logs):
    spec = _no_row_columns_spec()
    inventory = inspect_logs(logs, DAYS, spec)  # the footers lack request_id, ts: no missing column
    assert inventory.derive_row_ids and not inventory.ids.checked  # no ids to audit
    assert [f.ordinal for f in inventory.files] == [0, 1, 0, 1]
    assert not {"request_id", "ts", ""} & set(inventory.columns)

    read = _prepared(inventory, spec)
    expected = np.concatenate(
        [block_row_ids(days_since_1970(f.date), f.ordinal, 0, f.rows) for f in inventory.files]
    )
    np.testing.assert_array_equal(read["id"].to_numpy(), expected)  # in file order, every row once
    assert np.unique(expected).size == inventory.rows == 2000
    assert expected[700] == days_since_1970(DAYS[0]) << 42 | 1 << FILE_SHIFT  # file 1, row 0
    assert not {"meta.ts", "meta.user_id", "meta.", "meta.request_id"} & set(
        read.column_names
    )  # none invented
    for log_file in inventory.files:  # jobs.evaluate's accounting reads the same ids without Ray
        ids = file_row_ids(log_file, spec)[ROW_ID_COLUMN].to_numpy()
        assert np.isin(ids, expected).all() and ids.size == log_file.rows


def test_the_holdout_split_of_derived_ids_is_the_same_in_every_inventory(logs):
    """The daily hold-out hashes the row id: the evaluation day alone must split as it did among
    the training days (the id does not depend on which other files an inventory holds)."""
    spec = _no_row_columns_spec()
    both, last = inspect_logs(logs, DAYS, spec), inspect_logs(logs, DAYS[1:], spec)
    split = HoldoutSplit(0.3, "holdout", spec.row_id_column)
    kept_in_both = [split.keep(file_row_ids(f, spec)) for f in both.files[2:]]
    kept_alone = [split.keep(file_row_ids(f, spec)) for f in last.files]
    for a, b in zip(kept_in_both, kept_alone):
        np.testing.assert_array_equal(a, b)
    assert 0.25 < np.concatenate(kept_alone).mean() < 0.35


def test_bad_rows_still_name_the_file_and_a_present_id_column_is_still_checked(logs):
    spec = _no_row_columns_spec()
    bad = tiny_table(5).drop_columns(["request_id", "ts"])
    bad = bad.set_column(bad.column_names.index("click"), "click", pa.array([1, 0, 2, 1, 0], pa.int8()))
    with pytest.raises(BadRowsError, match=r"part-9.parquet.*click: label not in \{0, 1\}.*1 row"):
        prepare_block(bad.append_column(ROW_ID_COLUMN, pa.array(np.arange(5))), "part-9.parquet",
                      spec, None, {"all": SampleSpace()}, "error", None)  # fmt: skip
    with_ids = tiny_spec()  # the default spec: request_id is required, and checked per row
    nulls = tiny_table(4).set_column(0, "request_id", pa.array([1, None, 3, 4], pa.int64()))
    with pytest.raises(BadRowsError, match="request_id: null"):
        prepare_block(nulls, "part-0.parquet", with_ids, None, {"all": SampleSpace()}, "error", None)


def test_a_partition_before_1970_has_no_derived_ids_and_is_a_bad_file(tmp_path):
    spec = _no_row_columns_spec()
    old = tmp_path / "dt=1969-12-31" / "part-0.parquet"
    old.parent.mkdir()
    pq.write_table(tiny_table(5).drop_columns(["request_id", "ts"]), old)
    with pytest.raises(
        BadInputError, match="dt=1969-12-31/part-0.parquet: .*needs a partition date from 1970"
    ):
        inspect_logs(tmp_path, [dt.date(1969, 12, 31)], spec)
