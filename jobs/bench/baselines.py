"""The baselines a user tries first, on exactly the rows and sample spaces mtl-rec scores.

    raw Parquet (the same inventory, validated by pipelines.validate)
      -> one matrix of the raw columns (dense values, single-hot ids, multi-hot list lengths)
      -> per target (task label over its sample space): fit on the training rows in that space,
         score the evaluation rows in that space
      -> {target: {"auc", "oracle_auc", "pred_over_obs", "ece", "rows"}}

hist_gbdt: scikit-learn's HistGradientBoostingClassifier on the raw columns, default settings (ids
           are numbers to it, as they are to a user who points it at the table).
           A crossed feature (the spec's `cross`) is left out: its columns are there already;
           a bucketized one (`boundaries`) is its bucket index, ordered as the values are.
logreg:    L2 logistic regression on one-hot ids, crossed and bucketized features' ids too (Wide &
           Deep's crossed columns; ids seen fewer than 5 times on the training days
           share one "rare" column, so unseen ids have a column too) and standardised dense values;
           its inverse strength C is chosen per target on a seeded 10% hold-out of the training
           rows (log loss over LOGREG_C), then the model is refit on every training row: the
           tuning a user does first. sklearn's default C=1 is ~20x too weak for 200k rows of
           one-hot ids and cost 0.027 ctr AUC on the generated logs.

Example::

    >>> frames = load_frames(logs, "2026-11-18..2026-11-19", "2026-11-20", spec)
    >>> hist_gbdt(frames, targets)["ctr"]["auc"]
    0.7237
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse as sp

from jobs.bench.quality_report import record
from mtl_rec.config import FeatureSpec, SampleSpace
from mtl_rec.evaluation import exact_auc
from mtl_rec.metrics import EvalTarget, calibration_summary
from mtl_rec.transform import dense_matrix, single_ids
from pipelines.read import inspect_logs, parse_dates, read_file_blocks
from pipelines.validate import validate_block

RARE_ID_COUNT = 5  # logreg: ids seen fewer times than this on the training days share one column
LOGREG_C = (0.01, 0.03, 0.1, 0.3, 1.0)  # logreg: the inverse L2 strengths tried on the hold-out
HOLDOUT_FRACTION = 0.1


@dataclass
class Frame:
    """The raw columns of some days: [N] arrays by column name, list columns as their lengths."""

    columns: dict[str, np.ndarray]
    dense: np.ndarray  # [N, D] dense features after their transform (log1p), unscaled
    rows: int


@dataclass
class Frames:
    train: Frame
    eval: Frame
    seconds_to_load: float


def _frame(logs: str, dates: str, spec: FeatureSpec) -> Frame:
    inventory = inspect_logs(logs, parse_dates(dates), spec)
    tables = [
        validate_block(table, spec, "error", None, path)  # bad rows stop the baseline, as they stop training
        for path in inventory.paths
        for table in read_file_blocks(path, inventory.columns, 1 << 20)
    ]
    table = pa.concat_tables(tables)
    columns: dict[str, np.ndarray] = {}
    for feature in spec.sparse:
        if feature.multi_hot:
            column = table[feature.column].combine_chunks()
            columns[feature.name] = (
                pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.float64)
            )
        else:  # a cross feature's ids too: the baselines see every feature the models see
            columns[feature.name] = single_ids(table, feature).astype(np.int64)
    for name in (*spec.labels, *(c for c in table.column_names if c.startswith(spec.truth_prefix))):
        columns[name] = table[name].combine_chunks().to_numpy(zero_copy_only=False)
    dense = dense_matrix(table, spec, None, scale=False).astype(np.float64)  # [N, D]
    return Frame(columns, dense, table.num_rows)


def load_frames(logs: str, train_dates: str, eval_dates: str, spec: FeatureSpec) -> Frames:
    start = time.perf_counter()
    train, evaluation = _frame(logs, train_dates, spec), _frame(logs, eval_dates, spec)
    return Frames(train, evaluation, time.perf_counter() - start)


def _in_space(frame: Frame, target: EvalTarget) -> np.ndarray:
    space = SampleSpace.parse(target.space)
    if not space.conditions:
        return np.ones(frame.rows, dtype=bool)
    return space.mask({label: frame.columns[label] for label, _, _ in space.conditions})  # [N] bool


def score(target: EvalTarget, frame: Frame, in_space: np.ndarray, probs: np.ndarray) -> dict:
    """A baseline's metrics on one target's evaluation rows: [n] probabilities of the in-space rows."""
    labels = frame.columns[target.label][in_space].astype(np.float64)  # [n]
    truth = frame.columns.get(target.oracle_column) if target.oracle_column else None
    return {
        "auc": exact_auc(labels, probs),
        "oracle_auc": exact_auc(labels, truth[in_space]) if truth is not None else None,
        **calibration_summary(labels, probs),  # pred_over_obs, ece: the training metrics' own
        "rows": int(in_space.sum()),
    }


def _gbdt_matrix(frame: Frame, spec: FeatureSpec) -> np.ndarray:
    # The raw columns only: a crossed id is a hash, meaningless as a number to split on, and the
    # trees split on its columns themselves (the logistic regression one-hot encodes it instead).
    ids = [frame.columns[f.name].astype(np.float64) for f in spec.sparse if not f.cross]
    return np.column_stack([*ids, frame.dense])  # [N, K + D]


def hist_gbdt(frames: Frames, targets: Sequence[EvalTarget], spec: FeatureSpec, seed: int = 0) -> dict:
    """{target: metrics, "_seconds": fit + predict seconds, "_rows": training rows} for HistGBDT."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x_train, x_eval = _gbdt_matrix(frames.train, spec), _gbdt_matrix(frames.eval, spec)
    fit = lambda x, y: HistGradientBoostingClassifier(random_state=seed).fit(x, y)  # noqa: E731
    return _fit_each(frames, targets, x_train, x_eval, fit)


def _one_hot(train: Frame, evaluation: Frame, spec: FeatureSpec) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """One-hot single-hot ids (rare and unseen ids share a column per feature) + standardised dense."""
    blocks_train, blocks_eval, width = [], [], 0
    for feature in (f for f in spec.sparse if not f.multi_hot):
        values, counts = np.unique(train.columns[feature.name], return_counts=True)
        kept = values[counts >= RARE_ID_COUNT]  # sorted
        for frame, blocks in ((train, blocks_train), (evaluation, blocks_eval)):
            ids = frame.columns[feature.name]
            where = np.searchsorted(kept, ids)
            found = (where < len(kept)) & (kept[np.minimum(where, len(kept) - 1)] == ids)
            column = np.where(found, where, len(kept)) + width  # [N]: kept ids, then one "rare" column
            blocks.append(column)
        width += len(kept) + 1
    mean, std = train.dense.mean(axis=0), train.dense.std(axis=0) + 1e-12  # [D]

    def assemble(frame: Frame, blocks: list[np.ndarray]) -> sp.csr_matrix:
        rows = np.repeat(np.arange(frame.rows), len(blocks))
        ones = sp.csr_matrix(
            (np.ones(len(rows)), (rows, np.column_stack(blocks).ravel())), shape=(frame.rows, width)
        )  # [N, width]
        dense = sp.csr_matrix((frame.dense - mean) / std)  # [N, D]
        return sp.hstack([ones, dense], format="csr")  # [N, width + D]

    return assemble(train, blocks_train), assemble(evaluation, blocks_eval)


def logreg(frames: Frames, targets: Sequence[EvalTarget], spec: FeatureSpec, seed: int = 0) -> dict:
    """{target: metrics, ...} for L2 logistic regression on one-hot ids + standardised dense, C tuned."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_eval = _one_hot(frames.train, frames.eval, spec)

    def tuned(x: sp.csr_matrix, y: np.ndarray) -> LogisticRegression:
        holdout = np.random.default_rng(seed).random(len(y)) < HOLDOUT_FRACTION  # [n] bool
        losses = []
        for c in LOGREG_C:
            model = LogisticRegression(C=c, max_iter=300).fit(x[~holdout], y[~holdout])
            p = np.clip(model.predict_proba(x[holdout])[:, 1], 1e-7, 1 - 1e-7)  # [n_holdout]
            losses.append(-np.mean(y[holdout] * np.log(p) + (1 - y[holdout]) * np.log1p(-p)))
        best = LOGREG_C[int(np.argmin(losses))]
        return LogisticRegression(C=best, max_iter=300).fit(x, y)

    return _fit_each(frames, targets, x_train, x_eval, tuned)


def _fit_each(frames: Frames, targets, x_train, x_eval, fit) -> dict:
    """fit(x [n, F], y [n]) -> a fitted classifier, per target over its sample space."""
    results: dict = {}
    start = time.perf_counter()
    trained_rows = 0
    for target in targets:
        train_space, eval_space = _in_space(frames.train, target), _in_space(frames.eval, target)
        y = frames.train.columns[target.label][train_space].astype(np.int64)  # [n_train]
        model = fit(x_train[train_space], y)
        probs = model.predict_proba(x_eval[eval_space])[:, 1]  # [n_eval]
        results[target.name] = score(target, frames.eval, eval_space, probs)
        trained_rows += int(train_space.sum())
    results["_seconds"] = time.perf_counter() - start
    results["_rows"] = trained_rows
    return results


def sklearn_runs(
    dataset: str, frames: Frames, targets: Sequence[EvalTarget], spec: FeatureSpec
) -> list[dict]:
    """hist_gbdt and logreg on `frames`, one jobs.bench.quality record each (library "sklearn")."""
    runs = []
    for model, fit in (("hist_gbdt", hist_gbdt), ("logreg", logreg)):
        tasks = fit(frames, targets, spec)
        runs.append(record(dataset, "sklearn", model, 1, tasks, tasks["_rows"] / tasks["_seconds"]))
    return runs
