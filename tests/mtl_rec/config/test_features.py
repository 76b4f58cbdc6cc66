from dataclasses import dataclass

import numpy as np
import pytest

from mtl_rec.config import (
    ConfigError,
    FeatureSpec,
    SampleSpace,
    apply_overrides,
    from_dict,
    load_feature_spec,
)
from mtl_rec.config.loader import load_yaml

SPEC = "jobs/configs/features.yaml"


def test_default_spec_loads_with_shared_tables():
    spec = load_feature_spec(SPEC)
    assert len(spec.sparse) == 22 and spec.num_dense == 13
    crossed = {f.name: f.cross for f in spec.sparse if f.cross}
    assert crossed == {"domain_category": ("domain", "category")}
    assert spec.tables["domain_category"].id_map == "hash"
    tables = {f.name: f.table for f in spec.sparse}
    assert tables["recent_categories"] == tables["category"] == "category"
    assert spec.tables["shop"].num_embeddings > 100_000
    assert spec.group_key == "user_id" and spec.funnel == ("click", "cart", "conversion")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("dense=[{name: click}]", "reads column 'click', which is a label"),
        ("dense=[{name: _truth_p_click}]", "hidden-model truth column"),
        ("dense=[{name: x, column: _mask_clicked}]", "sample-space mask"),
        ("dense=[{name: request_id}]", "the row id column"),
    ],
)
def test_labels_truth_and_masks_can_never_be_features(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_feature_spec(SPEC, (override,))


def test_spec_errors_name_the_problem():
    with pytest.raises(ConfigError, match="reads table 'nope', which is not in tables"):
        load_feature_spec(SPEC, ("sparse=[{name: user_id, table: nope}]",))
    with pytest.raises(
        ConfigError, match="unknown key 'dimension' in tables.user_id; valid keys: num_embeddings"
    ):
        load_feature_spec(SPEC, ("tables.user_id.dimension=8",))
    with pytest.raises(ConfigError, match="'cuckoo' is not one of 'hash', 'mod', 'identity'"):
        load_feature_spec(SPEC, ("tables.user_id.id_map=cuckoo",))
    with pytest.raises(ConfigError, match="feature names used twice: price"):
        data = load_yaml(SPEC)
        data["dense"].append({"name": "price"})
        from_dict(FeatureSpec, data)


def test_loader_types_and_overrides():
    @dataclass(frozen=True)
    class Inner:
        lr: float = 0.1
        names: tuple[str, ...] = ()

    @dataclass(frozen=True)
    class Outer:
        inner: Inner
        steps: int = 1

    data = apply_overrides({"inner": {"lr": 1}}, ["inner.names=[a, b]", "steps=5"])
    assert from_dict(Outer, data) == Outer(Inner(1.0, ("a", "b")), 5)
    with pytest.raises(ConfigError, match="steps: expected an integer, got 'x'"):
        from_dict(Outer, {"inner": {}, "steps": "x"})
    with pytest.raises(ConfigError, match="missing required key 'inner'"):
        from_dict(Outer, {})


@pytest.mark.parametrize("raw, value", [("1e-3", 1e-3), ("5E+2", 500.0), ("-2.5e-4", -2.5e-4), ("3", 3.0)])
def test_a_float_written_in_exponent_form_is_a_number(raw, value):
    # PyYAML (YAML 1.1) reads 1e-3 as the string '1e-3'; a user means the number.
    @dataclass(frozen=True)
    class Opt:
        lr: float = 0.1

    assert from_dict(Opt, apply_overrides({}, [f"lr={raw}"])) == Opt(value)
    with pytest.raises(ConfigError, match="lr: expected a number, got '1e-3x'"):
        from_dict(Opt, {"lr": "1e-3x"})


def test_sample_space_masks():
    labels = {"click": np.array([1, 1, 0, 1]), "cart": np.array([0, 1, 0, 1])}
    assert SampleSpace.parse("all").mask(labels).all()
    assert SampleSpace.parse("click == 1").mask(labels).tolist() == [True, True, False, True]
    assert SampleSpace.parse("click == 1 and cart != 1").mask(labels).tolist() == [True, False, False, False]
    with pytest.raises(ConfigError, match="not a label"):
        SampleSpace.parse("clicks == 1", labels=("click", "cart"))
    with pytest.raises(ConfigError, match="cannot parse"):
        SampleSpace.parse("click > 0")


def test_shared_table_pooling_must_agree():
    spec = load_feature_spec(SPEC)
    assert spec.table_pooling("category") == "mean" and spec.table_pooling("user_id") == "sum"
    assert spec.table_features("category") == ("category", "recent_categories")
    data = load_yaml(SPEC)
    data["sparse"].append(
        {
            "name": "cats2",
            "column": "recent_categories",
            "table": "category",
            "multi_hot": True,
            "pooling": "sum",
        }
    )
    with pytest.raises(
        ConfigError, match="table 'category' is read by multi-hot features with different pooling"
    ):
        from_dict(FeatureSpec, data)
