"""Typed, frozen configuration: the feature spec, sample spaces, feature statistics, the YAML loader."""

from mtl_rec.config.features import (
    SPEC_FILE,
    DenseFeature,
    FeatureSpec,
    OracleSpec,
    SparseFeature,
    TableSpec,
    load_feature_spec,
    save_feature_spec,
    saved_feature_spec,
)
from mtl_rec.config.loader import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from mtl_rec.config.spaces import SampleSpace
from mtl_rec.config.stats import DenseStats, FeatureStats

__all__ = [
    "SPEC_FILE",
    "ConfigError",
    "DenseFeature",
    "DenseStats",
    "FeatureSpec",
    "FeatureStats",
    "OracleSpec",
    "SampleSpace",
    "SparseFeature",
    "TableSpec",
    "apply_overrides",
    "from_dict",
    "load_feature_spec",
    "load_yaml",
    "save_feature_spec",
    "saved_feature_spec",
    "to_dict",
]
