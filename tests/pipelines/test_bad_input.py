"""Every bad-input case: a clear error naming file, column and counts, or quarantine with counts."""

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl_rec.config import SampleSpace
from mtl_rec.config.data import DataConfig
from pipelines.dataset import build_dataset, compute_stats
from pipelines.errors import BadInputError, BadRowsError
from pipelines.read import inspect_logs, parse_dates, readable_blocks
from pipelines.validate import REASON_COLUMN, find_bad_rows, quarantine_summary, validate_block
from tests.pipelines.tables import tiny_spec, tiny_table

DAY1, DAY2 = dt.date(2026, 11, 18), dt.date(2026, 11, 19)


def _write(root, day, table, name="part-00000.parquet"):
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return folder / name


def _with(table, column, values, type_=None):
    index = table.schema.get_field_index(column)
    return table.set_column(index, column, pa.array(values, type_ or table.schema.field(column).type))


SOURCE = "dt=2026-11-18/part-00007.parquet"


def test_parse_dates():
    assert parse_dates("2026-11-18..2026-11-20") == [DAY1, DAY2, dt.date(2026, 11, 20)]
    assert parse_dates("2026-11-20,2026-11-18") == [DAY1, dt.date(2026, 11, 20)]
    with pytest.raises(BadInputError, match="cannot parse date '2026-13-01'"):
        parse_dates("2026-13-01")


def test_missing_date_partition(tmp_path):
    _write(tmp_path, DAY1, tiny_table())
    with pytest.raises(
        BadInputError, match=r"missing date partition: .*dt=2026-11-19.*present .*dt=2026-11-18"
    ):
        inspect_logs(tmp_path, [DAY1, DAY2], tiny_spec())


def test_missing_column(tmp_path):
    path = _write(tmp_path, DAY1, tiny_table().drop_columns(["price"]))
    with pytest.raises(BadInputError, match=rf"{path}: missing column price"):
        inspect_logs(tmp_path, [DAY1], tiny_spec())


def test_wrong_column_type(tmp_path):
    table = tiny_table()
    path = _write(
        tmp_path, DAY1, _with(table, "price", [str(v) for v in table["price"].to_pylist()], pa.string())
    )
    with pytest.raises(
        BadInputError, match=rf"{path}: column price has type string, expected an integer or floating"
    ):
        inspect_logs(tmp_path, [DAY1], tiny_spec())


def test_schema_drift_between_days(tmp_path):
    first = _write(tmp_path, DAY1, tiny_table())
    table = tiny_table(seed=1)
    second = _write(
        tmp_path, DAY2, _with(table, "device", table["device"].to_numpy().astype(np.int32), pa.int32())
    )
    with pytest.raises(
        BadInputError, match=rf"{second}: schema drift: column device is int32 here but int64 in {first}"
    ):
        inspect_logs(tmp_path, [DAY1, DAY2], tiny_spec())


def test_empty_and_corrupt_files_error_or_skip(tmp_path):
    good = _write(tmp_path, DAY1, tiny_table(12))
    empty = good.parent / "part-00001.parquet"
    empty.write_bytes(b"")
    corrupt = good.parent / "part-00002.parquet"
    corrupt.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(BadInputError) as info:
        inspect_logs(tmp_path, [DAY1], tiny_spec())
    assert f"{empty}: empty file (0 bytes)" in str(info.value)
    assert f"{corrupt}: unreadable Parquet file" in str(info.value)
    assert "2 bad log files" in str(info.value)

    inventory = inspect_logs(tmp_path, [DAY1], tiny_spec(), on_bad_files="skip")
    assert inventory.paths == [str(good)] and inventory.rows == 12
    # The empty file has 0 rows; the truncated one's count is unknown (its footer is gone), not 0.
    assert {s["path"]: s["rows"] for s in inventory.skipped} == {str(empty): 0, str(corrupt): None}


def _tear_a_page(path, column: str) -> None:
    """Zero 64 bytes inside one data page of `column` (row group 1): the footer stays intact."""
    meta = pq.read_metadata(path)
    page = meta.row_group(1).column(meta.schema.names.index(column))
    raw = bytearray(path.read_bytes())
    raw[page.data_page_offset + 16 : page.data_page_offset + 80] = bytes(64)
    path.write_bytes(bytes(raw))


def test_a_torn_page_behind_an_intact_footer_is_named_or_skipped_before_any_row_is_read(tmp_path):
    good = _write(tmp_path, DAY1, tiny_table(300))
    torn = good.parent / "part-00001.parquet"
    pq.write_table(tiny_table(3000, seed=1, start_id=1000), torn, compression="zstd", row_group_size=1000)
    _tear_a_page(torn, "price")
    inventory = inspect_logs(tmp_path, [DAY1], tiny_spec())  # on_bad_files=error: footers only
    assert inventory.rows == 3300
    with pytest.raises(BadInputError, match=f"{torn}: unreadable Parquet data after its first 1,000 rows"):
        list(readable_blocks(str(torn), inventory.columns, 1000))

    skipping = inspect_logs(tmp_path, [DAY1], tiny_spec(), on_bad_files="skip")
    assert skipping.paths == [str(good)] and skipping.rows == 300  # what training reads: every row once
    (entry,) = skipping.skipped
    assert entry["path"] == str(torn) and entry["rows"] == 3000  # rows in files = read + skipped rows
    assert entry["reason"].startswith("unreadable Parquet data after its first")  # rows: whole 64k blocks
    other_column = inspect_logs(tmp_path, [DAY1], tiny_spec(), on_bad_files="skip", columns=["request_id"])
    assert other_column.rows == 3300  # a page of a column not read sets nothing aside


def test_hidden_temporary_and_other_files_are_not_data_and_are_listed(tmp_path):
    good = _write(tmp_path, DAY1, tiny_table(20))
    hidden = _write(tmp_path, DAY1, tiny_table(20, start_id=100), name=".part-00000.parquet")
    temporary = _write(tmp_path, DAY1, tiny_table(20, start_id=200), name="_tmp-part-00001.parquet")
    (good.parent / "_SUCCESS").write_bytes(b"")
    (good.parent / "notes.csv").write_text("a,b\n")
    _write(good.parent, DAY1, tiny_table(5, start_id=300))  # a subfolder dt=.../dt=...
    inventory = inspect_logs(tmp_path, [DAY1], tiny_spec())
    assert inventory.paths == [str(good)] and inventory.rows == 20
    reasons = {Path(i["path"]).name: i["reason"] for i in inventory.ignored}
    assert set(reasons) == {hidden.name, temporary.name, "_SUCCESS", "notes.csv", f"dt={DAY1}"}
    assert reasons[hidden.name].startswith("hidden or temporary file")
    assert reasons["notes.csv"] == "not a .parquet file" and reasons[f"dt={DAY1}"].startswith("a folder")

    only_hidden = tmp_path / "other"
    _write(only_hidden, DAY1, tiny_table(4), name=".part-00000.parquet")
    with pytest.raises(BadInputError, match="missing date partition.*no .parquet data files"):
        inspect_logs(only_hidden, [DAY1], tiny_spec())


def test_a_finite_float64_beyond_float32_is_a_bad_row():
    t = tiny_table(6)
    price = pa.array([1.0, 1e39, 3.0, -1e39, 5.0, 1e30], pa.float64())  # 1e30 fits float32
    first, reasons = find_bad_rows(_with(t, "price", price, pa.float64()), tiny_spec())
    assert reasons[first[1]] == "price: |value| beyond float32 range (3.4e38)"
    assert (first >= 0).sum() == 2  # row 3 fails the float32 check first, before log1p's sign check
    assert reasons[first[3]] == "price: |value| beyond float32 range (3.4e38)"


def test_zero_row_file_is_valid_and_counts_zero(tmp_path):
    _write(tmp_path, DAY1, tiny_table(6))
    _write(tmp_path, DAY1, tiny_table(6).slice(0, 0), name="part-00001.parquet")
    inventory = inspect_logs(tmp_path, [DAY1], tiny_spec())
    assert [f.rows for f in inventory.files] == [6, 0] and inventory.truth_columns == ["_truth_p_click"]


def _bad_cases():
    t = tiny_table(6)
    nan_price = t["price"].to_numpy().copy()
    nan_price[[1, 4]] = [np.nan, np.inf]
    list_with_negative = t["recent_categories"].to_pylist()
    list_with_negative[0] = [3, -1]
    return [
        ("nan/inf dense", _with(t, "price", nan_price), "price: null, NaN or inf", 2),
        (
            "nan label",
            _with(t, "click", [1.0, np.nan, 1.0, 1.0, 0.0, 1.0], pa.float32()),
            "click: null or NaN label",
            1,
        ),
        ("uint8 label with nulls", _with(t, "click", [1, None, 1, 1, 0, 1], pa.uint8()), "click: null", 1),
        (
            "bool label with nulls",
            _with(t, "click", [True, None, True, True, False, True], pa.bool_()),
            "click: null",
            1,
        ),
        (
            "uint64 request id >= 2**63",
            _with(t, "request_id", [0, 1, 2**63, 3, 2**64 - 1, 5], pa.uint64()),
            "request_id: id >= 2**63",
            2,
        ),
        ("label 2", _with(t, "click", [1, 0, 2, 1, 0, 1]), "click: label not in {0, 1}", 1),
        (
            "conversion w/o cart",
            _with(t, "conversion", [1, 1, 0, 1, 0, 0]),
            "conversion: conversion=1 without cart=1",
            1,
        ),
        ("cart w/o click", _with(t, "cart", [1, 1, 0, 1, 0, 0]), "cart: cart=1 without click=1", 1),
        ("negative id", _with(t, "category", [5, -3, 7, 8, 9, 1]), "category: negative id", 1),
        ("null id", _with(t, "category", [5, None, 7, None, 9, 1]), "category: null id", 2),
        (
            "negative in list",
            _with(t, "recent_categories", list_with_negative),
            "recent_categories: negative id in list",
            1,
        ),
        (
            "identity out of range",
            _with(t, "device", [0, 1, 2, 3, 0, 1]),
            "device: id >= num_embeddings (3)",
            1,
        ),
        (
            "nan truth",  # sklearn's "Input contains NaN." from the oracle AUC before
            _with(t, "_truth_p_click", [0.1, np.nan, 0.2, None, 1.5, 0.3], pa.float32()),
            "_truth_p_click: truth probability null, NaN or outside [0, 1]",
            3,
        ),
        (
            "negative for log1p",
            _with(t, "price", [1.0, -2.0, 3.0, 4.0, 5.0, 6.0]),
            "price: negative value (log1p",
            1,
        ),
    ]


@pytest.mark.parametrize(("case", "table", "reason", "count"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_rows_error_names_file_column_and_count(case, table, reason, count):
    first, reasons = find_bad_rows(table, tiny_spec())
    assert (first >= 0).sum() == count
    with pytest.raises(BadRowsError) as info:
        validate_block(table, tiny_spec(), "error", None, SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: {count} bad of 6 rows")
    assert f"{reason}" in message and f": {count} rows" in message


@pytest.mark.parametrize(("case", "table", "reason", "count"), _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_rows_quarantine_sets_them_aside(case, table, reason, count, tmp_path):
    good = validate_block(table, tiny_spec(), "quarantine", str(tmp_path), SOURCE)
    assert good.num_rows == 6 - count
    written = pq.read_table(next(tmp_path.glob("*.parquet")))
    assert written.num_rows == count and all(r.startswith(reason) for r in written[REASON_COLUMN].to_pylist())
    summary = quarantine_summary(tmp_path)
    assert summary["rows"] == count and sum(summary["by_reason"].values()) == count
    assert summary["by_file"] == {SOURCE: count}


def test_quarantine_through_ray_counts_each_bad_row_once(tmp_path, ray_local):
    spec = tiny_spec()
    day1 = tiny_table(200, seed=1)
    price = day1["price"].to_numpy().copy()
    price[[3, 50, 120]] = np.nan
    _write(tmp_path / "logs", DAY1, _with(day1, "price", price))
    day2 = tiny_table(200, seed=2, start_id=1000)
    _write(
        tmp_path / "logs",
        DAY2,
        _with(day2, "conversion", np.where(np.arange(200) == 7, 1, day2["conversion"])),
    )
    inventory = inspect_logs(tmp_path / "logs", [DAY1, DAY2], spec)
    data = DataConfig(on_bad_rows="quarantine")
    quarantine = tmp_path / "run" / "quarantine"

    stats = compute_stats(inventory, spec, data, quarantine)  # pass 1 over the rows
    assert stats.rows == 396
    ds = build_dataset(inventory, spec, stats, {"all": SampleSpace()}, data, quarantine)
    for _ in range(2):  # passes 2 and 3 (two epochs) rewrite the same quarantine files
        ids = np.concatenate([b["id"].to_numpy() for b in ds.iter_batches(batch_format="pyarrow")])
        assert len(ids) == 396 and len(np.unique(ids)) == 396
    summary = quarantine_summary(quarantine)
    assert summary["rows"] == 4
    assert summary["by_reason"] == {
        "conversion: conversion=1 without cart=1 (funnel)": 1,
        "price: null, NaN or inf": 3,
    }

    with pytest.raises(
        BadRowsError, match=r"dt=2026-11-18/part-00000.parquet: 3 bad of 200 rows .*price: null, NaN"
    ):
        compute_stats(inventory, spec, DataConfig(on_bad_rows="error"))


def test_null_request_ids_are_each_counted_once(tmp_path, ray_local):
    """Nulls collapse into one distinct id: the count is by row (file and position), not by id."""
    spec = tiny_spec()
    table = tiny_table(200, seed=3)
    ids = table["request_id"].to_pylist()
    for row in (5, 17, 60, 61, 199):
        ids[row] = None
    _write(tmp_path / "logs", DAY1, _with(table, "request_id", ids))
    inventory = inspect_logs(tmp_path / "logs", [DAY1], spec)
    data = DataConfig(on_bad_rows="quarantine")
    quarantine = tmp_path / "quarantine"
    stats = compute_stats(inventory, spec, data, quarantine)
    ds = build_dataset(inventory, spec, stats, {"all": SampleSpace()}, data, quarantine)
    rows = sum(b.num_rows for b in ds.iter_batches(batch_format="pyarrow"))
    summary = quarantine_summary(quarantine)
    assert rows == 195 and summary["rows"] == 5 and summary["by_reason"] == {"request_id: null": 5}
    assert rows + summary["rows"] == inventory.rows

    direct = tmp_path / "direct"  # validated outside the reader: no positions, nulls still apart
    validate_block(_with(table, "request_id", ids), spec, "quarantine", str(direct), SOURCE)
    assert quarantine_summary(direct)["rows"] == 5


def test_a_training_set_with_every_row_set_aside_is_an_error_naming_the_counts(tmp_path, ray_local):
    """A day whose labels are all null: stats over no row (and a run training nothing) were possible."""
    spec = tiny_spec()
    table = tiny_table(200, seed=4)
    _write(tmp_path / "logs", DAY1, _with(table, "click", [None] * 200, pa.int8()))
    inventory = inspect_logs(tmp_path / "logs", [DAY1], spec)
    with pytest.raises(BadInputError) as info:
        compute_stats(inventory, spec, DataConfig(on_bad_rows="quarantine"), tmp_path / "quarantine")
    assert str(info.value) == (
        f"{DAY1}: no valid rows to train on: 200 rows in 1 files, 200 set aside "
        "(click: null or NaN label: 200 rows)"
    )


def test_a_timestamp_far_from_its_partition_date_is_a_bad_row(tmp_path, ray_local):
    """1970 (a zero), the year 58850 (milliseconds written as seconds): wrong for every time-based
    report. Within a day of the partition (events near midnight) is fine."""
    spec = tiny_spec()
    table = tiny_table(200, seed=6)
    ts = table["ts"].to_numpy().copy()  # 2026-11-18 12:00 UTC, in the dt=2026-11-18 folder
    ts[[0, 1]] = 0
    ts[2] = ts[2] * 1000
    ts[3] = ts[3] - 36 * 3600  # 2026-11-17 00:00: one day off, accepted
    ts[4] = ts[4] - 60 * 3600  # 2026-11-16: two days off
    _write(tmp_path / "logs", DAY1, _with(table, "ts", ts))
    inventory = inspect_logs(tmp_path / "logs", [DAY1], spec)
    quarantine = tmp_path / "quarantine"
    stats = compute_stats(inventory, spec, DataConfig(on_bad_rows="quarantine"), quarantine)
    assert stats.rows == 196
    assert quarantine_summary(quarantine)["by_reason"] == {
        "ts: more than 1 day from its partition's date (seconds since 1970, UTC)": 4
    }


def test_a_value_that_alone_decides_a_features_scaling_stops_the_job_naming_it(tmp_path, ray_local):
    """1e30 fits float32 but made the standard deviation 1.6e28 (every other price scaled to ~0)."""
    spec = tiny_spec()
    table = tiny_table(200, seed=7)
    ctr = table["ctr"].to_numpy().copy()  # minmax-scaled, no transform
    ctr[10] = 1e30
    _write(tmp_path / "logs", DAY1, _with(table, "ctr", ctr))
    inventory = inspect_logs(tmp_path / "logs", [DAY1], spec)
    with pytest.raises(BadInputError) as info:
        compute_stats(inventory, spec, DataConfig())
    lines = str(info.value).splitlines()
    assert lines[0] == (
        f"{DAY1}: scaling statistics decided by single rows (fix or set aside those rows, or give the "
        "feature `transform: log1p`):"
    )
    assert len(lines) == 2 and lines[1].startswith(
        "  ctr: one value (1e+30 after its transform) holds 100% of the feature's variance over 200 rows"
    )
    ctr[10] = 0.9  # a heavy tail, not a broken value: 4.5x the largest other value
    _write(tmp_path / "logs", DAY1, _with(table, "ctr", ctr))
    assert compute_stats(inspect_logs(tmp_path / "logs", [DAY1], spec), spec, DataConfig()).rows == 200
