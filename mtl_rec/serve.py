"""Predictor: raw rows, as they appear in the logs, -> per-task probabilities, from an export.

    rows (Arrow table / record batch, list of dicts, dict of columns)
      -> the model's columns: present, of the spec's kind (integer ids, numeric dense values)
      -> mtl_rec.transform.feature_checks: the row checks training runs (null / negative ids, ids
         beyond an identity table, NaN / inf / float32-overflowing dense values, negative log1p
         inputs); any bad row is an InvalidRowsError naming the column, the reason and the counts
      -> mtl_rec.transform.model_inputs: the SAME id maps, hashing and scaling as training, with the
         run's saved spec and statistics
      -> the exported program (mtl_rec.export) -> {target: [B] float32}

A hashed table has a row for every id: an id never seen in training is scored like training would
have scored it (its hashed row). The export's files are checked against the manifest's sha256 when
loaded, so a torn copy or a mixed-up spec is refused, not scored.

Example::

    >>> predictor = Predictor("models/esmm")
    >>> predictor.targets
    ('ctr', 'ctcvr', 'cvr')
    >>> predictor.predict([{"user_id": 7, "item_id": 42, ..., "price": 19.9}])
    {'ctr': array([0.031], dtype=float32), 'ctcvr': array([0.0012], ...), 'cvr': array([0.039], ...)}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch._inductor

from mtl_rec.config.features import SPEC_FILE, load_feature_spec
from mtl_rec.config.stats import FeatureStats
from mtl_rec.export import COMPILED, EXPORT_FORMAT, MANIFEST, MIN_ROWS, PROGRAM, STATS_FILE, sha256_file
from mtl_rec.transform import describe_failures, feature_checks, first_failures, model_inputs


class InvalidRowsError(ValueError):
    """Rows that cannot be scored; the message names the column, the reason and the row counts."""


class ExportError(RuntimeError):
    """The export directory is incomplete, altered, or of another format."""


def _kind_problem(column: str, array: pa.Array, multi_hot: bool, dense: bool) -> str | None:
    t = array.type
    if pa.types.is_null(t):  # every value null: feature_checks names it per row
        return None
    if dense:
        ok = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
        return None if ok else f"{column}: expected numbers, got {t}"
    if multi_hot:
        ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_integer(t.value_type) or pa.types.is_null(t.value_type)
        )
        return None if ok else f"{column}: expected a list of integer ids, got {t}"
    return None if pa.types.is_integer(t) else f"{column}: expected integer ids, got {t}"


# Rows per call of the program (a short tail joins the call before it): the reference MMoE's
# activations for 4,096 rows (~4 x 4 MiB) stay in the CPU's caches; at 65,536 rows a call the
# float32 AOTInductor program ran 86k rows/s against 148k at 4,096 (2 cores; docs/benchmarks.md,
# serving, session 13).
PROGRAM_ROWS = 4096


def program_slices(rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges covering `rows` >= MIN_ROWS in order: PROGRAM_ROWS each, the last
    shorter, or up to MIN_ROWS - 1 longer where a tail shorter than the program's MIN_ROWS joins it."""
    starts = list(range(0, rows, PROGRAM_ROWS))
    if len(starts) > 1 and rows - starts[-1] < MIN_ROWS:
        starts.pop()
    return list(zip(starts, [*starts[1:], rows]))


class Predictor:
    """An export directory (python -m jobs.export) loaded for scoring; see module doc.

    model_dir: the export's directory
    threads:   torch intra-op threads (None: leave torch's setting)
    compiled:  run model.aoti.pt2 where the export has it (the same program, compiled); False: the
               ExportedProgram in model.pt2 (the `program` used either way is in `self.runs`)
    """

    def __init__(self, model_dir: str | Path, threads: int | None = None, compiled: bool = True) -> None:
        self.model_dir = Path(model_dir)
        manifest_path = self.model_dir / MANIFEST
        if not manifest_path.is_file():
            raise ExportError(f"{self.model_dir}: no {MANIFEST}; not a complete export (see jobs.export)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != EXPORT_FORMAT:
            raise ExportError(
                f"{manifest_path}: export format {self.manifest.get('format')}, "
                f"this version reads {EXPORT_FORMAT}"
            )
        for name, digest in self.manifest["files"].items():
            path = self.model_dir / name
            if not path.is_file() or sha256_file(path) != digest:
                raise ExportError(f"{path}: missing or changed since export (sha256 differs from {MANIFEST})")
        self.spec = load_feature_spec(self.model_dir / SPEC_FILE)
        self.stats = FeatureStats.load(self.model_dir / STATS_FILE)
        self.targets = tuple(t["name"] for t in self.manifest["targets"])
        self.columns = tuple(self.manifest["inputs"]["columns"])
        if threads:
            torch.set_num_threads(threads)
        if compiled and COMPILED in self.manifest["files"]:
            self.program, self.runs = (
                torch._inductor.aoti_load_package(str(self.model_dir / COMPILED)),
                COMPILED,
            )
        else:
            self.program, self.runs = torch.export.load(str(self.model_dir / PROGRAM)).module(), PROGRAM
        self._dense = self.spec.numeric_columns()  # dense and bucketized values: numbers, not ids
        self._multi = {f.column for f in self.spec.sparse if f.multi_hot}

    def as_table(self, rows, source: str = "request") -> pa.Table:
        """The model's columns of `rows` as an Arrow table; InvalidRowsError where one is missing or
        of the wrong kind. Other columns (labels, request ids) are ignored."""
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if isinstance(rows, pa.Table):
            n, names = rows.num_rows, set(rows.column_names)
            get = lambda c: rows[c].combine_chunks()  # noqa: E731
        elif isinstance(rows, Mapping):  # {column: [values]}
            lengths = {len(v) for v in rows.values()}
            if len(lengths) > 1:
                raise InvalidRowsError(f"{source}: columns of different lengths {sorted(lengths)}")
            n, names = (lengths.pop() if lengths else 0), set(rows)
            get = lambda c: pa.array(rows[c])  # noqa: E731
        elif isinstance(rows, Sequence) and all(isinstance(r, Mapping) for r in rows):
            n = len(rows)
            names = set.intersection(*(set(r) for r in rows)) if rows else set(self.columns)
            get = lambda c: pa.array([r[c] for r in rows])  # noqa: E731
        else:
            raise InvalidRowsError(
                f"{source}: rows must be an Arrow table, a list of objects or an object of columns, "
                f"got {type(rows).__name__}"
            )
        missing = [c for c in self.columns if c not in names]
        if missing:
            raise InvalidRowsError(f"{source}: missing field(s) {', '.join(missing)} ({n} rows)")
        arrays = {}
        for column in self.columns:
            try:
                arrays[column] = get(column)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
                raise InvalidRowsError(
                    f"{source}: {column}: values of mixed or unusable types ({e}) ({n} rows)"
                ) from None
            problem = _kind_problem(column, arrays[column], column in self._multi, column in self._dense)
            if problem:
                raise InvalidRowsError(f"{source}: {problem} ({n} rows)")
            arrays[column] = self._canonical(column, arrays[column], source)
        return pa.table(arrays)

    def _canonical(self, column: str, array: pa.Array, source: str) -> pa.Array:
        """One type per column (int64 ids, list<int64>, float64 values), whatever the rows came as, so
        tables of different requests concatenate. float32 -> float64 -> float32 is exact, and so is
        an integer below 2**53: the values the model sees do not change."""
        target = pa.float64() if column in self._dense else pa.int64()
        if column in self._multi:
            target = pa.list_(pa.int64())
        try:
            return array.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise InvalidRowsError(f"{source}: {column}: not representable as {target}: {e}") from None

    def bad_rows(self, table: pa.Table) -> tuple[np.ndarray, list[str]]:
        """([B] int16 index of each row's first failed check, -1 for good rows; reasons)."""
        return first_failures(feature_checks(table, self.spec), table.num_rows)

    def check(self, rows, source: str = "request") -> pa.Table:
        """as_table, then every row checked; InvalidRowsError naming column, reason and counts."""
        table = self.as_table(rows, source)
        if table.num_rows:
            first, reasons = self.bad_rows(table)
            if (first >= 0).any():
                raise InvalidRowsError(describe_failures(source, first, reasons))
        return table

    def _run_program(self, inputs, start: int, stop: int) -> np.ndarray:
        """The program on rows [start, stop) of `inputs` (mtl_rec.transform.ModelInputs) -> [rows, T]."""
        rest = []
        for values, offsets in inputs.multi:  # values_k [N_k], offsets_k [B + 1] -> this slice's
            first, last = offsets[start], offsets[stop]
            rest += [
                torch.from_numpy(values[first:last]),
                torch.from_numpy(offsets[start : stop + 1] - first),
            ]
        if self.manifest["inputs"].get("domain"):  # a program that reads each row's domain: [rows] ids first
            rest.insert(0, torch.from_numpy(inputs.domain[start:stop]))
        single, dense = inputs.single[start:stop], inputs.dense[start:stop]  # [rows, S], [rows, D]
        return self.program(torch.from_numpy(single), torch.from_numpy(dense), *rest).numpy()

    def predict(self, rows, source: str = "request") -> dict[str, np.ndarray]:
        """rows -> {target: [B] float32 probability}, in the manifest's target order."""
        return self.predict_checked(self.check(rows, source))

    def predict_checked(self, table: pa.Table) -> dict[str, np.ndarray]:
        """predict for a table whose rows passed the checks (jobs.predict sets bad rows aside first)."""
        rows = table.num_rows
        if rows == 0:
            return {name: np.zeros(0, np.float32) for name in self.targets}
        if rows < MIN_ROWS:  # the program's smallest batch: the row again, its copy's scores dropped
            table = pa.concat_tables([table] * MIN_ROWS)
        inputs = model_inputs(table, self.spec, self.stats)
        with torch.no_grad():
            parts = [self._run_program(inputs, a, b) for a, b in program_slices(table.num_rows)]
        probabilities = np.concatenate(parts)[:rows]  # [B, T]
        return {name: probabilities[:, j] for j, name in enumerate(self.targets)}
