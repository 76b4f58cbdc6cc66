"""Data positions (what a resumed run skips) and the hold-out split, on real Parquet files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl_rec.data_position import (
    FILE_SHIFT,
    POSITION_COLUMN,
    DataPosition,
    contains,
    encode_positions,
    merge_intervals,
    overlap_rows,
    to_intervals,
)
from pipelines.read import _read_and_prepare
from pipelines.split import VALIDATION_SALT, HoldoutSplit, combine
from tests.pipelines.tables import tiny_table


def test_intervals_round_trip_and_membership():
    rng = np.random.default_rng(0)
    rows = rng.choice(5000, size=1200, replace=False)
    positions = np.concatenate([encode_positions(0, rows), encode_positions(3, rows[:100])])
    intervals = to_intervals(positions)
    assert (np.diff(intervals[:, 0]) > 0).all() and (intervals[1:, 0] > intervals[:-1, 1]).all()  # merged
    assert int((intervals[:, 1] - intervals[:, 0]).sum()) == positions.size
    probe = np.arange(0, 5000, dtype=np.int64)
    expected = np.isin(probe, rows)
    assert np.array_equal(contains(intervals, encode_positions(0, probe)), expected)
    assert np.array_equal(contains(intervals, encode_positions(3, probe)), np.isin(probe, rows[:100]))
    assert not contains(intervals, encode_positions(1, probe)).any()
    assert encode_positions(2, np.array([5]))[0] == (2 << FILE_SHIFT) + 5


def test_merge_and_overlap_count_double_counted_rows():
    a = to_intervals(np.arange(0, 100))
    b = to_intervals(np.arange(100, 150))
    assert merge_intervals(a, b).tolist() == [[0, 150]]
    assert overlap_rows(a, b) == 0
    assert overlap_rows(a, to_intervals(np.arange(90, 120))) == 10


def test_position_json_round_trip_and_file_check(tmp_path):
    position = DataPosition(["/x/dt=2026-11-18/part-0.parquet"], 1, to_intervals(np.arange(7)), 3, 7)
    loaded = DataPosition.from_json(position.to_json())
    assert loaded.consumed.tolist() == [[0, 7]] and (loaded.epoch, loaded.step, loaded.rows) == (1, 3, 7)
    loaded.check_files(["/mnt/other/dt=2026-11-18/part-0.parquet"], "here")  # same day and file: fine
    with pytest.raises(ValueError, match="same dates and files"):
        loaded.check_files(["/x/dt=2026-11-19/part-0.parquet"], "here")


def _identity(table, source):
    return table


def test_read_task_skips_exactly_the_saved_position(tmp_path):
    paths = []
    for index in range(2):
        path = tmp_path / f"dt=2026-11-18/part-{index}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(tiny_table(1000, seed=index, start_id=index * 1000), path, row_group_size=256)
        paths.append(str(path))
    columns = ["request_id"]
    consumed = np.concatenate(
        [encode_positions(0, np.arange(0, 300)), encode_positions(1, np.arange(500, 520))]
    )
    position_file = tmp_path / "data_position.json"
    position_file.write_text(DataPosition(paths, 0, to_intervals(consumed)).to_json())

    files = {"path": np.array(paths), "index": np.array([0, 1])}
    blocks = list(_read_and_prepare(files, columns, 128, _identity, {}, str(position_file), paths))
    read = pa.concat_tables(blocks)
    ids = np.sort(read["request_id"].to_numpy())
    expected = np.setdiff1d(np.arange(2000), np.r_[np.arange(0, 300), np.arange(1500, 1520)])
    assert np.array_equal(ids, expected)
    left = np.r_[encode_positions(0, np.arange(300, 1000)), encode_positions(1, np.arange(0, 500))]
    left = np.r_[left, encode_positions(1, np.arange(520, 1000))]
    assert np.array_equal(np.sort(read[POSITION_COLUMN].to_numpy()), np.sort(left))

    held = list(
        _read_and_prepare(files, columns, 128, _identity, {}, None, (), HoldoutSplit(0.25, "holdout"))
    )
    kept = list(_read_and_prepare(files, columns, 128, _identity, {}, None, (), HoldoutSplit(0.25, "train")))
    held_ids = pa.concat_tables(held)["request_id"].to_numpy()
    kept_ids = pa.concat_tables(kept)["request_id"].to_numpy()
    assert np.intersect1d(held_ids, kept_ids).size == 0
    assert np.array_equal(np.sort(np.r_[held_ids, kept_ids]), np.arange(2000))
    assert abs(held_ids.size / 2000 - 0.25) < 0.04  # binomial sd ~0.01


def test_holdout_split_is_deterministic_and_checks_its_fraction():
    table = pa.table({"request_id": np.arange(200_000, dtype=np.int64)})
    split = HoldoutSplit(0.1, "holdout")
    first, second = split.keep(table), HoldoutSplit(0.1, "holdout").keep(table)
    assert np.array_equal(first, second)
    assert abs(first.mean() - 0.1) < 0.003
    with pytest.raises(ValueError, match="fraction"):
        HoldoutSplit(1.5, "train")


def test_validation_holdout_is_independent_of_the_daily_one_and_the_three_parts_cover_every_row():
    table = pa.table({"request_id": np.arange(200_000, dtype=np.int64)})
    daily_train, daily_holdout = HoldoutSplit(0.1, "train"), HoldoutSplit(0.1, "holdout")
    valid = HoldoutSplit(0.2, "holdout", salt=VALIDATION_SALT)
    train = combine(daily_train, HoldoutSplit(0.2, "train", salt=VALIDATION_SALT))
    validation = combine(daily_train, valid)
    assert combine(None, daily_train) is daily_train and combine(None) is None
    parts = [train.keep(table), validation.keep(table), daily_holdout.keep(table)]
    # every row in exactly one of: trained, validated, the daily hold-out (rows = sum of the parts)
    assert np.array_equal(np.sum(parts, axis=0), np.ones(200_000))
    # another salt: the validation rows are a fifth of the daily-train rows, not a slice of the hash
    assert abs(parts[1].sum() / daily_train.keep(table).sum() - 0.2) < 0.005
    assert abs(valid.keep(table)[daily_holdout.keep(table)].mean() - 0.2) < 0.01


def test_a_null_key_lands_on_the_train_side_once_and_the_rest_split_as_without_it():
    ids = pa.array([5, None, 17, None, 99_000_123, 42], pa.int64())
    table = pa.table({"request_id": ids})
    train, holdout = HoldoutSplit(0.5, "train").keep(table), HoldoutSplit(0.5, "holdout").keep(table)
    assert (train ^ holdout).all()  # every row on exactly one side
    assert (
        train[[1, 3]].all() and not holdout[[1, 3]].any()
    )  # nulls: the train side, where validation counts them
    valid = pa.table({"request_id": ids.filter(ids.is_valid())})
    np.testing.assert_array_equal(holdout[[0, 2, 4, 5]], HoldoutSplit(0.5, "holdout").keep(valid))
    chunked = pa.table({"request_id": pa.chunked_array([ids.slice(0, 3), ids.slice(3)])})
    np.testing.assert_array_equal(HoldoutSplit(0.5, "train").keep(chunked), train)
