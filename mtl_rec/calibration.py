"""Post-hoc calibration of every task's logit on held-out rows: Platt scaling, fitted across ranks.

A model's ranking is settled long before its level is: the last steps of a run move every logit
of a task by a common offset (pred/obs wanders by 5-30% between runs that rank equally well), and
the level is what a bid or a ranking formula multiplies. So, after training, each task's logit l
is mapped to a * l + b, with (a, b) the logistic regression of the task's label on l over the
validation rows in the task's calibration space (Platt, 1999; the calibration step of He et al.,
"Practical Lessons from Predicting Clicks on Ads at Facebook", ADKDD 2014):

    root task      its own sample space and label              (ctr over impressions)
    chained task   its parent's positive rows, its own label   (ESMM's p(conversion | click) over clicks)

A monotone map per task: every task's AUC (and a chained task's conditional AUC) is unchanged; the
entire-space product of a chain is recalibrated through its factors. The fit needs every rank's
rows, so each rank bins its logits into a fine histogram (BINS bins of width 2 * LOGIT_BOUND / BINS
= 0.004 over [-16, 16]; logits beyond fall in the edge bins), one all-reduce sums them, and every
rank fits the same (a, b) from the same counts with float64 Newton steps: identical on every rank.

The result lives in the model (TaskHeads.calibration, [T, 2] of (a, b); identity (1, 0) until
fitted), so evaluation, export and serving apply it without knowing of it, and a checkpoint carries it.

Example::

    >>> histogram = LogitHistogram(tasks)
    >>> for batch, outputs in forward_in_lockstep(model, validation_batches, padding, device):
    ...     histogram.update(outputs, batch)
    >>> fitted = histogram.fit()                    # collective: {task: PlattFit}
    >>> heads.calibrate({task: (f.scale, f.shift) for task, f in fitted.items()})
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mtl_rec.batch import Batch
from mtl_rec.config.model import TaskConfig
from mtl_rec.distributed import all_reduce_sum
from mtl_rec.metrics import calibration_spaces
from mtl_rec.models.heads import TaskOutputs

LOGIT_BOUND = 16.0
BINS = 8192
NEWTON_STEPS = 50
RIDGE = 1e-6  # keeps the 2x2 Newton system invertible when a space's logits are all alike


@dataclass(frozen=True)
class PlattFit:
    """One task's fit: logit -> scale * logit + shift, and what the validation rows said of it."""

    scale: float
    shift: float
    rows: int
    positives: int
    pred_over_obs_before: float | None
    pred_over_obs_after: float | None


def fit_platt(centers: np.ndarray, rows: np.ndarray, positives: np.ndarray) -> tuple[float, float]:
    """Weighted logistic regression of the label on [logit, 1] from binned counts: [N] x 3 -> (a, b).

    Newton's method in float64 from (1, 0), the identity, each step halved until the negative
    log-likelihood does not rise (a plain Newton step overshoots and diverges when the logits are
    far off, e.g. a task predicted at a quarter of its rate). The objective is convex, so this
    converges; a space with one class only (or no rows) keeps the identity, its optimum being at
    infinity.
    """
    total, pos = float(rows.sum()), float(positives.sum())
    if total == 0 or pos == 0 or pos == total:
        return 1.0, 0.0
    x = np.stack([centers, np.ones_like(centers)], axis=1)  # [N, 2]
    identity = np.array([1.0, 0.0])

    def loss(theta: np.ndarray) -> float:  # ridge-regularised negative log-likelihood of the bins
        z = x @ theta  # [N, 2] x [2] -> [N]
        nll = rows * np.logaddexp(0.0, z) - positives * z  # [N]: -(y log p + (n - y) log (1 - p))
        return float(nll.sum() + 0.5 * RIDGE * ((theta - identity) ** 2).sum())

    theta, current = identity.copy(), loss(identity)
    for _ in range(NEWTON_STEPS):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ theta)))  # [N]: sigmoid without overflow
        gradient = x.T @ (rows * p - positives) + RIDGE * (theta - identity)  # [2]
        hessian = (x * (rows * p * (1.0 - p))[:, None]).T @ x + RIDGE * np.eye(2)  # [2, N] x [N, 2] -> [2, 2]
        step = np.linalg.solve(hessian, gradient)  # [2]
        for _ in range(60):  # halve until the loss does not rise
            candidate = theta - step
            value = loss(candidate)
            if value <= current:
                break
            step = step / 2
        else:
            break  # no step lowers the loss: theta is the optimum to float64 precision
        theta, current = candidate, value
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


class LogitHistogram:
    """Per task, rows and positives in BINS logit bins over its calibration space, on this rank.

    update() reads each task's own logit (outputs.logit: a chained task's conditional logit) and
    the masks of calibration_spaces(tasks); fit() all-reduces the counts and fits every task.
    """

    def __init__(self, tasks: Sequence[TaskConfig]) -> None:
        self.spaces = calibration_spaces(tasks)
        self.counts = torch.zeros(len(self.spaces), 2, BINS, dtype=torch.float64)  # [T, (rows, pos), BINS]
        edges = torch.linspace(-LOGIT_BOUND, LOGIT_BOUND, BINS + 1, dtype=torch.float64)  # [BINS + 1]
        self.centers = ((edges[:-1] + edges[1:]) / 2).numpy()  # [BINS]

    def update(self, outputs: TaskOutputs, batch: Batch) -> None:
        for t, (task, (label, space)) in enumerate(self.spaces.items()):
            mask = batch.masks[space].cpu()  # [B] bool
            logits = outputs.logit[task].detach().cpu().double()[mask]  # [B] -> [n]
            scaled = (logits + LOGIT_BOUND) * (BINS / (2 * LOGIT_BOUND))  # [n], bin coordinates
            bins = scaled.floor().clamp(0, BINS - 1).long()  # [n] in [0, BINS)
            labels = batch.labels[label].cpu().double()[mask]  # [B] -> [n]
            self.counts[t, 0].index_add_(0, bins, torch.ones_like(labels))  # [BINS] += 1 per row
            self.counts[t, 1].index_add_(0, bins, labels)  # [BINS] += label per row

    def fit(self) -> dict[str, PlattFit]:
        """Collective: every rank's counts summed, then {task: PlattFit} (the same on every rank)."""
        counts = all_reduce_sum(self.counts).numpy()  # [T, 2, BINS], exact: integer counts in float64
        fits = {}
        for t, task in enumerate(self.spaces):
            rows, positives = counts[t, 0], counts[t, 1]  # [BINS] each
            scale, shift = fit_platt(self.centers, rows, positives)
            fits[task] = PlattFit(
                scale,
                shift,
                int(rows.sum()),
                int(positives.sum()),
                _pred_over_obs(self.centers, rows, positives),
                _pred_over_obs(scale * self.centers + shift, rows, positives),
            )
        return fits


def _pred_over_obs(logits: np.ndarray, rows: np.ndarray, positives: np.ndarray) -> float | None:
    """Mean predicted probability over the observed rate, from binned logits; None without positives."""
    if positives.sum() == 0:
        return None
    predicted = float((rows / (1.0 + np.exp(-logits))).sum())  # sum over bins of rows x sigmoid(logit)
    return predicted / float(positives.sum()) if math.isfinite(predicted) else None
