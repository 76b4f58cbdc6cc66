"""The feature spec: one YAML file read by the reader, the validator, the transform and the model.

Example::

    >>> spec = load_feature_spec("jobs/configs/features.yaml")
    >>> spec.sparse_names[:2], spec.num_dense
    (('user_id', 'item_id'), 13)
    >>> spec.tables["user_id"].num_embeddings
    1000000

A run saves its resolved spec (after `--spec-set` overrides) as RUN_DIR/features.yaml and beside
every checkpoint; scoring, warm start and resume read it back from there::

    >>> save_feature_spec(spec, run_dir)                  # run_dir / SPEC_FILE
    >>> saved_feature_spec(run_dir / "checkpoint") == spec
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from mtl_rec.config.loader import ConfigError, apply_overrides, from_dict, load_yaml, to_dict

IdMap = Literal["hash", "mod", "identity"]
Pooling = Literal["sum", "mean"]


@dataclass(frozen=True)
class TableSpec:
    """One embedding table. `id_map` turns a raw id into a row in [0, num_embeddings):
    hash (salted by table name, so features sharing a table agree), mod, or identity (raw ids must
    already be in range; an id out of range is a bad row, never clamped)."""

    num_embeddings: int
    dim: int
    id_map: IdMap = "hash"

    def __post_init__(self) -> None:
        if self.num_embeddings <= 0 or self.dim <= 0:
            raise ConfigError(
                f"table sizes must be positive, got num_embeddings={self.num_embeddings} dim={self.dim}"
            )


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature: an int64 column, or a list<int64> column when `multi_hot`.
    It becomes one KeyedJaggedTensor key (`name`) looked up in `table`.

    cross: a crossed feature (TorchEasyRec's ComboFeature, Wide & Deep's crossed columns) instead of
    one column: two or more single-hot integer columns whose values TOGETHER are one id, e.g.
    [domain, category]: one row per (domain, category) pair seen, in a hashed table, so a model
    learns each pair's own effect (the same item category liked differently in each scene).

    boundaries: a bucketized numeric column (TorchEasyRec's RawFeature `boundaries`) instead of an id
    column: increasing cut points b_0 < ... < b_{n-1}; a value x gets id = #{i: b_i <= x}, in [0, n],
    so its table maps ids by identity and has at least n + 1 rows. A network then learns any shape
    of the value's effect, one row per bucket, where the same value scaled as a dense feature enters
    the first layer linearly."""

    name: str
    table: str
    column: str = ""  # defaults to name; not read for a cross
    multi_hot: bool = False
    pooling: Pooling = "sum"
    cross: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)

    @property
    def columns(self) -> tuple[str, ...]:
        """The raw columns this feature reads: its crossed columns, or its one column."""
        return self.cross or (self.column,)


@dataclass(frozen=True)
class DenseFeature:
    """A float feature, transformed (log1p) then scaled with statistics from the training dates."""

    name: str
    column: str = ""
    transform: Literal["none", "log1p"] = "none"
    scaling: Literal["standard", "minmax", "none"] = "standard"

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)


ROW_ID_COLUMN = "_row_id"  # the derived id of logs without an id column (pipelines.row_ids)


@dataclass(frozen=True)
class OracleSpec:
    """Which hidden-model column is the true probability of `label` over the sample space `space`:
    its AUC is the best any model can reach there (the oracle AUC reports print beside the model's)."""

    label: str
    space: str
    column: str


@dataclass(frozen=True)
class FeatureSpec:
    """Everything the pipeline and model know about the log's columns."""

    tables: dict[str, TableSpec]
    sparse: tuple[SparseFeature, ...]
    dense: tuple[DenseFeature, ...]
    labels: tuple[str, ...]
    funnel: tuple[str, ...] = ()  # ordered stages, each implying the one before (click, cart, conversion)
    date_column: str = "dt"
    # The three row columns are optional: "" says the logs have no such thing (a public tabular set).
    # No id: each row's id is derived from its file and row (ROW_ID_COLUMN, pipelines.row_ids),
    # and there are no duplicates to audit. No time: no timestamp checks. No group key: no GAUC.
    id_column: str = "request_id"
    time_column: str = "ts"
    group_key: str = "user_id"
    truth_prefix: str = "_truth_"
    mask_prefix: str = "_mask_"
    meta_columns: tuple[str, ...] = field(default=())  # extra columns carried for reports (slices)
    oracle: tuple[OracleSpec, ...] = ()  # truth column per (label, sample space), where the logs have one
    # Multi-domain logs (STAR): the integer column naming each row's domain, in [0, num_domains). It is
    # carried into Batch.meta like a meta column (added to meta_columns); it may also be a sparse feature.
    domain_column: str = ""
    num_domains: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.domain_column:
            why = self._why_not_a_feature(self.domain_column)
            if why:
                problems.append(f"domain_column {self.domain_column!r} is {why}")
            if self.num_domains < 1:
                problems.append(
                    f"domain_column {self.domain_column!r} needs num_domains >= 1, got {self.num_domains}"
                )
            if self.domain_column not in self.meta_columns:
                object.__setattr__(self, "meta_columns", (*self.meta_columns, self.domain_column))
        elif self.num_domains:
            problems.append(f"num_domains={self.num_domains} without a domain_column")
        names = [f.name for f in self.sparse] + [f.name for f in self.dense]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"feature names used twice: {', '.join(duplicates)}")
        for feature in self.sparse:
            if feature.table not in self.tables:
                problems.append(
                    f"sparse feature {feature.name!r} reads table {feature.table!r}, which is not in tables "
                    f"({', '.join(self.tables)})"
                )
        unused = sorted(set(self.tables) - {f.table for f in self.sparse})
        if unused:
            problems.append(f"tables no feature reads: {', '.join(unused)}")
        for feature in self.sparse:
            for column in feature.columns:
                why = self._why_not_a_feature(column)
                if why:
                    problems.append(f"feature {feature.name!r} reads column {column!r}, which is {why}")
            if feature.cross and (len(feature.cross) < 2 or feature.multi_hot):
                problems.append(f"cross feature {feature.name!r} needs two or more single-hot columns")
            table = self.tables.get(feature.table)
            if feature.cross and table is not None and table.id_map == "identity":
                problems.append(
                    f"cross feature {feature.name!r}: table {feature.table!r} must hash (or mod) the "
                    "crossed ids, not map them by identity"
                )
            if feature.boundaries:
                problems.extend(_boundary_problems(feature, table))
        for feature in self.dense:
            why = self._why_not_a_feature(feature.column)
            if why:
                problems.append(f"feature {feature.name!r} reads column {feature.column!r}, which is {why}")
        for table in self.tables:
            poolings = {f.pooling for f in self.sparse if f.table == table and f.multi_hot}
            if len(poolings) > 1:
                problems.append(
                    f"table {table!r} is read by multi-hot features with different pooling "
                    f"{sorted(poolings)}; "
                    "TorchRec pools per table: use one pooling or separate tables"
                )
        missing_stages = [s for s in self.funnel if s not in self.labels]
        if missing_stages:
            problems.append(f"funnel stages {missing_stages} are not labels {list(self.labels)}")
        if not self.labels:
            problems.append("at least one label is required")
        for oracle in self.oracle:
            if oracle.label not in self.labels or not oracle.column.startswith(self.truth_prefix):
                problems.append(
                    f"oracle {oracle}: label must be one of {list(self.labels)} and the column must start "
                    f"with {self.truth_prefix!r}"
                )
        if problems:
            raise ConfigError("invalid feature spec:\n  " + "\n  ".join(problems))

    def _why_not_a_feature(self, column: str) -> str | None:
        if column in self.labels:
            return "a label (labels can never be features)"
        if column.startswith(self.truth_prefix):
            return f"a hidden-model truth column (prefix {self.truth_prefix!r}; never a feature)"
        if column.startswith(self.mask_prefix):
            return f"a sample-space mask (prefix {self.mask_prefix!r}; never a feature)"
        if column == self.id_column:
            return "the row id column (never a feature)"
        if column == self.date_column:
            return "the date partition column (never a feature)"
        return None

    @property
    def row_id_column(self) -> str:
        """The column holding each row's id: the logs' id column, or the one the reader derives."""
        return self.id_column or ROW_ID_COLUMN

    @property
    def sparse_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.sparse)

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.dense)

    def oracle_column(self, label: str, space: str) -> str | None:
        """The truth column for `label` over `space` (compared in canonical form), or None."""
        from mtl_rec.config.spaces import SampleSpace

        wanted = (label, str(SampleSpace.parse(space)))
        return next(
            (o.column for o in self.oracle if (o.label, str(SampleSpace.parse(o.space))) == wanted), None
        )

    def table_pooling(self, table: str) -> str:
        """The table's pooling: that of its multi-hot features (single-hot pooling is moot), else sum."""
        return next((f.pooling for f in self.sparse if f.table == table and f.multi_hot), "sum")

    def table_features(self, table: str) -> tuple[str, ...]:
        return tuple(f.name for f in self.sparse if f.table == table)

    def id_columns(self) -> set[str]:
        """The columns read as integer ids: single-hot, multi-hot and crossed features' columns."""
        return {c for f in self.sparse if not f.boundaries for c in f.columns}

    def numeric_columns(self) -> set[str]:
        """The columns read as numbers: dense features' and bucketized features' columns, except any
        that another feature reads as ids (those must be integers)."""
        numeric = {f.column for f in self.dense} | {f.column for f in self.sparse if f.boundaries}
        return numeric - self.id_columns()

    @property
    def num_dense(self) -> int:
        return len(self.dense)

    def model_columns(self) -> list[str]:
        """The raw columns a prediction reads: sparse, dense, and the domain column (multi-domain)."""
        wanted = [c for f in self.sparse for c in f.columns] + [f.column for f in self.dense]
        return list(dict.fromkeys(c for c in [*wanted, self.domain_column] if c))

    def input_columns(self) -> list[str]:
        """The Parquet columns the reader loads, in a stable order, without duplicates."""
        wanted = [self.id_column, self.time_column, self.group_key]
        wanted += [c for f in self.sparse for c in f.columns] + [f.column for f in self.dense]
        wanted += list(self.labels) + list(self.meta_columns)
        return list(dict.fromkeys(c for c in wanted if c))


def _boundary_problems(feature: SparseFeature, table: TableSpec | None) -> list[str]:
    """What is wrong with a bucketized feature: its cut points, its kind, its table's size."""
    cuts, where = feature.boundaries, f"bucketized feature {feature.name!r}"
    if feature.cross or feature.multi_hot:
        return [f"{where} reads one numeric column: it cannot also be a cross or multi-hot"]
    if not all(math.isfinite(b) for b in cuts) or any(a >= b for a, b in zip(cuts, cuts[1:])):
        return [f"{where}: boundaries must be finite and strictly increasing, got {list(cuts)}"]
    if table is not None and table.id_map != "identity":  # hashed buckets would share rows
        return [f"{where}: table {feature.table!r} must map bucket ids by identity, not {table.id_map}"]
    if table is not None and table.num_embeddings < len(cuts) + 1:
        return [
            f"{where}: {len(cuts)} boundaries make {len(cuts) + 1} buckets, but table {feature.table!r} "
            f"has {table.num_embeddings} rows"
        ]
    return []


def load_feature_spec(path: str | Path, overrides: tuple[str, ...] = ()) -> FeatureSpec:
    """Read a feature-spec YAML (plus `key=value` overrides) into a validated FeatureSpec."""
    data = apply_overrides(load_yaml(path), overrides)
    try:
        return from_dict(FeatureSpec, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


SPEC_FILE = "features.yaml"  # the resolved spec's name in RUN_DIR and in every checkpoint directory
_SPEC_HEADER = (
    "# The resolved feature spec this run trained on (the config's `features:` file after --spec-set\n"
    "# overrides), written by jobs.train. Scoring, warm start and resume read it from here, never the\n"
    "# working copy's file. Read it with mtl_rec.config.load_feature_spec.\n"
)


def spec_yaml(spec: FeatureSpec) -> str:
    """The spec as YAML that load_feature_spec reads back to an equal FeatureSpec (every field
    written, defaults included, so a later change of a default cannot change a saved run)."""
    return _SPEC_HEADER + yaml.safe_dump(to_dict(spec), sort_keys=False, default_flow_style=None, width=120)


def save_feature_spec(spec: FeatureSpec, directory: str | Path) -> Path:
    """Write DIRECTORY/features.yaml (see spec_yaml); returns its path."""
    path = Path(directory) / SPEC_FILE
    path.write_text(spec_yaml(spec))
    return path


def saved_feature_spec(directory: str | Path) -> FeatureSpec | None:
    """The spec saved in DIRECTORY (a run or checkpoint directory), or None where there is none
    (a checkpoint written before runs saved their spec)."""
    path = Path(directory) / SPEC_FILE
    return load_feature_spec(path) if path.is_file() else None
