"""The resolved feature spec saved with a run reads back equal, and a spec that would change what a
checkpoint's weights mean is named difference by difference (mtl_rec.config.compat)."""

import pytest

from mtl_rec.config import (
    SPEC_FILE,
    FeatureSpec,
    from_dict,
    load_feature_spec,
    load_yaml,
    save_feature_spec,
    saved_feature_spec,
)
from mtl_rec.config.compat import SpecMismatch, check_spec_compatible, config_differences, spec_differences
from mtl_rec.config.loader import to_dict
from mtl_rec.run_config import load_run_config

SPEC = "jobs/configs/features.yaml"
TRAINED = ("tables.user_id.num_embeddings=50000",)  # a --spec-set override, as a run trains with


def test_saved_spec_reads_back_equal(tmp_path):
    spec = load_feature_spec(SPEC, TRAINED)
    assert save_feature_spec(spec, tmp_path) == tmp_path / SPEC_FILE
    assert saved_feature_spec(tmp_path) == spec  # overrides, defaults, oracle, domain column: all kept
    assert load_feature_spec(tmp_path / SPEC_FILE) == spec  # a plain spec file, for people too
    assert saved_feature_spec(tmp_path / "absent") is None  # a checkpoint from before specs were saved


def test_differences_name_every_change_that_alters_the_weights():
    saved = load_feature_spec(SPEC, TRAINED)
    current = load_feature_spec(
        SPEC,
        (
            "tables.item_id.num_embeddings=100000",
            "tables.age_bucket.id_map=hash",
            "dense=[{name: price}, {name: discount}, {name: x, column: price}]",
            "labels=[click, cart, conversion, purchase]",
            "num_domains=4",
        ),
    )
    differences = spec_differences(saved, current)
    assert differences[:4] == [
        "table 'user_id' num_embeddings 50000 -> 1000000",
        "table 'item_id' num_embeddings 500000 -> 100000",
        "table 'age_bucket' id_map identity -> hash",
        "dense feature 'item_hist_ctr' removed",
    ]
    assert "dense feature 'x' added" in differences
    assert "dense feature 'price' transform log1p -> none" in differences
    assert differences[-2:] == ["label 'purchase' added", "num_domains 3 -> 4"]


def test_sparse_features_order_pooling_and_columns_matter():
    saved = load_feature_spec(SPEC)
    data_sparse = [
        "{name: item_id, table: item_id}",
        "{name: user_id, table: user_id, column: uid}",
        "{name: recent_categories, table: category, multi_hot: true, pooling: sum}",
    ]
    current = load_feature_spec(
        SPEC,
        (
            f"sparse=[{', '.join(data_sparse)}]",
            "tables={user_id: {num_embeddings: 1000000, dim: 16}, item_id: {num_embeddings: 500000, dim: 16},"
            " category: {num_embeddings: 4096, dim: 16}}",
            "domain_column=''",
            "num_domains=0",
        ),
    )
    differences = spec_differences(saved, current)
    assert "table 'age_bucket' removed" in differences
    assert "table 'category' pooling mean -> sum" in differences
    assert "sparse feature 'user_id' column user_id -> uid" in differences
    reordered = "['user_id', 'item_id', 'recent_categories'] -> ['item_id', 'user_id', 'recent_categories']"
    assert f"sparse features reordered: {reordered}" in differences  # the model's input columns move
    assert "domain_column 'domain' -> ''" in differences


def test_what_only_reads_or_reports_may_differ():
    saved = load_feature_spec(SPEC)
    data = load_yaml(SPEC)
    data.update(group_key="item_id", meta_columns=["device"], oracle=[], funnel=[], time_column="event_ts")
    data["sparse"][0]["pooling"] = "mean"  # a single-hot feature's pooling is moot
    current = from_dict(FeatureSpec, data)
    assert current != saved and spec_differences(saved, current) == []
    check_spec_compatible(saved, current, "runs/a/checkpoint", "warm start")  # no error


def test_mismatch_message_names_the_checkpoint_and_every_difference():
    saved = load_feature_spec(SPEC, TRAINED)
    current = load_feature_spec(SPEC, ("tables.user_id.id_map=mod",))
    with pytest.raises(SpecMismatch) as error:
        check_spec_compatible(saved, current, "runs/a/checkpoint", "warm start", "Train from scratch")
    assert str(error.value) == (
        "warm start refused: the feature spec differs from the checkpoint's "
        "(runs/a/checkpoint/features.yaml): "
        "table 'user_id' num_embeddings 50000 -> 1000000; table 'user_id' id_map hash -> mod. "
        "Train from scratch"
    )


def test_config_differences_name_each_changed_setting_except_how_the_run_executes():
    saved = to_dict(load_run_config("jobs/configs/mmoe.yaml"))
    same_run = to_dict(load_run_config("jobs/configs/mmoe.yaml", ("train.workers=4", "data.read_tasks=2")))
    assert config_differences(saved, same_run) == []
    changes = ("train.epochs=3", "optim.dense.lr=0.01", "data.batch_size=64")
    other = to_dict(load_run_config("jobs/configs/mmoe.yaml", changes))
    assert config_differences(saved, other) == [
        "data.batch_size 1024 -> 64",
        f"optim.dense.lr {saved['optim']['dense']['lr']} -> 0.01",
        "train.epochs 50 -> 3",  # the preset's most passes
    ]


def test_moved_bucket_boundaries_change_what_the_rows_mean():
    """A bucket's row learned the values between its cut points: moving them re-assigns rows."""

    def spec(boundaries: list[float]) -> FeatureSpec:
        data = load_yaml(SPEC)
        data["tables"]["price_bucket"] = {"num_embeddings": 4, "dim": 16, "id_map": "identity"}
        data["sparse"].append(
            {"name": "price_bucket", "table": "price_bucket", "column": "price", "boundaries": boundaries}
        )
        return from_dict(FeatureSpec, data)

    differences = spec_differences(spec([10, 50, 90]), spec([10, 50, 95]))
    moved = "(10.0, 50.0, 90.0) -> (10.0, 50.0, 95.0)"
    assert differences == [f"sparse feature 'price_bucket' boundaries {moved}"]
