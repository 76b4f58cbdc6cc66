"""Data positions: which rows of the logs a run has already trained on, so a resumed run skips them.

Ray Data cannot resume an iterator mid-epoch, so the pipeline tracks positions itself. Every row
read for training carries its position, one int64:

    position = file_index << 40 | row_within_file        (file_index: its place in the inventory)

Each rank records the positions of the rows it trained on; a checkpoint stores the union over ranks
as sorted, merged half-open intervals (a few per file: a rank consumes a block as a prefix, in order),
in `data_position.json` beside the model. When a run resumes (a worker died and Ray Train restarted
the group, or a daily job re-runs its date), the read tasks load that file and drop those rows
before validation, so every row is trained on exactly once by the model that is finally saved.
Rows trained after the last checkpoint are not in it: their updates were lost with the process,
and they are read again.

Example::

    >>> pos = encode_positions(3, np.arange(10, 15))            # rows 10..14 of file 3
    >>> intervals = to_intervals(pos)                            # [[3 << 40 | 10, 3 << 40 | 15]]
    >>> contains(intervals, encode_positions(3, np.array([9, 10, 14, 15])))
    array([False,  True,  True, False])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

POSITION_COLUMN = "_pos"
FILE_SHIFT = 40  # up to 2^40 rows per file, 2^23 files per inventory
POSITION_FILE = "data_position.json"


def encode_positions(file_index: int, rows: np.ndarray) -> np.ndarray:
    """[n] row indices within one file -> [n] int64 positions."""
    return (np.int64(file_index) << np.int64(FILE_SHIFT)) | rows.astype(np.int64, copy=False)


def to_intervals(positions: np.ndarray) -> np.ndarray:
    """[n] int64 positions (any order, no duplicates expected) -> [m, 2] sorted, merged [start, end)."""
    if positions.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    ordered = np.unique(positions.astype(np.int64, copy=False))  # [n'] sorted
    breaks = np.flatnonzero(np.diff(ordered) != 1) + 1  # [m - 1] where a run ends
    starts = ordered[np.r_[0, breaks]]  # [m]
    ends = ordered[np.r_[breaks - 1, ordered.size - 1]] + 1  # [m] exclusive
    return np.stack([starts, ends], axis=1)  # [m, 2]


def merge_intervals(*parts: np.ndarray) -> np.ndarray:
    """Union of [m_i, 2] interval arrays -> [m, 2] sorted and merged (touching intervals join)."""
    stacked = np.concatenate([p.reshape(-1, 2) for p in parts]) if parts else np.zeros((0, 2), np.int64)
    if stacked.shape[0] == 0:
        return stacked.astype(np.int64)
    stacked = stacked[np.argsort(stacked[:, 0], kind="stable")]  # [m, 2] by start
    merged = [stacked[0].tolist()]
    for start, end in stacked[1:].tolist():
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return np.asarray(merged, dtype=np.int64)


def overlap_rows(a: np.ndarray, b: np.ndarray) -> int:
    """Rows in both of two merged interval sets (a double count, where a and b should be disjoint)."""
    total = 0
    for start, end in a.tolist():
        lo = np.maximum(b[:, 0], start)
        hi = np.minimum(b[:, 1], end)
        total += int(np.clip(hi - lo, 0, None).sum())
    return total


def contains(intervals: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """[m, 2] merged intervals, [n] positions -> [n] bool: the position lies in some interval."""
    if intervals.shape[0] == 0:
        return np.zeros(positions.shape, dtype=bool)
    index = np.searchsorted(intervals[:, 0], positions, side="right") - 1  # [n] last start <= pos
    inside = index >= 0
    safe = np.where(inside, index, 0)  # [n]
    return inside & (positions < intervals[safe, 1])


@dataclass
class DataPosition:
    """How far a run is: the epoch it is in and the rows of that epoch already trained on.

    files:    the inventory's paths in order (file_index = place in this list); a resume checks them
    epoch:    0-based epoch the consumed rows belong to
    consumed: [m, 2] merged position intervals trained on in `epoch`, over all ranks
    step, rows: the global step and rows trained so far (all epochs)
    """

    files: list[str]
    epoch: int = 0
    consumed: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    step: int = 0
    rows: int = 0

    @property
    def consumed_rows(self) -> int:
        return int((self.consumed[:, 1] - self.consumed[:, 0]).sum())

    def to_json(self) -> str:
        return json.dumps(
            {
                "files": self.files,
                "epoch": self.epoch,
                "step": self.step,
                "rows": self.rows,
                "consumed_rows": self.consumed_rows,
                "consumed": self.consumed.tolist(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DataPosition:
        data = json.loads(text)
        consumed = np.asarray(data["consumed"], dtype=np.int64).reshape(-1, 2)
        return cls(data["files"], data["epoch"], consumed, data["step"], data["rows"])

    @classmethod
    def load(cls, path: str | Path) -> DataPosition | None:
        """The position saved at `path` (a file), or None where there is none."""
        try:
            return cls.from_json(Path(path).read_text())
        except FileNotFoundError:
            return None

    def check_files(self, files: list[str], where: str) -> None:
        """A resume reads the same files in the same order, or the positions would point elsewhere."""
        tail = lambda paths: [Path(p).parts[-2:] for p in paths]  # noqa: E731  (dt=DAY, part file)
        if tail(files) != tail(self.files):
            raise ValueError(
                f"{where}: the saved data position covers {len(self.files)} files "
                f"({self.files[:3]}...) but this run reads {len(files)} ({files[:3]}...): "
                "a run resumes only on the same dates and files"
            )
