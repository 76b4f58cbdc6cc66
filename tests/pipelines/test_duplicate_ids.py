"""The request-id audit (pipelines.ids): duplicates are bad rows counted by file, leakage is an error."""

import datetime as dt
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtl_rec.config import SampleSpace
from mtl_rec.config.data import DataConfig
from pipelines.dataset import build_dataset, compute_stats
from pipelines.errors import BadInputError
from pipelines.ids import shared_ids
from pipelines.read import _read_and_prepare, inspect_logs
from pipelines.validate import quarantine_summary
from tests.pipelines.tables import tiny_spec, tiny_table

DAY1, DAY2 = dt.date(2026, 11, 18), dt.date(2026, 11, 19)
DUPLICATE = "request_id: duplicate id (an earlier row has it)"


def _write(root, day, table, name):
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return str(folder / name)


def _corrupted_day(root):
    """part-0: 200 good rows; part-1: a copy of part-0; part-2: 300 rows whose last 100 repeat its
    first 100 ids (a writer that retried a batch), 7 of them with a NaN price too."""
    first = _write(root, DAY1, tiny_table(200, seed=1), "part-00000.parquet")
    copy = root / f"dt={DAY1}" / "part-00001.parquet"
    shutil.copy(first, copy)
    retried = tiny_table(300, seed=2, start_id=10_000)
    ids = retried["request_id"].to_numpy().copy()
    ids[200:] = ids[:100]
    price = retried["price"].to_numpy().copy()
    price[[3, 50, 210, 250, 251, 290, 299]] = np.nan  # 2 in originals, 5 in the repeats
    retried = retried.set_column(0, "request_id", pa.array(ids)).set_column(
        retried.schema.get_field_index("price"), "price", pa.array(price)
    )
    third = _write(root, DAY1, retried, "part-00002.parquet")
    return first, str(copy), third


def test_duplicates_stop_the_job_before_training_with_counts_by_file(tmp_path):
    first, copy, third = _corrupted_day(tmp_path)
    with pytest.raises(BadInputError) as info:
        inspect_logs(tmp_path, [DAY1], tiny_spec())
    lines = str(info.value).splitlines()
    assert lines[0].startswith("request_id: 300 rows repeat an earlier row's id, in 2 file(s)")
    assert lines[1:] == [
        f"  {copy}: request_id: duplicate id: 200 rows repeat ids first seen in {first}",
        f"  {third}: request_id: duplicate id: 100 rows repeat ids first seen in the same file",
    ]


def test_quarantined_duplicates_are_set_aside_by_position_and_every_row_is_counted(tmp_path, ray_local):
    """Real Ray Data: the stats pass and two epochs see each id once; rows in files = valid + set aside,
    and a bad row that is also a repeat is counted once, as a repeat (the earlier check wins)."""
    spec = tiny_spec()
    _corrupted_day(tmp_path / "logs")
    inventory = inspect_logs(tmp_path / "logs", [DAY1], spec, on_bad_rows="quarantine")
    assert inventory.rows == 700 and inventory.ids.duplicate_rows == 300
    data = DataConfig(on_bad_rows="quarantine")
    quarantine = tmp_path / "quarantine"
    stats = compute_stats(inventory, spec, data, quarantine)
    assert stats.rows == 398  # 400 distinct ids, 2 of them with a NaN price
    ds = build_dataset(inventory, spec, stats, {"all": SampleSpace()}, data, quarantine)
    for _ in range(2):
        ids = np.concatenate([b["id"].to_numpy() for b in ds.iter_batches(batch_format="pyarrow")])
        assert len(ids) == 398 and len(np.unique(ids)) == 398
    summary = quarantine_summary(quarantine)
    assert summary["by_reason"] == {DUPLICATE: 300, "price: null, NaN or inf": 2}
    assert len(ids) + summary["rows"] == inventory.rows
    by_file = {k.rsplit("/", 1)[-1]: v for k, v in summary["by_file"].items()}
    assert by_file == {"part-00001.parquet": 200, "part-00002.parquet": 102}  # part-0 has no bad row


def test_an_eval_day_sharing_ids_with_the_train_days_is_leakage(tmp_path):
    spec = tiny_spec()
    train_file = _write(tmp_path, DAY1, tiny_table(200, seed=1), "part-00000.parquet")
    copied = tiny_table(200, seed=5, start_id=150)  # ids 150..349: 50 of them trained on DAY1
    eval_file = _write(tmp_path, DAY2, copied, "part-00000.parquet")
    train, held = inspect_logs(tmp_path, [DAY1], spec), inspect_logs(tmp_path, [DAY2], spec)
    with pytest.raises(BadInputError) as info:
        shared_ids(train, held, spec.id_column)
    assert str(info.value).splitlines() == [
        "request_id: the evaluation dates share 50 ids with the training dates (leakage: the same "
        "impressions would be trained on and scored):",
        f"  {eval_file}: request_id: 50 ids also in the training file {train_file}",
    ]
    disjoint = _write(tmp_path, DAY2, tiny_table(200, seed=5, start_id=200), "part-00000.parquet")
    shared_ids(train, inspect_logs(tmp_path, [DAY2], spec), spec.id_column)  # no error
    assert disjoint == eval_file


def test_eval_files_must_have_the_training_files_types(tmp_path):
    spec = tiny_spec()
    train_file = _write(tmp_path, DAY1, tiny_table(20, seed=1), "part-00000.parquet")
    drifted = tiny_table(20, seed=2, start_id=100)
    drifted = drifted.set_column(
        drifted.schema.get_field_index("price"), "price", drifted["price"].cast(pa.float64())
    )
    eval_file = _write(tmp_path, DAY2, drifted, "part-00000.parquet")
    train = inspect_logs(tmp_path, [DAY1], spec)
    inspect_logs(tmp_path, [DAY2], spec)  # alone, the eval day is consistent
    with pytest.raises(BadInputError) as info:
        inspect_logs(tmp_path, [DAY2], spec, like=train)
    assert str(info.value).splitlines()[-1] == (
        f"  {eval_file}: schema drift: column price is double here but float in {train_file}"
    )
    skipped = inspect_logs(tmp_path, [DAY1, DAY2], spec, on_bad_files="skip", like=train)
    assert [s["path"] for s in skipped.skipped] == [eval_file] and skipped.rows == 20


def test_the_audit_can_be_turned_off_for_logs_deduplicated_upstream(tmp_path):
    _corrupted_day(tmp_path)
    inventory = inspect_logs(tmp_path, [DAY1], tiny_spec(), check_ids=False)
    assert inventory.rows == 700 and not inventory.ids.checked and inventory.ids.duplicate_rows == 0


def test_a_corrupt_data_page_behind_an_intact_footer_names_the_file(tmp_path):
    path = tmp_path / "part-00000.parquet"
    pq.write_table(tiny_table(5000, seed=1), path, compression="zstd", row_group_size=1000)
    raw = bytearray(path.read_bytes())
    meta = pq.read_metadata(path)
    page = meta.row_group(2).column(meta.schema.names.index("price"))  # the third row group's prices
    start = page.data_page_offset + 16
    raw[start : start + 64] = bytes(64)  # zeroed bytes in a compressed page, the footer untouched
    path.write_bytes(bytes(raw))
    assert pq.read_metadata(path).num_rows == 5000  # the footer pass cannot see it
    files = {"path": [str(path)], "index": [0]}
    with pytest.raises(BadInputError) as info:
        list(_read_and_prepare(files, ["request_id", "price"], 1000, lambda table, source: table, {}))
    assert str(info.value).startswith(
        f"{path}: unreadable Parquet data after its first 2,000 rows "
        "(the footer was intact, a data page is not): "
    )
