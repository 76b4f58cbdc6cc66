"""Validated log block -> model-ready columns, vectorised (no Python loop per row or per id).

Output columns of `transform_block` (the contract `pipelines.collate` reads):
    id                   int64 request id
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

import hashlib
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtl_rec.config import FeatureSpec, FeatureStats, SampleSpace, TableSpec
from mtl_rec.data_position import POSITION_COLUMN

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def table_salt(table_name: str) -> np.uint64:
    """A stable per-table salt (not Python's hash(), which changes per process)."""
    return np.uint64(int.from_bytes(hashlib.blake2b(table_name.encode(), digest_size=8).digest(), "little"))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a fast, well-mixed 64-bit hash, identical on every machine.
    In place on a fresh uint64 copy: six passes over one buffer instead of a temporary per step."""
    z = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        z += _GOLDEN
        z ^= z >> np.uint64(30)
        z *= _MIX1
        z ^= z >> np.uint64(27)
        z *= _MIX2
        z ^= z >> np.uint64(31)
    return z


def map_ids(raw: np.ndarray, table_name: str, table: TableSpec) -> np.ndarray:
    """Raw non-negative ids [N] -> rows [N] in [0, num_embeddings). Validation has rejected the rest.

    hash: splitmix64(id ^ salt), reduced to the table by Lemire's multiply-shift on the top 32 bits
    ((h >> 32) * n) >> 32, which is uniform like a modulo but avoids a 64-bit division per id.
    """
    if table.id_map == "identity":
        return raw.astype(np.int64, copy=False)
    if table.id_map == "mod":
        return raw.astype(np.int64, copy=False) % table.num_embeddings
    if table.num_embeddings >= 1 << 32:
        raise ValueError(f"hashed table {table_name!r} must have fewer than 2**32 rows")
    hashed = splitmix64(
        raw.view(np.uint64) ^ table_salt(table_name)
        if raw.dtype == np.int64
        else raw.astype(np.uint64) ^ table_salt(table_name)
    )
    hashed >>= np.uint64(32)
    hashed *= np.uint64(table.num_embeddings)
    hashed >>= np.uint64(32)
    return hashed.view(np.int64)


def _flat(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def dense_matrix(
    table: pa.Table, spec: FeatureSpec, stats: FeatureStats | None, scale: bool = True
) -> np.ndarray:
    """[B, D] float32: each dense column transformed (log1p) and, with `scale`, scaled by the train stats."""
    out = np.empty((table.num_rows, spec.num_dense), dtype=np.float32)
    for j, feature in enumerate(spec.dense):
        x = _flat(table[feature.column]).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # [B]
        if feature.transform == "log1p":
            x = np.log1p(x)
        if scale and feature.scaling != "none":
            s = stats.features[feature.name]
            if feature.scaling == "standard":
                x = (x - s.mean) / (s.std if s.std > 0 else 1.0)
            else:
                span = s.maximum - s.minimum
                x = (x - s.minimum) / (span if span > 0 else 1.0)
        out[:, j] = x
    return out


def transform_block(
    table: pa.Table, spec: FeatureSpec, stats: FeatureStats, spaces: Mapping[str, SampleSpace]
) -> pa.Table:
    """See module doc. `table` must have passed validation (no nulls, ids >= 0, finite dense)."""
    columns: dict[str, pa.Array] = {"id": _flat(table[spec.id_column]).cast(pa.int64())}
    for feature in spec.sparse:
        column = _flat(table[feature.column])
        table_spec = spec.tables[feature.table]
        if feature.multi_hot:
            values = pc.list_flatten(column).to_numpy(zero_copy_only=False)  # [sum of lengths]
            offsets = _list_offsets(column)  # [B + 1]
            mapped = pa.array(map_ids(values, feature.table, table_spec), pa.int64())
            columns[f"sparse.{feature.name}"] = pa.ListArray.from_arrays(offsets, mapped)
        else:
            raw = column.to_numpy(zero_copy_only=False)  # [B]
            columns[f"sparse.{feature.name}"] = pa.array(map_ids(raw, feature.table, table_spec), pa.int64())

    dense = dense_matrix(table, spec, stats)  # [B, D]
    columns["dense"] = pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), spec.num_dense)

    labels = {}
    for label in spec.labels:
        labels[label] = (
            _flat(table[label]).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        )  # [B]
        columns[f"label.{label}"] = pa.array(labels[label])
    for name, space in spaces.items():
        columns[f"mask.{name}"] = pa.array(space.mask(labels))  # [B] bool
    for column in (spec.group_key, spec.time_column, *spec.meta_columns):
        columns[f"meta.{column}"] = _flat(table[column])
    for column in (c for c in table.column_names if c.startswith(spec.truth_prefix)):
        columns[f"meta.{column}"] = _flat(table[column]).cast(pa.float32())
    if POSITION_COLUMN in table.column_names:  # where each row sits in the logs (mtl_rec.data_position)
        columns["pos"] = _flat(table[POSITION_COLUMN])
    return pa.table(columns)


def _list_offsets(column: pa.Array) -> pa.Array:
    """[B + 1] int32 offsets starting at 0, also for a sliced ListArray."""
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)  # [B]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.array(offsets)


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
