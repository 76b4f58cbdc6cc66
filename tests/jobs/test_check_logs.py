"""jobs.check_logs: the data report counts every row once and says which tables collide."""

import copy
import datetime as dt
import shutil
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from jobs.check_logs import check_logs, table_collisions
from mtl_rec.config import FeatureSpec, from_dict
from mtl_rec.config.data import DataConfig
from pipelines.read import inspect_logs
from tests.pipelines.tables import TINY_SPEC, tiny_spec, tiny_table

DAY = dt.date(2026, 11, 18)


def _day(root, tables):
    folder = root / f"dt={DAY}"
    folder.mkdir(parents=True)
    for i, table in enumerate(tables):
        pq.write_table(table, folder / f"part-{i:05d}.parquet")
    return folder


def test_collisions_per_table_match_a_count_by_hand(tmp_path):
    tables = [tiny_table(300, seed=1), tiny_table(300, seed=2, start_id=1000)]
    _day(tmp_path, tables)
    report = table_collisions(inspect_logs(tmp_path, [DAY], tiny_spec()), tiny_spec())
    categories = set()
    for t in tables:  # the `cat` table holds category and recent_categories, id % 50 (mod map)
        categories |= set(t["category"].to_pylist())
        categories |= {c for row in t["recent_categories"].to_pylist() for c in row}
    per_row = defaultdict(set)
    for c in categories:
        per_row[c % 50].add(c)
    sharing = sum(len(ids) for ids in per_row.values() if len(ids) > 1)
    assert report["cat"] == {
        "id_map": "mod",
        "num_embeddings": 50,
        "distinct_ids": len(categories),
        "rows_used": len(per_row),
        "ids_sharing_a_row": sharing,
        "share": sharing / len(categories),
    }
    assert report["dev"]["ids_sharing_a_row"] == 0 and report["dev"]["distinct_ids"] == 3  # identity
    users = report["user"]  # 600 random ids hashed into 1,000 rows: about 1 - e^-0.6 of them share
    assert users["distinct_ids"] == 600 and 0.35 < users["share"] < 0.55
    assert users["rows_used"] + users["ids_sharing_a_row"] >= users["distinct_ids"]


def test_the_report_counts_every_row_once_and_lists_duplicates_and_collisions(tmp_path, ray_local):
    logs = tmp_path / "logs"
    folder = _day(logs, [tiny_table(300, seed=1)])
    shutil.copy(folder / "part-00000.parquet", folder / "part-00001.parquet")  # a file copied in its day
    spec_path = tmp_path / "features.yaml"
    spec_path.write_text(yaml.safe_dump(TINY_SPEC))
    data = DataConfig(on_bad_rows="quarantine")
    report = check_logs(str(logs), str(DAY), str(spec_path), tmp_path / "out", data)
    assert report["rows_in_files"] == 600 and report["rows_valid"] == 300
    assert report["quarantine"]["rows"] == 300
    assert report["quarantine"]["by_reason"] == {"request_id: duplicate id (an earlier row has it)": 300}
    first, copy = str(folder / "part-00000.parquet"), str(folder / "part-00001.parquet")
    assert report["duplicate_ids"]["by_file"] == [{"path": copy, "first_seen_in": first, "rows": 300}]
    markdown = (tmp_path / "out" / "data_report.md").read_text()
    assert f"- duplicate ids in {copy}: 300 rows repeat ids first seen in {first}" in markdown
    share = report["tables"]["user"]["share"]
    assert f"- warning: table user: {share:.1%} of its 300 ids share a row with another id" in markdown


def test_a_bucketized_feature_reports_the_buckets_its_values_fall_in(tmp_path):
    """Each bucket is one id of its identity table: the report counts the buckets the non-null
    values reach (a null price is a bad row, not a bucket), none of them sharing a row."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["tables"]["price_bucket"] = {"num_embeddings": 4, "dim": 4, "id_map": "identity"}
    spec["sparse"].append(
        {"name": "price_bucket", "table": "price_bucket", "column": "price", "boundaries": [10, 90, 100]}
    )
    spec = from_dict(FeatureSpec, spec)
    table = tiny_table(300, seed=4)
    price = table["price"].to_numpy().astype(np.float64)  # uniform in [1, 100)
    price[:5] = np.nan
    nulls = pa.array(price, pa.float32(), mask=np.isnan(price))
    _day(tmp_path, [table.set_column(table.schema.get_field_index("price"), "price", nulls)])
    report = table_collisions(inspect_logs(tmp_path, [DAY], spec), spec)["price_bucket"]
    reached = set(np.searchsorted([10, 90, 100], price[5:], side="right").tolist())
    # prices lie in [1, 100): buckets 0-2; a null counted as a value would reach bucket 3
    assert report["distinct_ids"] == report["rows_used"] == len(reached) == 3
    assert report["ids_sharing_a_row"] == 0
