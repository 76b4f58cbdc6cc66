"""A deterministic held-out split of rows by a hash of their key (the request id by default).

The daily job trains a day on the rows outside the hold-out and scores the candidate and the
promoted model on the rows inside it: the same rows on every run, on every machine, whatever the
file layout, and never a row in both parts. Applied in the read task, before validation and before
Ray Train splits the dataset, so every rank sees the same stream shape (DESIGN pitfall 3).

    in_holdout(key) = splitmix64(key ^ SALT) < fraction * 2^64

Example::

    >>> split = HoldoutSplit(fraction=0.1, part="holdout")
    >>> split.keep(pa.table({"request_id": np.arange(100_000)})).mean()     # about 0.1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from mtl_rec.transform import splitmix64

SALT = np.uint64(0x5EED_0F_401D_0075)
# The validation hold-out inside the training rows (train.validation_fraction): another salt, so it
# is independent of the daily hold-out and the two can be combined.
VALIDATION_SALT = 0x7A11_DA7E_5EED_0001


@dataclass(frozen=True)
class HoldoutSplit:
    """fraction: share of rows held out, in (0, 1); part: which side this dataset keeps;
    column: the key hashed (an integer column)."""

    fraction: float
    part: Literal["train", "holdout"]
    column: str = "request_id"
    salt: int = int(SALT)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"hold-out fraction must be in (0, 1), got {self.fraction}")
        if self.part not in ("train", "holdout"):
            raise ValueError(f"split part must be 'train' or 'holdout', got {self.part!r}")

    def keep(self, table: pa.Table) -> np.ndarray:
        """[n] bool: the rows of `table` on this split's side. A null key has no hash: its row goes to
        the train side, always (where validation sets it aside as a bad row and counts it), so it is
        on exactly one side, the same one on every machine."""
        column = table[self.column]
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        nulls = column.is_null().to_numpy(zero_copy_only=False)  # [n] bool
        keys = column.fill_null(0).to_numpy().astype(np.uint64)  # [n] (two's complement for negatives)
        hashed = splitmix64(keys ^ np.uint64(self.salt))  # [n] uint64
        threshold = np.uint64(min(int(self.fraction * 2.0**64), 2**64 - 1))
        held_out = (hashed < threshold) & ~nulls  # [n] bool
        return held_out if self.part == "holdout" else ~held_out


@dataclass(frozen=True)
class AllOf:
    """The rows every one of `splits` keeps (e.g. the daily job's training side AND the validation
    hold-out inside it). Example: ``AllOf((HoldoutSplit(0.1, "train"), validation_split))``."""

    splits: tuple[HoldoutSplit, ...]

    def keep(self, table: pa.Table) -> np.ndarray:
        keep = np.ones(table.num_rows, dtype=bool)  # [n]
        for split in self.splits:
            keep &= split.keep(table)
        return keep


def combine(*splits: HoldoutSplit | None) -> HoldoutSplit | AllOf | None:
    """One split object for read_logs from optional parts: None, one split, or AllOf them."""
    present = tuple(s for s in splits if s is not None)
    return None if not present else present[0] if len(present) == 1 else AllOf(present)
