"""The report's per-row predictions on disk: merge the models' scores, read them back in bounded chunks.

    OUT/predictions/day=YYYY-MM-DD/bucket-BBBB.parquet
        id, group, [slice], label.<label> (int8), mask.<space> (bool), truth.<column> (float32),
        pred.<target> (the run, float32), [baseline.<target> (the baseline, float32)]

Each model's scores (score.py) stay under OUT/scores/<key>/, keyed by what they depend on, so a
second report over the same checkpoints and days (another gate, the roles swapped) does not rescore.
`merge_scores` joins, per day and group bucket, the run's rows with the baseline's by request id
(sorted; the two id lists must be identical, so both models are scored on exactly the same rows),
one bucket in memory at a time. `PredictionStore` reads columns back chunk by chunk (at most
`chunk_rows` per read), filtered to a target's sample space and a cohort: all days, one day, or
one value of the slice column. `partitions` yields group-complete parts (one bucket over the
chosen days), so per-group metrics never need more than one bucket in memory.

Example::

    >>> files = merge_scores(run_scores, None, out / "predictions", days, [], buckets=1)
    >>> store = PredictionStore(files, chunk_rows=1_000_000)
    >>> for chunk in store.chunks(["pred.ctr", "label.click"], "all", Cohort("2026-11-20", ("2026-11-20",))):
    ...     ...
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Cohort:
    """A set of rows to score: some days, optionally one value of the slice column."""

    name: str
    days: tuple[str, ...]
    slice_value: int | None = None


def _read_bucket(directory: Path) -> pa.Table | None:
    files = sorted(directory.glob("rank-*.parquet"))
    if not files:
        return None
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.sort_by("id")


def merge_scores(
    run_scores: Path,
    baseline_scores: Path | None,
    out_dir: Path,
    days: list[str],
    baseline_targets: list[str],
    buckets: int,
) -> dict[str, list[Path]]:
    """RUN_SCORES/<day>/bucket-*/rank-*.parquet (+ the baseline's) -> OUT/day=<day>/bucket-*.parquet;
    returns {day: [files]}. ValueError naming the day and bucket when the two models saw different
    rows or an id repeats."""
    files: dict[str, list[Path]] = {}
    for day in days:
        files[day] = []
        for b in range(buckets):
            name = f"bucket-{b:04d}"
            run = _read_bucket(run_scores / day / name)
            if run is None:
                continue
            ids = run["id"].to_numpy()
            if ids.size > 1 and np.any(ids[1:] == ids[:-1]):
                repeated = np.unique(ids[1:][ids[1:] == ids[:-1]])[:5].tolist()
                raise ValueError(f"{day} {name}: request ids scored more than once, e.g. {repeated}")
            if baseline_scores is not None:
                base = _read_bucket(baseline_scores / day / name)
                base_ids = base["id"].to_numpy() if base is not None else np.zeros(0, np.int64)
                if not np.array_equal(ids, base_ids):
                    raise ValueError(
                        f"{day} {name}: the run scored {ids.size} rows and the baseline {base_ids.size}, "
                        f"with {np.setxor1d(ids, base_ids).size} ids in only one of them; both must see "
                        "the same rows (same days, same validation outcome)"
                    )
                for target in baseline_targets:
                    run = run.append_column(f"baseline.{target}", base[f"pred.{target}"])
            path = out_dir / f"day={day}" / f"{name}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(run, path, row_group_size=1 << 20)
            files[day].append(path)
    return files


class PredictionStore:
    """Chunked, filtered reads of the merged prediction files (see module doc)."""

    def __init__(self, files: dict[str, list[Path]], chunk_rows: int = 1 << 20) -> None:
        self.files = files
        self.chunk_rows = chunk_rows

    @property
    def days(self) -> tuple[str, ...]:
        return tuple(self.files)

    def columns(self) -> list[str]:
        first = next((f for files in self.files.values() for f in files), None)
        return pq.read_schema(first).names if first else []

    def rows(self, day: str) -> int:
        return sum(pq.read_metadata(f).num_rows for f in self.files[day])

    def _read(self, paths: list[Path], columns: list[str], space: str, cohort: Cohort) -> Iterator[dict]:
        wanted = list(
            dict.fromkeys([*columns, f"mask.{space}", *(["slice"] if cohort.slice_value is not None else [])])
        )
        for path in paths:
            parquet = pq.ParquetFile(path)
            for record_batch in parquet.iter_batches(batch_size=self.chunk_rows, columns=wanted):
                arrays = {c: record_batch.column(c).to_numpy(zero_copy_only=False) for c in wanted}
                keep = arrays[f"mask.{space}"]  # [n] bool: rows in the target's sample space
                if cohort.slice_value is not None:
                    keep = keep & (arrays["slice"] == cohort.slice_value)  # [n] bool
                yield {c: arrays[c][keep] for c in columns}

    def chunks(self, columns: list[str], space: str, cohort: Cohort) -> Iterator[dict[str, np.ndarray]]:
        """{column: [n] array} chunks of the rows in `space` and `cohort`."""
        paths = [p for day in cohort.days for p in self.files.get(day, [])]
        yield from self._read(paths, columns, space, cohort)

    def partitions(self, columns: list[str], space: str, cohort: Cohort) -> Iterator[dict[str, np.ndarray]]:
        """One concatenated {column: array} per group bucket: every group's rows of the cohort together."""
        by_bucket: dict[str, list[Path]] = {}
        for day in cohort.days:
            for path in self.files.get(day, []):
                by_bucket.setdefault(path.name, []).append(path)
        for paths in by_bucket.values():
            parts = list(self._read(paths, columns, space, cohort))
            if parts:
                yield {c: np.concatenate([p[c] for p in parts]) for c in columns}

    def value_counts(self, column: str) -> dict[int, int]:
        """{value: rows} of an integer column over every row (the slice volumes)."""
        counts: dict[int, int] = {}
        for files in self.files.values():
            for path in files:
                for record_batch in pq.ParquetFile(path).iter_batches(
                    batch_size=self.chunk_rows, columns=[column]
                ):
                    values, n = np.unique(record_batch.column(0).to_numpy(), return_counts=True)
                    for v, c in zip(values.tolist(), n.tolist()):
                        counts[v] = counts.get(v, 0) + c
        return counts
