import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtl_rec.config import FeatureSpec, SampleSpace, TableSpec, from_dict
from mtl_rec.config.loader import ConfigError
from mtl_rec.transform import (
    bucket_ids,
    cross_ids,
    feature_checks,
    first_failures,
    map_ids,
    splitmix64,
    table_salt,
)
from pipelines.collate import BatchLayout, collate
from pipelines.read import _expected_kind
from pipelines.transform import block_moments, reduce_moments, transform_block
from tests.pipelines.tables import TINY_SPEC, tiny_spec, tiny_table

SPACES = {
    "all": SampleSpace(),
    "clicked": SampleSpace.parse("click == 1"),
    "carted": SampleSpace.parse("cart == 1"),
}


def _stats(table, spec):
    return reduce_moments([block_moments(table, spec).to_pylist()[0]], spec)


def test_splitmix64_reference_values():
    # splitmix64 finaliser of 0 and 1 with the golden-ratio increment (reference values of the algorithm)
    assert splitmix64(np.array([0], np.uint64))[0] == np.uint64(0xE220A8397B1DCDAF)
    assert splitmix64(np.array([1], np.uint64))[0] == np.uint64(0x910A2DEC89025CC1)


def test_id_maps_are_in_range_and_shared_tables_agree():
    raw = np.array([0, 5, 10**12, 2**62], dtype=np.int64)
    hashed = map_ids(raw, "user", TableSpec(1000, 4, "hash"))
    assert hashed.dtype == np.int64 and ((hashed >= 0) & (hashed < 1000)).all()
    # same raw id, same table -> same row (features sharing a table agree); other table -> other salt
    assert (map_ids(raw, "user", TableSpec(1000, 4)) == hashed).all()
    assert table_salt("user") != table_salt("item")
    assert map_ids(raw, "cat", TableSpec(7, 4, "mod")).tolist() == (raw % 7).tolist()
    assert map_ids(np.array([2]), "dev", TableSpec(3, 4, "identity")).tolist() == [2]


def test_transform_and_collate_equal_hand_built_reference():
    spec, table = tiny_spec(), tiny_table(6)
    stats = _stats(table, spec)
    out = transform_block(table, spec, stats, SPACES)
    batch = collate(out, BatchLayout.from_table(out))

    user = map_ids(table["user_id"].to_numpy(), "user", spec.tables["user"])
    category = table["category"].to_numpy() % 50
    device = table["device"].to_numpy()
    recent = [np.asarray(v, dtype=np.int64) % 50 for v in table["recent_categories"].to_pylist()]
    expected_lengths = [1] * 18 + [
        len(v) for v in recent
    ]  # key-major: 3 single-hot keys x 6 rows, then lists
    assert [len(v) for v in recent] == [2, 0, 3, 2, 0, 3]
    expected_values = np.concatenate([user, category, device, *recent])

    kjt = batch.sparse
    assert kjt.keys() == ["user_id", "category", "device", "recent_categories"]
    assert kjt.stride() == 6
    assert kjt.lengths().tolist() == expected_lengths
    assert kjt.values().tolist() == expected_values.tolist()
    assert kjt.offsets().tolist() == np.concatenate([[0], np.cumsum(expected_lengths)]).tolist()
    assert kjt.length_per_key() == [6, 6, 6, 10]
    assert kjt.offset_per_key() == [0, 6, 12, 18, 28]
    assert kjt["recent_categories"].lengths().tolist() == [2, 0, 3, 2, 0, 3]

    price = np.log1p(table["price"].to_numpy().astype(np.float64))
    ctr = table["ctr"].to_numpy().astype(np.float64)
    expected_dense = np.stack(
        [(price - price.mean()) / price.std(), (ctr - ctr.min()) / (ctr.max() - ctr.min())], 1
    )
    assert batch.dense.shape == (6, 2) and batch.dense.dtype == torch.float32
    np.testing.assert_allclose(batch.dense.numpy(), expected_dense, atol=1e-5)

    assert batch.labels["click"].tolist() == [1, 0, 1, 1, 0, 1]
    assert batch.masks["clicked"].tolist() == [True, False, True, True, False, True]
    assert batch.masks["carted"].tolist() == [True, False, False, True, False, False]
    assert batch.masks["all"].all()
    assert batch.ids.tolist() == list(range(6))
    assert set(batch.meta) == {"user_id", "ts", "_truth_p_click"}
    assert batch.meta["user_id"].tolist() == table["user_id"].to_pylist()  # raw group key, not hashed


def test_collate_of_a_slice_and_of_chunked_columns():
    spec, table = tiny_spec(), tiny_table(9)
    out = transform_block(table, spec, _stats(table, spec), SPACES)
    layout = BatchLayout.from_table(out)
    whole = collate(out, layout)
    part = collate(out.slice(4, 4), layout)  # sliced list arrays carry an offset
    assert (
        part.sparse["recent_categories"].lengths().tolist()
        == whole.sparse["recent_categories"].lengths()[4:8].tolist()
    )
    assert (
        part.sparse["recent_categories"].values().tolist()
        == whole.sparse["recent_categories"]
        .values()[
            int(whole.sparse["recent_categories"].offsets()[4]) : int(
                whole.sparse["recent_categories"].offsets()[8]
            )
        ]
        .tolist()
    )
    chunked = pa.concat_tables([out.slice(0, 4), out.slice(4)])  # what Ray's re-batching produces
    again = collate(chunked, layout)  # exact: collate copies the transformed values, no arithmetic
    assert torch.equal(again.sparse.values(), whole.sparse.values())
    assert torch.equal(again.dense, whole.dense)


def test_stats_reduce_over_blocks_equals_whole():
    spec, table = tiny_spec(), tiny_table(30, seed=3)
    whole = _stats(table, spec)
    parts = reduce_moments(
        [block_moments(table.slice(i, 10), spec).to_pylist()[0] for i in (0, 10, 20)], spec
    )
    for name in spec.dense_names:
        assert parts.features[name].mean == pytest.approx(whole.features[name].mean)
        assert parts.features[name].std == pytest.approx(whole.features[name].std)
        assert parts.features[name].count == 30


def _cross_spec(**table) -> dict:
    """tiny_spec plus device x category crossed into a hashed table of its own."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["tables"]["dev_cat"] = {"num_embeddings": 64, "dim": 4, "id_map": "hash", **table}
    spec["sparse"].append({"name": "device_x_category", "table": "dev_cat", "cross": ["device", "category"]})
    return spec


def test_a_cross_feature_is_one_id_per_tuple_of_its_columns_hashed_into_its_table():
    spec = from_dict(FeatureSpec, _cross_spec())
    table = tiny_table(200, seed=3)
    device, category = (table[c].to_numpy() for c in ("device", "category"))
    crossed = cross_ids([device, category])  # [B]
    # one id per (device, category) pair: equal pairs share it, different pairs never collide here
    pairs = device * 1000 + category
    assert len(np.unique(crossed)) == len(np.unique(pairs)) and (crossed >= 0).all()
    for pair in np.unique(pairs)[:20]:
        assert len(np.unique(crossed[pairs == pair])) == 1
    # order-sensitive, and a reference chain of splitmix64 (top bit dropped)
    assert not np.array_equal(crossed, cross_ids([category, device]))
    reference = splitmix64(splitmix64(device.view(np.uint64)) ^ category.view(np.uint64)) >> np.uint64(1)
    assert np.array_equal(crossed, reference.view(np.int64))
    out = transform_block(table, spec, _stats(table, spec), {})
    rows = out["sparse.device_x_category"].to_numpy()
    assert np.array_equal(rows, map_ids(crossed, "dev_cat", spec.tables["dev_cat"]))
    assert ((rows >= 0) & (rows < 64)).all()
    assert "device" in spec.input_columns() and "device_x_category" not in spec.input_columns()


def test_a_cross_feature_checks_each_crossed_column_and_needs_a_hashed_table():
    spec = from_dict(FeatureSpec, _cross_spec())
    table = tiny_table(6)
    category = table["category"].to_numpy().copy()
    category[2] = -5
    bad = table.set_column(table.schema.get_field_index("category"), "category", pa.array(category))
    first, reasons = first_failures(feature_checks(bad, spec), bad.num_rows)
    assert [reasons[c] for c in first[first >= 0]] == ["category: negative id"]
    with pytest.raises(ConfigError, match="must hash"):
        from_dict(FeatureSpec, _cross_spec(id_map="identity"))
    one_column = _cross_spec()
    one_column["sparse"][-1]["cross"] = ["device"]
    with pytest.raises(ConfigError, match="two or more single-hot columns"):
        from_dict(FeatureSpec, one_column)


def _bucket_spec(boundaries=(5.0, 20.0, 50.0), rows: int = 4, id_map: str = "identity") -> dict:
    """tiny_spec plus `price` bucketized into an identity table of its own (price stays dense too)."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["tables"]["price_bucket"] = {"num_embeddings": rows, "dim": 4, "id_map": id_map}
    spec["sparse"].append(
        {"name": "price_bucket", "table": "price_bucket", "column": "price", "boundaries": list(boundaries)}
    )
    return spec


def test_a_bucketized_feature_is_the_count_of_cut_points_at_or_below_the_value():
    spec = from_dict(FeatureSpec, _bucket_spec())
    table = tiny_table(6).set_column(
        tiny_table(6).schema.get_field_index("price"), "price",
        pa.array([0.5, 5.0, 19.99, 20.0, 75.0, np.inf], pa.float32()),
    )  # fmt: skip
    assert bucket_ids(table["price"].to_numpy(), (5.0, 20.0, 50.0)).tolist() == [0, 1, 1, 2, 3, 3]
    out = transform_block(table, spec, _stats(table.slice(0, 5), spec), {})
    assert out["sparse.price_bucket"].to_numpy().tolist() == [0, 1, 1, 2, 3, 3]
    assert "price" in spec.input_columns() and "price_bucket" not in spec.input_columns()
    # an integer column buckets exactly: 20 is at the cut point 20.0, so in the bucket above it
    assert bucket_ids(np.array([4, 5, 20, 2**53 + 1], np.int64), (5.0, 20.0)).tolist() == [0, 1, 2, 2]


def test_a_bucketized_feature_rejects_null_and_nan_and_checks_its_cut_points_and_table():
    spec = from_dict(FeatureSpec, _bucket_spec())
    price = pa.array([1.0, None, 3.0, np.nan, 5.0, 6.0], pa.float32())
    bad = tiny_table(6).set_column(tiny_table(6).schema.get_field_index("price"), "price", price)
    first, reasons = first_failures(feature_checks(bad, spec), bad.num_rows)  # sparse checks run first
    assert np.flatnonzero(first >= 0).tolist() == [1, 3]
    assert {reasons[c] for c in first[first >= 0]} == {"price: null or NaN (bucketized feature price_bucket)"}
    with pytest.raises(ConfigError, match="strictly increasing"):
        from_dict(FeatureSpec, _bucket_spec(boundaries=(5.0, 5.0)))
    with pytest.raises(ConfigError, match="finite"):
        from_dict(FeatureSpec, _bucket_spec(boundaries=(5.0, float("inf"))))
    with pytest.raises(ConfigError, match="3 boundaries make 4 buckets, but table 'price_bucket' has 3 rows"):
        from_dict(FeatureSpec, _bucket_spec(rows=3))
    with pytest.raises(ConfigError, match="must map bucket ids by identity, not hash"):
        from_dict(FeatureSpec, _bucket_spec(rows=64, id_map="hash"))  # hashed buckets would share rows


def test_a_column_read_as_ids_stays_an_integer_column_when_another_feature_buckets_it():
    """The reader's type check and serving's column types: a bucketized column is a number, unless
    another feature reads it as ids (then a float there would be truncated into an id)."""
    spec = from_dict(FeatureSpec, _bucket_spec())
    assert _expected_kind(spec)["price"] == "number" and "price" in spec.numeric_columns()
    on_ids = _bucket_spec()
    on_ids["sparse"][-1]["column"] = "category"  # category is also the `category` id feature
    spec = from_dict(FeatureSpec, on_ids)
    assert _expected_kind(spec)["category"] == "int" and "category" not in spec.numeric_columns()
    assert "category" in spec.id_columns()
