"""Offline metrics per task over its sample space: exact AUC, logloss, calibration; all rows, all ranks.

An EvalTarget is one (prediction, label, sample space) to score. Every task is scored over its own
space with its entire-space prediction (ESMM's ctcvr over all impressions); a chained task with a
`conditional_name` is also scored with its conditional prediction over its parent's positive rows
(ESMM's cvr over clicked rows). Where the logs carry the hidden model's true probability for that
(label, space), its AUC is reported beside the model's as `oracle_auc`: the best any model could do.

MetricAccumulator keeps every in-space row (float32, on CPU), and compute() gathers them from all
ranks, so the AUC is exact: no bucketing, no per-rank averaging, no row dropped (ranks may hold
different numbers of rows, or none).

Example::

    >>> targets = eval_targets(cfg.tasks, cfg.feature_spec())
    >>> [(t.name, t.space) for t in targets]
    [('ctr', 'all'), ('ctcvr', 'all'), ('cvr', 'click == 1')]
    >>> acc = MetricAccumulator(targets)
    >>> with torch.no_grad():
    ...     for batch in batches:
    ...         acc.update(model(batch), batch)
    >>> acc.compute()["cvr"]["auc"]            # the same on every rank
    0.7312

The AUC functions (exact_auc, streaming_auc, in_memory_auc) live in mtl_rec.evaluation, numpy only,
all with labels first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mtl_rec.batch import Batch
from mtl_rec.config.features import FeatureSpec
from mtl_rec.config.model import TaskConfig, validate_tasks
from mtl_rec.config.spaces import SampleSpace, space_key
from mtl_rec.distributed import all_reduce_max, gather_concat
from mtl_rec.evaluation import ScoreHistogram, binary_labels, calibration, exact_auc
from mtl_rec.models.heads import TaskOutputs


@dataclass(frozen=True)
class EvalTarget:
    """One scored (prediction, label, sample space).

    name:          the report key (a task name, or a chained task's conditional_name)
    task:          the key into TaskOutputs whose prediction is scored
    label:         the label column
    space:         canonical sample-space key (the key of Batch.masks), e.g. "click == 1"
    conditional:   score outputs.conditional_prob(task) (p(label | parent positive)), else outputs.prob(task)
    oracle_column: the meta column holding the true probability for (label, space), or None
    """

    name: str
    task: str
    label: str
    space: str
    conditional: bool = False
    oracle_column: str | None = None

    def predictions(self, outputs: TaskOutputs) -> torch.Tensor:
        """[B] probabilities this target scores."""
        return outputs.conditional_prob(self.task) if self.conditional else outputs.prob(self.task)


def parent_positive_space(parent: TaskConfig) -> str:
    """The rows where the parent's label is 1, within the parent's own space: a canonical space key."""
    positive = f"{parent.label} == 1"
    return space_key(positive if parent.sample_space.is_all else f"{parent.space} and {positive}")


def calibration_spaces(tasks: Sequence[TaskConfig]) -> dict[str, tuple[str, str]]:
    """{task: (label, space key)}: the rows each task's own logit is calibrated on
    (mtl_rec.calibration): a root task's own space, a chained task's parent's positive rows."""
    tasks = validate_tasks(tasks)
    by_name = {task.name: task for task in tasks}
    return {
        task.name: (
            task.label,
            space_key(task.space) if task.parent is None else parent_positive_space(by_name[task.parent]),
        )
        for task in tasks
    }


def eval_targets(tasks: Sequence[TaskConfig], spec: FeatureSpec) -> list[EvalTarget]:
    """Every task over its own space (entire-space prediction), then each chained task's conditional
    prediction over its parent's positive rows, named by its conditional_name."""
    tasks = validate_tasks(tasks)
    by_name = {task.name: task for task in tasks}
    targets = [
        EvalTarget(
            name=task.name,
            task=task.name,
            label=task.label,
            space=space_key(task.space),
            oracle_column=spec.oracle_column(task.label, task.space),
        )
        for task in tasks
    ]
    for task in tasks:
        if task.parent is None or not task.conditional_name:
            continue
        space = parent_positive_space(by_name[task.parent])
        targets.append(
            EvalTarget(
                name=task.conditional_name,
                task=task.name,
                label=task.label,
                space=space,
                conditional=True,
                oracle_column=spec.oracle_column(task.label, space),
            )
        )
    names = [target.name for target in targets]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"metric names used twice (a conditional_name equals a task name?): {duplicates}")
    return targets


def required_spaces(tasks: Sequence[TaskConfig], spec: FeatureSpec) -> dict[str, SampleSpace]:
    """{space key: SampleSpace} for every mask the losses and metrics read ("all" always included).

    The pipeline computes exactly these masks into Batch.masks; labels are checked against the spec.
    """
    keys = ["all", *(space_key(task.space) for task in tasks)]
    keys += [target.space for target in eval_targets(tasks, spec)]
    keys += [space for _, space in calibration_spaces(tasks).values()]
    return {key: SampleSpace.parse(key, spec.labels) for key in dict.fromkeys(keys)}


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy, equal to sklearn.metrics.log_loss(labels, probs, labels=[0, 1]).

    Clipping, as sklearn does: p and 1 - p are each clipped to [eps, 1 - eps], eps the machine epsilon
    of the input's dtype (1.19e-7 for float32). Float32 predictions round to exactly 0 or 1 at
    confident logits, where log 0 = -inf would make one row the whole mean; the clip caps a row's loss
    at -log(eps) (15.9 for float32). The arithmetic is float64 (sklearn stays in the input dtype),
    so float64 inputs agree with sklearn to rounding and float32 inputs to ~1e-7 relative.
    Unlike sklearn, a single class is fine. ValueError on no rows or p outside [0, 1].
    """
    positive = binary_labels(labels)  # [N] bool
    probs = np.asarray(probs).ravel()  # [N]
    if probs.shape != positive.shape or probs.size == 0:
        raise ValueError(
            f"need as many probabilities as labels, at least one: {positive.shape} vs {probs.shape}"
        )
    if not np.all((probs >= 0) & (probs <= 1)):
        raise ValueError("probabilities must lie in [0, 1] (and not be NaN)")
    dtype = probs.dtype if np.issubdtype(probs.dtype, np.floating) else np.float64
    eps = float(np.finfo(dtype).eps)
    p = probs.astype(np.float64)  # [N]
    # 1 - p rounded in the input dtype, as sklearn forms its [1 - p, p] columns.
    one_minus_p = (1 - probs.astype(dtype)).astype(np.float64)  # [N]
    log_p = np.log(np.clip(p, eps, 1 - eps))  # [N]
    log_1mp = np.log(np.clip(one_minus_p, eps, 1 - eps))  # [N]
    return float(-np.mean(np.where(positive, log_p, log_1mp)))  # [N] -> []


def _rows_in(values: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """[B] values, [B] bool mask -> [n] float32 numpy array of the masked rows, on CPU."""
    return values.detach()[mask].to("cpu", torch.float32).numpy()  # [B] -> [n]


class MetricAccumulator:
    """Collects every in-space row of each target across batches; compute() scores all ranks' rows.

    update() is local (no collective); compute() is collective: every rank must call it, in the same
    order relative to other collectives, and every rank gets the same result.
    """

    def __init__(self, targets: Sequence[EvalTarget]) -> None:
        self.targets = tuple(targets)
        self.reset()

    def reset(self) -> None:
        self._preds: dict[str, list[np.ndarray]] = {t.name: [] for t in self.targets}
        self._labels: dict[str, list[np.ndarray]] = {t.name: [] for t in self.targets}
        self._truth: dict[str, list[np.ndarray]] = {t.name: [] for t in self.targets}
        # True once a batch lacked the target's oracle column: its truth rows would not line up.
        self._truth_missing: dict[str, bool] = {t.name: t.oracle_column is None for t in self.targets}

    @torch.no_grad()
    def update(self, outputs: TaskOutputs, batch: Batch) -> None:
        """Append, per target, the rows of batch in the target's space (float32, CPU)."""
        for target in self.targets:
            if target.space not in batch.masks:
                raise KeyError(
                    f"metric {target.name!r}: the batch has no mask {target.space!r} (it has "
                    f"{sorted(batch.masks)}); build the pipeline with metrics.required_spaces(...)"
                )
            mask = batch.masks[target.space]  # [B] bool
            self._preds[target.name].append(_rows_in(target.predictions(outputs), mask))
            self._labels[target.name].append(_rows_in(batch.labels[target.label], mask))
            if target.oracle_column is not None and target.oracle_column in batch.meta:
                self._truth[target.name].append(_rows_in(batch.meta[target.oracle_column], mask))
            else:
                self._truth_missing[target.name] = True

    def _local(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)  # [n_local]

    def compute(self) -> dict[str, dict[str, Any]]:
        """{target name: {auc, logloss, rows, positives, oracle_auc, space, mean_pred, mean_label,
        pred_over_obs, ece}}.

        Collective over all ranks (gathers every row). A metric that cannot be computed is None:
        auc / oracle_auc with one class or no row, logloss / means / ece with no row, pred_over_obs
        with no positive, oracle_auc where any batch on any rank lacked the oracle column.
        """
        # One collective for all targets: skip the oracle where ANY rank missed it, so the gathers
        # below are the same on every rank.
        missing = torch.tensor([self._truth_missing[t.name] for t in self.targets], dtype=torch.int64)
        truth_missing = all_reduce_max(missing).tolist() if self.targets else []  # [targets]
        results: dict[str, dict[str, Any]] = {}
        for target, no_truth in zip(self.targets, truth_missing, strict=True):
            preds = gather_concat(self._local(self._preds[target.name]))  # [n_local] -> [N]
            labels = gather_concat(self._local(self._labels[target.name]))  # [N]
            truth = None if no_truth else gather_concat(self._local(self._truth[target.name]))  # [N]
            results[target.name] = _score(target, preds, labels, truth)
        return results


def calibration_summary(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, float | None]:
    """{"pred_over_obs", "ece"} of [N] labels in {0, 1} and [N] probabilities in [0, 1].

    The offline report's calibration (mtl_rec.evaluation.calibration over a ScoreHistogram of the
    rows), so training metrics and reports agree: pred_over_obs = sum of predictions / positives
    (None without positives), ece = expected calibration error over `bins` equal-mass bins of the
    prediction (None without rows).
    """
    histogram = ScoreHistogram()  # 65,536 radix bins: memory independent of N
    histogram.update(probs, labels)
    result = calibration(histogram, bins)
    return {"pred_over_obs": result["ratio"]["value"], "ece": result["ece"]["value"]}


def _score(target: EvalTarget, preds: np.ndarray, labels: np.ndarray, truth: np.ndarray | None) -> dict:
    """The metrics of one target from all its rows: [N] predictions, labels, truth (or None)."""
    rows = int(labels.size)
    has_rows = rows > 0
    return {
        "auc": exact_auc(labels, preds),
        "logloss": logloss(labels, preds) if has_rows else None,
        "rows": rows,
        "positives": int((labels == 1).sum()),
        "oracle_auc": exact_auc(labels, truth) if truth is not None else None,
        "space": target.space,
        "mean_pred": float(preds.astype(np.float64).mean()) if has_rows else None,
        "mean_label": float(labels.astype(np.float64).mean()) if has_rows else None,
        **calibration_summary(labels, preds),
    }
