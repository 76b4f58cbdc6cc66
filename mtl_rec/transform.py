"""The feature contract between training and serving: row checks, id maps, dense scaling.

One implementation, used by the training pipeline (pipelines.validate / pipelines.transform, inside
Ray Data tasks) and by serving (mtl_rec.serve.Predictor on raw rows), so the two cannot drift: an id
hashes to the same row and a dense value scales the same way in both. numpy and pyarrow only (no
torch): Ray Data's map tasks import this module.

    raw rows (Arrow)  -> feature_checks   (reason, [B] bool) per check: null ids, negative ids, ids
                                           beyond an identity table, NaN / inf / float32-overflowing
                                           dense values, negative log1p inputs, unknown domains
                      -> model_inputs      ModelInputs: single-hot rows [B, S] int64, multi-hot
                                           (values [N_k], offsets [B + 1]) per feature, dense [B, D]

Example::

    >>> first, reasons = first_failures(feature_checks(table, spec), table.num_rows)
    >>> describe_failures("request", first, reasons)      # where any row fails
    'request: 1 bad of 3 rows (user_id: negative id: 1 rows)'
    >>> inputs = model_inputs(table, spec, stats)
    >>> inputs.single.shape, inputs.dense.shape
    ((3, 20), (3, 13))
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mtl_rec.config import FeatureSpec, FeatureStats, TableSpec

FLOAT32_MAX = float(np.finfo(np.float32).max)
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


def cross_ids(columns: list[np.ndarray]) -> np.ndarray:
    """[B] int64 ids of crossed columns (each [B] non-negative int): one id per tuple of values, in
    [0, 2**63), so it passes for any raw id. A chained splitmix64, order-sensitive ((a, b) and (b, a)
    differ); the table's id map then hashes it into its rows like any other id."""
    combined = splitmix64(columns[0].astype(np.int64, copy=False).view(np.uint64))
    for column in columns[1:]:
        combined = splitmix64(combined ^ column.astype(np.int64, copy=False).view(np.uint64))
    combined >>= np.uint64(1)  # below 2**63: a non-negative int64
    return combined.view(np.int64)


def bucketed_values(values: np.ndarray) -> np.ndarray:
    """[B] numbers -> [B] float64, as bucket ids compare them: a float is first rounded to float32,
    as the dense path reads it, so a value logged as float32 and the same value sent as a float64
    (JSON) fall in the same bucket; an integer is compared exactly (float64 is exact below 2**53).
    Cut points are chosen on these values too (jobs.datasets.adult.quantile_boundaries)."""
    if np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float32, copy=False)  # [B]: one rounding, whatever the source
    return values.astype(np.float64)  # [B]


def bucket_ids(values: np.ndarray, boundaries: tuple[float, ...]) -> np.ndarray:
    """[B] numbers (no NaN) -> [B] int64 bucket ids in [0, len(boundaries)]: how many cut points are
    <= each value (compared as `bucketed_values`)."""
    cuts = np.asarray(boundaries, dtype=np.float64)  # [n]
    return np.searchsorted(cuts, bucketed_values(values), side="right").astype(np.int64)


def single_ids(table: pa.Table, feature) -> np.ndarray:
    """[B] raw ids of a single-hot feature: its column, the cross of its columns (cross_ids), or its
    numeric column's buckets (bucket_ids)."""
    if feature.cross:
        return cross_ids([flat(table[column]).to_numpy(zero_copy_only=False) for column in feature.cross])
    values = flat(table[feature.column]).to_numpy(zero_copy_only=False)
    return bucket_ids(values, feature.boundaries) if feature.boundaries else values


def flat(column) -> pa.Array:
    """One Arrow array from a column that may be chunked."""
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def filled(array: pa.Array | pa.ChunkedArray, fill) -> np.ndarray:
    """A numpy view of an Arrow column with nulls replaced by `fill` (a sentinel the checks reject)."""
    array = flat(array)
    if array.null_count:
        array = pc.fill_null(array, fill)
    return array.to_numpy(zero_copy_only=False)


def null_mask(array) -> np.ndarray | bool:
    """[B] bool: null (or NaN) entries. Plain False, which broadcasts, when Arrow counts no nulls and
    the type cannot hold NaN: most columns, and the scan is skipped."""
    if array.null_count == 0 and not pa.types.is_floating(array.type):
        return False
    return filled(pc.is_null(array, nan_is_null=True), False)


def _id_checks(name: str, ids: np.ndarray, nulls: np.ndarray, limit: int | None):
    yield f"{name}: null id", nulls
    yield f"{name}: negative id", ids < 0
    if limit is not None:
        yield f"{name}: id >= num_embeddings ({limit}) of an identity-mapped table", ids >= limit


def feature_checks(table: pa.Table, spec: FeatureSpec):
    """Yield (reason, [B] bool or False) for every model input of every row, in a fixed order."""
    n = table.num_rows
    for feature in spec.sparse:
        table_spec = spec.tables[feature.table]
        limit = table_spec.num_embeddings if table_spec.id_map == "identity" else None
        for crossed in feature.cross:  # each crossed column's ids, as those of a hashed feature
            column = flat(table[crossed])
            yield from _id_checks(crossed, filled(column, 0), null_mask(column), None)
        if feature.cross:
            continue
        column = flat(table[feature.column])
        if feature.boundaries:  # a number: every finite or infinite value has a bucket
            yield f"{feature.column}: null or NaN (bucketized feature {feature.name})", null_mask(column)
            continue
        if not feature.multi_hot:
            yield from _id_checks(feature.column, filled(column, 0), null_mask(column), limit)
            continue
        yield f"{feature.column}: null list", null_mask(column)
        values = pc.list_flatten(column)
        parents = filled(pc.list_parent_indices(column), 0)
        for reason, bad_values in _id_checks(feature.column, filled(values, 0), null_mask(values), limit):
            bad_rows = np.zeros(n, dtype=bool)
            if bad_values is not False:
                bad_rows[parents[bad_values]] = True  # a row is bad when any of its ids is
            yield reason.replace(" id", " id in list", 1), bad_rows
    for feature in spec.dense:
        column = flat(table[feature.column])
        values = filled(column, 0.0).astype(np.float64, copy=False)
        yield f"{feature.column}: null, NaN or inf", null_mask(column) | ~np.isfinite(values)
        # The tables and the scaling run in float32: a finite float64 beyond its range becomes inf.
        yield f"{feature.column}: |value| beyond float32 range (3.4e38)", np.abs(values) > FLOAT32_MAX
        if feature.transform == "log1p":
            yield f"{feature.column}: negative value (log1p transform needs >= 0)", values < 0
    if spec.domain_column:
        domains = filled(table[spec.domain_column], -1)  # [B]; an integer column, nulls as -1
        bad = (domains < 0) | (domains >= spec.num_domains)  # [B] bool
        yield f"{spec.domain_column}: domain null or not in [0, {spec.num_domains})", bad


def first_failures(checks: Iterable[tuple[str, np.ndarray | bool]], n: int) -> tuple[np.ndarray, list[str]]:
    """([n] int16 index into reasons of each row's FIRST failed check, -1 for good rows; reasons).
    One reason a row, so the counts per reason add up to the number of bad rows."""
    first = np.full(n, -1, dtype=np.int16)
    reasons = []
    for reason, bad in checks:
        if bad is not False:
            first[(first < 0) & bad] = len(reasons)
        reasons.append(reason)
    return first, reasons


def describe_failures(source: str, first: np.ndarray, reasons: list[str]) -> str:
    """'SOURCE: N bad of M rows (reason: k rows; ...)'."""
    codes, counts = np.unique(first[first >= 0], return_counts=True)
    detail = "; ".join(f"{reasons[c]}: {k} rows" for c, k in zip(codes, counts))
    return f"{source}: {counts.sum()} bad of {len(first)} rows ({detail})"


def dense_matrix(
    table: pa.Table, spec: FeatureSpec, stats: FeatureStats | None, scale: bool = True
) -> np.ndarray:
    """[B, D] float32: each dense column transformed (log1p) and, with `scale`, scaled by the train stats."""
    out = np.empty((table.num_rows, spec.num_dense), dtype=np.float32)
    for j, feature in enumerate(spec.dense):
        x = flat(table[feature.column]).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # [B]
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


def list_offsets(column: pa.Array) -> np.ndarray:
    """[B + 1] int32 offsets starting at 0, also for a sliced ListArray."""
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)  # [B]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def mapped_feature(table: pa.Table, spec: FeatureSpec, feature) -> tuple[np.ndarray, np.ndarray | None]:
    """A sparse feature's table rows: ([B] int64, None) single-hot, or (values [N] int64, offsets
    [B + 1] int32) multi-hot."""
    table_spec = spec.tables[feature.table]
    if not feature.multi_hot:
        return map_ids(single_ids(table, feature), feature.table, table_spec), None
    column = flat(table[feature.column])
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)  # [sum of lengths]
    return map_ids(values, feature.table, table_spec), list_offsets(column)


@dataclass(frozen=True)
class ModelInputs:
    """What the exported model reads (mtl_rec.export.ServingModel.forward), as numpy.

    single: [B, S] int64 table rows of the single-hot features, spec order
    multi:  per multi-hot feature in spec order, (values [N_k] int64, offsets [B + 1] int64)
    dense:  [B, D] float32, transformed and scaled
    domain: [B] int64 each row's domain id (spec.domain_column), or None
    """

    single: np.ndarray
    multi: tuple[tuple[np.ndarray, np.ndarray], ...]
    dense: np.ndarray
    domain: np.ndarray | None = None  # [B] int64 domain ids, where the spec has a domain_column


def model_inputs(table: pa.Table, spec: FeatureSpec, stats: FeatureStats) -> ModelInputs:
    """Checked raw rows (feature_checks found nothing) -> ModelInputs."""
    single, multi = [], []
    for feature in spec.sparse:
        values, offsets = mapped_feature(table, spec, feature)
        if offsets is None:
            single.append(values)  # [B]
        else:
            multi.append((values, offsets.astype(np.int64)))
    rows = np.stack(single, axis=1) if single else np.zeros((table.num_rows, 0), np.int64)  # [B, S]
    domain = filled(table[spec.domain_column], 0).astype(np.int64) if spec.domain_column else None  # [B]
    return ModelInputs(rows, tuple(multi), dense_matrix(table, spec, stats), domain)
