"""Validation after every epoch, early stopping, and the best epoch kept.

The score of an epoch is the mean normalised entropy (NE: logloss over the entropy of the base
rate, He et al. 2014) over the scored targets of the validation rows: lower is better, and unlike a
plain logloss sum it weighs a rare post-click task like a frequent one; or minus the mean AUC
(metric "auc"), which ranks epochs by their ranking alone: with post-hoc calibration
(mtl_rec.calibration) a model's level and scale are refitted anyway, and NE, which punishes the
growing confidence of later epochs, stops while the ranking still improves (UCI Adult: NE bottoms
out after ~18 passes, the income AUC keeps rising to ~100). Every rank computes it from the same
all-gathered metrics (mtl_rec.metrics), so every rank makes the same decision.

With `tables_phase`, the first time it would stop, the run instead restores the best epoch and
trains the tables alone (jobs.worker.train); it stops once the epochs since both the phase began and
the best epoch reach `patience`. The epoch the phase began is derived from the entries too.

The state is the run's list of validation entries (RunProgress.validation), which the checkpoint
carries: a resumed run knows its best epoch and how long it has waited.

Example::

    >>> stopping = EarlyStopping(patience=1, history=run.validation)
    >>> improved = stopping.update(epoch=1, step=50, metrics=validation_metrics)  # True: save RUN_DIR/best
    >>> stopping.should_stop                                              # after `patience` worse epochs
    False
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtl_rec.evaluation import normalized_entropy


def validation_score(metrics: dict[str, dict], metric: str = "ne") -> float | None:
    """Lower is better. "ne": mean NE over the targets that have one (both classes present);
    "auc": minus the mean AUC over the targets that have one. None if none has."""
    if metric == "auc":
        aucs = [m["auc"] for m in metrics.values() if m.get("auc") is not None]
        return -float(sum(aucs) / len(aucs)) if aucs else None
    values = [
        normalized_entropy(m.get("logloss"), m.get("rows", 0), m.get("positives", 0))
        for m in metrics.values()
    ]
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


@dataclass
class EarlyStopping:
    """patience: epochs without a better score before stopping (0: never stop early).
    history: the run's validation entries (one per epoch); update() appends to it.
    metric:  what validation_score ranks epochs by ("ne" or "auc").
    tables_phase: stop only at the end of the tables-only phase (see the module docstring)."""

    patience: int
    history: list[dict] = field(default_factory=list)
    metric: str = "ne"
    tables_phase: bool = False

    def _entries(self) -> list[dict]:
        return self.history

    @property
    def best(self) -> dict | None:
        """The validation entry with the lowest score (the earliest among equals), or None."""
        scored = [h for h in self._entries() if h["validation_score"] is not None]
        return min(scored, key=lambda h: h["validation_score"]) if scored else None

    def update(self, epoch: int, step: int, metrics: dict[str, dict]) -> bool:
        """Record epoch `epoch`'s validation metrics; True when it is the best so far."""
        score = validation_score(metrics, self.metric)
        before = self.best
        entry = {"epoch": epoch, "step": step, "validation": metrics, "validation_score": score}
        self.history.append(entry)
        return bool(score is not None and (before is None or score < before["validation_score"]))

    @property
    def tables_phase_from(self) -> int | None:
        """With tables_phase: the epoch after whose validation the tables-only phase began (the
        first at which a run without it would have stopped), or None while it has not."""
        if not self.tables_phase or not self.patience:
            return None
        best = None
        for entry in self._entries():
            if entry["validation_score"] is not None and (
                best is None or entry["validation_score"] < best["validation_score"]
            ):
                best = entry
            if best is not None and entry["epoch"] - best["epoch"] >= self.patience:
                return entry["epoch"]
        return None

    @property
    def should_stop(self) -> bool:
        best, entries = self.best, self._entries()
        if not self.patience or best is None:
            return False
        waited_from = best["epoch"]
        if self.tables_phase:
            began = self.tables_phase_from
            if began is None or entries[-1]["epoch"] == began:
                return False  # the phase has not begun, or begins now
            waited_from = max(waited_from, began)
        return entries[-1]["epoch"] - waited_from >= self.patience
