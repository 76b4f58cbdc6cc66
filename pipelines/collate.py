"""Transformed Arrow batch -> mtl_rec.batch.Batch.

The KeyedJaggedTensor is built key-major (all rows of key 0, then key 1, ...) with its per-key
lengths and offsets computed here in numpy, so TorchRec never has to sync or recompute them.

Example::

    >>> layout = BatchLayout.from_table(transformed)   # or BatchLayout(sparse=..., labels=..., ...)
    >>> batch = collate(transformed, layout)
    >>> batch.sparse.keys()[:2], batch.dense.shape
    (['user_id', 'item_id'], torch.Size([4096, 13]))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from mtl_rec.batch import Batch


@dataclass(frozen=True)
class BatchLayout:
    """Which transformed columns go where. multi_hot marks list columns among `sparse`."""

    sparse: tuple[str, ...]
    multi_hot: frozenset[str]
    labels: tuple[str, ...]
    masks: tuple[str, ...]
    meta: tuple[str, ...]

    @classmethod
    def from_table(cls, table: pa.Table) -> BatchLayout:
        names = table.column_names
        strip = lambda prefix: tuple(n[len(prefix) :] for n in names if n.startswith(prefix))  # noqa: E731
        sparse = strip("sparse.")
        multi = frozenset(s for s in sparse if pa.types.is_list(table.schema.field(f"sparse.{s}").type))
        return cls(sparse, multi, strip("label."), strip("mask."), strip("meta."))


def _numpy(column) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.to_numpy(zero_copy_only=False)


def _tensor(column, dtype: torch.dtype | None = None) -> torch.Tensor:
    # Arrow buffers are read-only; torch wants writable memory, and the copy is a few bytes a row.
    array = np.array(_numpy(column), copy=True)
    tensor = torch.from_numpy(array)
    return tensor if dtype is None else tensor.to(dtype)


def collate(table: pa.Table, layout: BatchLayout) -> Batch:
    """Arrow table of B transformed rows -> Batch (see mtl_rec.batch for shapes)."""
    batch_size = table.num_rows
    values, lengths, length_per_key = [], [], []
    for key in layout.sparse:
        column = table[f"sparse.{key}"]
        if key in layout.multi_hot:
            column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            key_lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int32)  # [B]
            values.append(pc.list_flatten(column).to_numpy(zero_copy_only=False))  # [sum(key_lengths)]
        else:
            key_lengths = np.ones(batch_size, dtype=np.int32)  # [B]
            values.append(_numpy(column))  # [B]
        lengths.append(key_lengths)
        length_per_key.append(int(key_lengths.sum()))
    offset_per_key = np.zeros(len(length_per_key) + 1, dtype=np.int64)
    np.cumsum(length_per_key, out=offset_per_key[1:])
    sparse = KeyedJaggedTensor(
        keys=list(layout.sparse),
        values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)),  # [sum lengths]
        lengths=torch.from_numpy(np.concatenate(lengths)),  # [K * B]
        stride=batch_size,
        length_per_key=length_per_key,
        offset_per_key=offset_per_key.tolist(),
    )
    dense_column = table["dense"]
    dense_column = (
        dense_column.combine_chunks() if isinstance(dense_column, pa.ChunkedArray) else dense_column
    )
    width = dense_column.type.list_size
    dense = _tensor(dense_column.flatten()).view(batch_size, width)  # [B * D] -> [B, D]
    return Batch(
        sparse=sparse,
        dense=dense,
        labels={name: _tensor(table[f"label.{name}"]) for name in layout.labels},
        masks={name: _tensor(table[f"mask.{name}"]) for name in layout.masks},
        ids=_tensor(table["id"], torch.int64),
        meta={name: _tensor(table[f"meta.{name}"]) for name in layout.meta},
        positions=_tensor(table["pos"], torch.int64) if "pos" in table.column_names else None,
    )
