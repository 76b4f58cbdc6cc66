"""A training run's progress across restarts: step, epoch, rows, history, and the data position.

The worker loop records, per real batch, the positions of its rows (mtl_rec.data_position) and, when
auditing, their request ids. `checkpoint()` gathers them from every rank into the global set of
rows trained in this epoch and publishes them WITH the model (mtl_rec.checkpoint), so the model and
the data position always agree: a worker group restarted by Ray Train (FailureConfig) or a re-run of
the same job resumes from the checkpoint, and the read tasks skip exactly the rows it covers.

Example::

    >>> progress = RunProgress.start(sharded, weighting, run_dir, files, cfg.train.epochs, plan_json)
    >>> for batch ... :
    ...     progress.record(batch, global_rows)
    ...     if progress.step % cfg.train.checkpoint_every == 0:
    ...         progress.checkpoint(sharded, weighting, files_for_checkpoint)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtl_rec.checkpoint import LoadedCheckpoint, load_checkpoint, published_checkpoint, save_checkpoint
from mtl_rec.data_position import POSITION_FILE, DataPosition, merge_intervals, overlap_rows, to_intervals
from mtl_rec.distributed import barrier, gather_concat, rank


@dataclass
class RunProgress:
    """Where a run is. `position` is global (identical on every rank); `_positions` / `_ids` hold what
    this rank trained since the last checkpoint."""

    position: DataPosition
    epochs: int
    audit: bool = False
    history: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)  # one entry per epoch (mtl_rec.early_stopping)
    calibration: dict | None = None  # {task: Platt fit} once fitted (the model holds it from then on)
    table_counts: dict | None = None  # {table: [rows] int64} for train.table_l2 (mtl_rec.table_l2)
    resumed_from: str | None = None
    audited_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # rank 0
    _positions: list[np.ndarray] = field(default_factory=list)
    _ids: list[np.ndarray] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.position.step

    @property
    def epoch(self) -> int:
        return self.position.epoch

    @property
    def done(self) -> bool:
        return self.position.epoch >= self.epochs

    @classmethod
    def start(
        cls, target, weighting, run_dir: Path, files: list[str], epochs: int, plan_json: str, audit: bool
    ) -> RunProgress:
        """Resume from RUN_DIR/checkpoint where one is published (weights, optimizers, weighting,
        position), else start at step 0. Collective."""
        found = published_checkpoint(run_dir / "checkpoint")
        progress = cls(DataPosition(list(files)), epochs, audit)
        if found is None:
            return progress
        if found.name != "checkpoint":  # a crash between publish's renames: put it back where read tasks look
            barrier()
            if rank() == 0:
                found.rename(run_dir / "checkpoint")
            barrier()
            found = run_dir / "checkpoint"
        loaded = load_checkpoint(target, found, current_plan_json=plan_json)
        progress.restore(loaded, weighting, files)
        return progress

    def restore(self, loaded: LoadedCheckpoint, weighting, files: list[str]) -> None:
        saved = DataPosition.load(loaded.path / POSITION_FILE)
        if saved is not None:
            saved.check_files(files, str(loaded.path / POSITION_FILE))
            self.position = saved
        if "weighting" in loaded.replicated:
            weighting.load_state_dict(loaded.replicated["weighting"])
        self.history = list(loaded.replicated.get("history", []))
        self.validation = list(loaded.replicated.get("validation", []))
        self.calibration = loaded.replicated.get("calibration")
        self.table_counts = loaded.replicated.get("table_counts")
        self.audited_ids = loaded.replicated.get("audited_ids", self.audited_ids)
        self.resumed_from = f"step {self.position.step}, epoch {self.position.epoch}"

    def record(self, batch, global_rows: int) -> None:
        """After a real batch's optimizer step: its rows count as trained (on this rank)."""
        if batch.positions is not None:
            self._positions.append(batch.positions.numpy())
        if self.audit:
            self._ids.append(batch.ids.cpu().numpy())
        self.position.step += 1
        self.position.rows += global_rows

    def count_padding_step(self, global_rows: int) -> None:
        """A step this rank padded: the others trained on `global_rows` rows."""
        self.position.step += 1
        self.position.rows += global_rows

    def end_epoch(self) -> None:
        """Call on every rank after an epoch's last step and its checkpoint: the next epoch reads all rows."""
        self.position.epoch += 1
        self.position.consumed = np.zeros((0, 2), dtype=np.int64)
        # the finished epoch's rows since the last checkpoint are not the next epoch's consumed rows
        self._positions = []

    def _gather_consumed(self) -> None:
        local = to_intervals(np.concatenate(self._positions) if self._positions else np.zeros(0, np.int64))
        gathered = gather_concat(local.reshape(-1)).reshape(-1, 2)  # every rank's intervals
        fresh = merge_intervals(gathered)
        rows = lambda intervals: int((intervals[:, 1] - intervals[:, 0]).sum())  # noqa: E731
        repeated = overlap_rows(fresh, self.position.consumed) + rows(gathered) - rows(fresh)
        if repeated:
            raise RuntimeError(f"data position: {repeated} rows trained twice in epoch {self.position.epoch}")
        self.position.consumed = merge_intervals(self.position.consumed, fresh)
        self._positions = []
        if self.audit:
            ids = gather_concat(np.concatenate(self._ids) if self._ids else np.zeros(0, np.int64))
            self.audited_ids = np.concatenate([self.audited_ids, ids])
            self._ids = []

    def checkpoint(self, target, weighting, path: Path, files: dict[str, str], manifest: dict) -> None:
        """Collective: publish model + optimizers + weighting + this progress atomically."""
        self._gather_consumed()
        replicated = {
            "weighting": weighting.state_dict(),
            "history": self.history,
            "validation": self.validation,
            "calibration": self.calibration,
        }
        if self.audit:
            replicated["audited_ids"] = self.audited_ids
        if self.table_counts is not None:
            replicated["table_counts"] = self.table_counts
        files = {**files, POSITION_FILE: self.position.to_json()}
        manifest = {**manifest, "step": self.position.step, "epoch": self.position.epoch}
        save_checkpoint(target, path, files=files, manifest=manifest, replicated=replicated)
