"""Metrics of the report from the merged predictions: per target, per cohort, per model, and deltas.

For each evaluation target (mtl_rec.metrics.eval_targets: every task over its own sample space with
its entire-space prediction, plus each chained task's conditional prediction over its parent's
positive rows) and each cohort (all days, each day, each of the top-k values of the slice column):

    rows, positives; per model: exact AUC, GAUC (mean, impression-weighted, positive-weighted;
    single-class groups skipped and counted), logloss, normalised entropy, calibration (ratio, ECE,
    reliability bins), gap to the oracle AUC; the oracle AUC where a truth column exists; and,
    with a baseline, the delta of every metric (run - baseline) and, over all days and in each
    slice, a paired bootstrap confidence interval of the AUC delta.

Memory: each cohort is one histogram pass over its narrow columns, exact-AUC gather passes of at
most `budget_rows` rows, and one group bucket at a time for GAUC (mtl_rec.evaluation, store.py).
The bootstrap resamples users, not rows (a cluster bootstrap: rows of one user are correlated, and
a row bootstrap's interval is too narrow). It runs on a hash sample of the users holding at most
about `bootstrap_rows` rows (the same rows for both models, every row of a sampled user), scaled to
the full row count (m-out-of-n) and centred on the exact delta.

Example::

    >>> metrics, curves = compute_metrics(store, targets, ["ctr"], "device", 5, ReportSettings())
    >>> metrics["ctr"]["overall"]["run"]["auc"]
    {'value': 0.7412, 'n': 30000}
    >>> gate_check(metrics, 0.002)["passed"]          # jobs.report.gate
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.report.store import Cohort, PredictionStore
from mtl_rec.bootstrap import paired_bootstrap_auc_delta
from mtl_rec.evaluation import (
    GaucStats,
    ScoreHistogram,
    calibration,
    group_auc_stats,
    low_bits_histogram,
    metric_value,
    normalized_entropy,
    radix_keys,
    streaming_auc,
)
from mtl_rec.metrics import EvalTarget, logloss


@dataclass(frozen=True)
class ReportSettings:
    """budget_rows: most rows any metric holds in memory at once; bootstrap_rows: rows sampled for the
    bootstrap; calibration_bins: equal-mass bins of the reliability diagram and ECE."""

    budget_rows: int = 10_000_000
    bootstrap_replicates: int = 200
    bootstrap_rows: int = 1_000_000
    confidence: float = 0.95
    calibration_bins: int = 10
    seed: int = 0


def _column(model: str, target: str) -> str:
    return f"{'pred' if model == 'run' else model}.{target}"


def _auc_reason(rows: int, positives: int) -> str:
    if rows == 0:
        return "no rows"
    return "no positives" if positives == 0 else "no negatives"


def _exact_auc(store, space, cohort, column, label, histogram, budget_rows) -> float | None:
    """streaming_auc with the store's chunked reads as its gather passes."""

    def pairs():
        for chunk in store.chunks([column, label], space, cohort):
            yield chunk[column], chunk[label]

    def rows_in_keys(lo: int, hi: int):
        scores, labels = [], []
        for s, y in pairs():
            keys = radix_keys(s)  # [n]
            inside = (keys >= lo) & (keys <= hi)  # [n] bool
            scores.append(s[inside])
            labels.append(y[inside])
        return np.concatenate(scores), np.concatenate(labels)

    return streaming_auc(histogram, rows_in_keys, lambda key: low_bits_histogram(pairs(), key), budget_rows)


def _roc_points(histogram: ScoreHistogram, points: int = 300) -> dict:
    """A ROC curve from the radix histogram (thresholds at key boundaries), at most `points` points."""
    keys = np.flatnonzero(histogram.rows)[::-1]  # [k] highest scores first
    pos = np.cumsum(histogram.positives[keys])  # [k]
    neg = np.cumsum(histogram.rows[keys] - histogram.positives[keys])  # [k]
    if not keys.size or pos[-1] == 0 or neg[-1] == 0:
        return {"fpr": [], "tpr": []}
    take = np.unique(np.linspace(0, keys.size - 1, min(points, keys.size)).astype(int))
    return {"fpr": [0.0, *(neg[take] / neg[-1]).tolist()], "tpr": [0.0, *(pos[take] / pos[-1]).tolist()]}


def _delta(run: dict | None, base: dict | None, n: int) -> dict:
    a = run.get("value") if run else None
    b = base.get("value") if base else None
    if a is None or b is None:
        return metric_value(None, n, "not computable for the run or the baseline")
    return metric_value(a - b, n)


DELTA_METRICS = {
    "auc": ("auc",),
    "gauc_mean": ("gauc", "mean"),
    "gauc_impression_weighted": ("gauc", "impression_weighted"),
    "gauc_positive_weighted": ("gauc", "positive_weighted"),
    "logloss": ("logloss",),
    "ne": ("ne",),
    "calibration_ratio": ("calibration", "ratio"),
    "ece": ("calibration", "ece"),
    "oracle_gap": ("oracle_gap",),
}


def _path(block: dict, path: tuple[str, ...]) -> dict | None:
    for key in path:
        block = block.get(key) if isinstance(block, dict) else None
    return block


def score_cohort(
    store: PredictionStore, target: EvalTarget, cohort: Cohort, models: list[str], settings: ReportSettings
) -> tuple[dict, dict]:
    """(metrics block, ROC curves {model: {fpr, tpr}}) of one target over one cohort (see module doc)."""
    label = f"label.{target.label}"
    truth = f"truth.{target.oracle_column}" if target.oracle_column else None
    columns = {m: _column(m, target.name) for m in models}
    if truth in store.columns():
        columns["oracle"] = truth
    histograms = {key: ScoreHistogram() for key in columns}
    loss_sum = dict.fromkeys(models, 0.0)
    rows = positives = 0
    for chunk in store.chunks([label, *columns.values()], target.space, cohort):
        labels = chunk[label]
        rows += labels.size
        positives += int(labels.sum())
        for key, column in columns.items():
            histograms[key].update(chunk[column], labels)
            if key != "oracle" and labels.size:
                loss_sum[key] += logloss(labels, chunk[column]) * labels.size
    reason = _auc_reason(rows, positives)
    auc = {
        key: _exact_auc(store, target.space, cohort, column, label, histograms[key], settings.budget_rows)
        for key, column in columns.items()
    }
    gauc = {m: GaucStats() for m in models}
    for part in store.partitions(["group", label, *(columns[m] for m in models)], target.space, cohort):
        for m in models:
            gauc[m] = gauc[m].merge(group_auc_stats(part["group"], part[label], part[columns[m]]))

    oracle = auc.get("oracle")
    block: dict = {
        "rows": rows,
        "positives": positives,
        "oracle_auc": metric_value(
            oracle, rows, reason if "oracle" in columns else "no truth column in the logs"
        ),
    }
    for m in models:
        mean_loss = loss_sum[m] / rows if rows else None
        gap = oracle - auc[m] if oracle is not None and auc[m] is not None else None
        block[m] = {
            "auc": metric_value(auc[m], rows, reason),
            "gauc": gauc[m].report(),
            "logloss": metric_value(mean_loss, rows, "no rows"),
            "ne": metric_value(normalized_entropy(mean_loss, rows, positives), rows, reason),
            "calibration": calibration(histograms[m], settings.calibration_bins),
            "oracle_gap": metric_value(gap, rows, "no oracle AUC or no AUC"),
        }
    if "baseline" in models:
        block["delta"] = {
            name: _delta(_path(block["run"], path), _path(block["baseline"], path), rows)
            for name, path in DELTA_METRICS.items()
        }
    return block, {key: _roc_points(h) for key, h in histograms.items()}


def auc_delta_interval(store, target: EvalTarget, cohort: Cohort, exact_delta, settings) -> dict:
    """Paired user-bootstrap CI of AUC(run) - AUC(baseline) on a user hash sample (see module doc)."""
    from mtl_rec.transform import splitmix64

    label, run, base = f"label.{target.label}", _column("run", target.name), _column("baseline", target.name)
    total = sum(c[label].size for c in store.chunks([label], target.space, cohort))
    fraction = min(1.0, settings.bootstrap_rows / max(total, 1))
    threshold = np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))  # hash < threshold: a `fraction` sample
    parts = []
    columns = ("group", label, run, base)
    for chunk in store.chunks(list(columns), target.space, cohort):
        hashed = splitmix64(chunk["group"].view(np.uint64))  # [n] uint64, uniform per user
        keep = np.ones(hashed.size, bool) if fraction >= 1 else hashed < threshold  # [n], whole users
        parts.append({c: chunk[c][keep] for c in columns})
    if not parts or exact_delta is None:
        return {"low": None, "high": None, "reason": "no AUC delta", "rows": total}
    sample = {c: np.concatenate([p[c] for p in parts]) for c in columns}
    ci = paired_bootstrap_auc_delta(
        sample[label],
        sample[run],
        sample[base],
        settings.bootstrap_replicates,
        settings.confidence,
        settings.seed,
        population_rows=total,
        groups=sample["group"],
    )
    if ci.get("low") is None:
        return {**ci, "population_rows": total}
    shift = exact_delta - ci["delta"]  # centre the interval on the exact full-data delta
    return {
        **ci,
        "low": ci["low"] + shift,
        "high": ci["high"] + shift,
        "delta": exact_delta,
        "method": "paired user bootstrap" + (" (m-out-of-n on a user hash sample)" if fraction < 1 else ""),
    }


def compute_metrics(
    store: PredictionStore,
    targets: list[EvalTarget],
    baseline_targets: list[str],
    slice_column: str | None,
    top_k: int,
    settings: ReportSettings,
) -> tuple[dict, dict, dict]:
    """(metrics {target: {...}}, slices {"column", "values", ...}, curves {target: ROC per model})."""
    days = store.days
    slices = {"column": slice_column, "top_k": top_k, "values": [], "other_rows": 0}
    if slice_column:
        counts = store.value_counts("slice")
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        slices["values"] = [{"value": v, "rows": n} for v, n in ranked[:top_k]]
        slices["other_values"] = max(len(ranked) - top_k, 0)
        slices["other_rows"] = sum(n for _, n in ranked[top_k:])
    metrics, curves = {}, {}
    for target in targets:
        models = ["run", *(["baseline"] if target.name in baseline_targets else [])]
        overall, curves[target.name] = score_cohort(store, target, Cohort("all days", days), models, settings)
        if "baseline" in models:
            overall["auc_delta_ci"] = auc_delta_interval(
                store, target, Cohort("all days", days), overall["delta"]["auc"]["value"], settings
            )
        by_day = {day: score_cohort(store, target, Cohort(day, (day,)), models, settings)[0] for day in days}
        by_slice = {}
        for s in slices["values"]:
            cohort = Cohort(f"{slice_column}={s['value']}", days, s["value"])
            block = by_slice[str(s["value"])] = score_cohort(store, target, cohort, models, settings)[0]
            if "baseline" in models:  # per slice too: a change may help one slice and hurt another
                block["auc_delta_ci"] = auc_delta_interval(
                    store, target, cohort, block["delta"]["auc"]["value"], settings
                )
        metrics[target.name] = {
            "task": target.task,
            "label": target.label,
            "space": target.space,
            "conditional": target.conditional,
            "oracle_column": target.oracle_column,
            "overall": overall,
            "by_day": by_day,
            "by_slice": by_slice,
        }
    return metrics, slices, curves
