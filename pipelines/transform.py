"""Validated log block -> model-ready columns, vectorised (no Python loop per row or per id).
Ids are mapped and dense values scaled by mtl_rec.transform, the code serving runs too.

Output columns of `transform_block` (the contract `pipelines.collate` reads):
    id                   int64 request id (or the derived row id of logs without one: pipelines.read)
    sparse.<feature>     int64 row in the feature's table, or list<int64> for multi-hot features
    dense                fixed_size_list<float32>[D]: transformed and scaled, spec order
    label.<label>        float32 in {0, 1}
    mask.<space>         bool, rows in the sample space
    meta.<column>        group key, time, _truth_ probabilities: for metrics, never model inputs

Example::

    >>> spaces = {"all": SampleSpace(), "clicked": SampleSpace.parse("click == 1")}
    >>> out = transform_block(validated, spec, stats, spaces)
    >>> out.column_names[:3]
    ['id', 'sparse.user_id', 'sparse.item_id']
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from mtl_rec.config import FeatureSpec, FeatureStats, SampleSpace
from mtl_rec.data_position import POSITION_COLUMN
from mtl_rec.transform import dense_matrix, flat, mapped_feature


def transform_block(
    table: pa.Table, spec: FeatureSpec, stats: FeatureStats, spaces: Mapping[str, SampleSpace]
) -> pa.Table:
    """See module doc. `table` must have passed validation (no nulls, ids >= 0, finite dense)."""
    columns: dict[str, pa.Array] = {"id": flat(table[spec.row_id_column]).cast(pa.int64())}
    for feature in spec.sparse:
        values, offsets = mapped_feature(table, spec, feature)  # [B], or [N] with offsets [B + 1]
        mapped = pa.array(values, pa.int64())
        columns[f"sparse.{feature.name}"] = (
            mapped if offsets is None else pa.ListArray.from_arrays(pa.array(offsets), mapped)
        )

    dense = dense_matrix(table, spec, stats)  # [B, D]
    columns["dense"] = pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), spec.num_dense)

    labels = {}
    for label in spec.labels:
        labels[label] = (
            flat(table[label]).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        )  # [B]
        columns[f"label.{label}"] = pa.array(labels[label])
    for name, space in spaces.items():
        columns[f"mask.{name}"] = pa.array(space.mask(labels))  # [B] bool
    for column in dict.fromkeys(c for c in (spec.group_key, spec.time_column, *spec.meta_columns) if c):
        columns[f"meta.{column}"] = flat(table[column])
    for column in (c for c in table.column_names if c.startswith(spec.truth_prefix)):
        columns[f"meta.{column}"] = flat(table[column]).cast(pa.float32())
    if POSITION_COLUMN in table.column_names:  # where each row sits in the logs (mtl_rec.data_position)
        columns["pos"] = flat(table[POSITION_COLUMN])
    return pa.table(columns)


def block_moments(table: pa.Table, spec: FeatureSpec) -> pa.Table:
    """One row of per-feature (count, sum, sum of squares, min, max) over a validated block (stats pass)."""
    x = dense_matrix(table, spec, None, scale=False).astype(np.float64)  # [B, D]
    n = np.full(spec.num_dense, x.shape[0], dtype=np.int64)
    empty = x.shape[0] == 0
    return pa.table(
        {
            "count": [n.tolist()],
            "total": [x.sum(axis=0).tolist()],
            "total_sq": [(x * x).sum(axis=0).tolist()],
            "minimum": [(np.full(spec.num_dense, np.inf) if empty else x.min(axis=0)).tolist()],
            "maximum": [(np.full(spec.num_dense, -np.inf) if empty else x.max(axis=0)).tolist()],
        }
    )


def reduce_moments(rows: list[dict], spec: FeatureSpec, dates=()) -> FeatureStats:
    """Combine block_moments rows into FeatureStats."""
    stack = {k: np.asarray([r[k] for r in rows], dtype=np.float64) for k in ("count", "total", "total_sq")}
    minimum = np.min([r["minimum"] for r in rows], axis=0)
    maximum = np.max([r["maximum"] for r in rows], axis=0)
    count = stack["count"].sum(axis=0)
    return FeatureStats.from_moments(
        spec.dense_names,
        count,
        stack["total"].sum(axis=0),
        stack["total_sq"].sum(axis=0),
        minimum,
        maximum,
        rows=int(count[0]) if len(count) else 0,
        dates=[str(d) for d in dates],
    )
