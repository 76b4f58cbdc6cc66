"""Score a run's checkpoint on days of logs: the training pipeline, Ray Train, every row to Parquet.

A run directory is read back as RunArtifacts: the resolved config, feature spec (after the run's
`--spec-set` overrides) and feature statistics saved with its checkpoint, and the checkpoint's world
size. The working copy's features file is never read: a spec edited since the run trained (a dense
feature added, a table resized, another id map) scores the checkpoint exactly as before. A checkpoint
written before runs saved their spec falls back to the config's features file, fitted to the table
shapes stored in the checkpoint (`_spec_of_checkpoint`; a changed id map or dense feature goes
unnoticed there, and load_run says so).

The days then go through the same Ray Data chain as training (pipelines.dataset.build_dataset with
the run's own statistics and the sample-space masks of its metrics), one dataset per model and day,
split across a TorchTrainer of the checkpoint's world size with jobs.worker.data_config.NoDropDataConfig
(equal=False: no row lost). Each worker shards the model with the checkpoint's sharding types
(plan.json), loads the checkpoint, and walks its shard in lockstep with padding batches under
torch.no_grad.

Per row it writes id, group key, slice value, labels, masks, truth columns and one prediction per
evaluation target to SCORES/<key>/<day>/bucket-<b>/rank-<r>.parquet, a row group per batch: worker memory
is one batch, whatever the day's size. The bucket is splitmix64(group key) % buckets, so every
group's rows (over all days) land in the same bucket: GAUC is then computed bucket by bucket.

Example::

    >>> run = load_run(Path("runs/mmoe"), slice_column="device")
    >>> score_runs([(run, inventories)], Path("out/scores"), buckets=1, slice_column="device")
    [PosixPath('out/scores/3f2a9c0d1e4b5a67')]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.train
import torch.distributed.checkpoint as dcp
import yaml

from jobs.worker.runtime import forward_in_lockstep, make_trainer, padding_batch, sharded_from, start_worker
from mtl_rec.checkpoint import load_checkpoint
from mtl_rec.config.features import (
    SPEC_FILE,
    FeatureSpec,
    TableSpec,
    load_feature_spec,
    saved_feature_spec,
)
from mtl_rec.config.loader import ConfigError
from mtl_rec.config.run import RunConfig
from mtl_rec.config.stats import FeatureStats
from mtl_rec.distributed import rank
from mtl_rec.metrics import EvalTarget, eval_targets, required_spaces
from mtl_rec.run_config import run_config_from_dict
from mtl_rec.transform import splitmix64
from pipelines.dataset import build_dataset, iter_batches, layout_for

SCORED = "SCORED.json"  # written last: the scores in its directory are complete


@dataclass(frozen=True)
class RunArtifacts:
    """A trained run directory, read back for scoring."""

    path: Path
    cfg: RunConfig
    spec: FeatureSpec  # the run's saved spec, slice column carried in meta
    stats: FeatureStats
    world_size: int
    history: tuple[dict, ...]  # metrics.json train.history (loss and weights per logged step)
    spec_source: str  # the file the spec was read from: the checkpoint's, or (old runs) the config's
    # old runs only: {"resized": {table: [rows, dim]}, "dropped": [tables]}, the working copy's spec
    # made to fit the checkpoint; {} for a saved spec
    spec_changes: dict

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def targets(self) -> tuple[EvalTarget, ...]:
        return tuple(eval_targets(self.cfg.tasks, self.spec))

    def describe(self) -> dict:
        metrics = _read_json(self.path / "metrics.json")
        return {
            "dir": str(self.path),
            "arch": self.cfg.model.arch,
            "tasks": [t.name for t in self.cfg.tasks],
            "weighting": self.cfg.weighting.method,
            "world_size": self.world_size,
            "steps": metrics.get("train", {}).get("steps"),
            "train_dates": metrics.get("data", {}).get("train_dates"),
            "train_rows": metrics.get("train", {}).get("rows"),
            "spec": self.spec_source,
            "spec_changes": self.spec_changes,
        }


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def checkpoint_table_shapes(checkpoint: Path) -> dict[str, list[int]]:
    """{table: [rows, dim]} of every embedding table in a DCP checkpoint (metadata only, no weights)."""
    metadata = dcp.FileSystemReader(str(checkpoint / "model")).read_metadata()
    shapes = {}
    for key, item in metadata.state_dict_metadata.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3] == "embedding_bags" and parts[-1] == "weight":
            shapes[parts[-2]] = list(item.size)
    return shapes


def _spec_of_checkpoint(spec: FeatureSpec, checkpoint: Path) -> tuple[FeatureSpec, dict]:
    """For a checkpoint without a saved spec (written before runs saved theirs): the working copy's
    spec with its tables as the checkpoint stores them: sizes from the checkpoint (spec overrides at
    training time), and tables the spec gained since (with their features) dropped. Returns the spec
    and {"resized": {table: [rows, dim]}, "dropped": [tables]}."""
    shapes = checkpoint_table_shapes(checkpoint)
    unknown = sorted(set(shapes) - set(spec.tables))
    if unknown:
        raise ConfigError(
            f"{checkpoint}: tables {unknown} are not in the feature spec ({sorted(spec.tables)})"
        )
    tables: dict[str, TableSpec] = {}
    resized = {}
    for name, table in spec.tables.items():
        if name not in shapes:
            continue
        rows, dim = shapes[name]
        if (table.num_embeddings, table.dim) != (rows, dim):
            resized[name] = [rows, dim]
        tables[name] = dataclasses.replace(table, num_embeddings=rows, dim=dim)
    dropped = sorted(set(spec.tables) - set(tables))
    sparse = tuple(f for f in spec.sparse if f.table in tables)
    return dataclasses.replace(spec, tables=tables, sparse=sparse), {"resized": resized, "dropped": dropped}


def load_run(run_dir: Path, slice_column: str | None = None) -> RunArtifacts:
    """Read RUN_DIR's checkpoint (config, spec, statistics, manifest) into RunArtifacts; clear errors."""
    run_dir = Path(run_dir).resolve()
    checkpoint = run_dir / "checkpoint"
    manifest_path = checkpoint / "MANIFEST.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no complete checkpoint ({manifest_path} missing); not a `python -m jobs.train` run?"
        )
    manifest = json.loads(manifest_path.read_text())
    config_path = checkpoint / "config.yaml"
    try:
        cfg = run_config_from_dict(yaml.safe_load(config_path.read_text()))
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from e
    spec, source, changes = saved_feature_spec(checkpoint), str(checkpoint / SPEC_FILE), {}
    if spec is None:
        print(
            f"{checkpoint}: no saved feature spec (trained before runs saved theirs): scoring with "
            f"{cfg.features}, tables sized as in the checkpoint; an id map or dense feature changed "
            "since training would go unnoticed",
            flush=True,
        )
        spec, changes = _spec_of_checkpoint(load_feature_spec(cfg.features), checkpoint)
        source = cfg.features
    meta = spec.meta_columns
    if slice_column and slice_column not in (*meta, spec.group_key, spec.time_column, ""):
        meta = (*meta, slice_column)
    spec = dataclasses.replace(spec, meta_columns=meta)
    history = _read_json(run_dir / "metrics.json").get("train", {}).get("history", [])
    return RunArtifacts(
        path=run_dir,
        cfg=cfg,
        spec=spec,
        stats=FeatureStats.load(checkpoint / "feature_stats.json"),
        world_size=int(manifest.get("world_size", 1)),
        history=tuple(history),
        spec_source=source,
        spec_changes=changes,
    )


@dataclass(frozen=True)
class ModelScoring:
    """One model to score in a scoring run: its artefacts, batch layout, days and output directory."""

    run: RunArtifacts
    layout: object  # pipelines.collate.BatchLayout
    days: tuple[str, ...]
    out_dir: str

    def dataset(self, day: str) -> str:
        """The name of this model's dataset of `day` among the scoring run's datasets."""
        return f"{Path(self.out_dir).name}-{day}"  # the score key: unique per model and rows


@dataclass(frozen=True)
class ScoreInputs:
    """What every scoring worker gets (picklable, sent once): the models, scored one after another."""

    models: tuple[ModelScoring, ...]
    buckets: int
    slice_column: str | None


def _batch_columns(batch, outputs, run: RunArtifacts, slice_column: str | None) -> dict[str, np.ndarray]:
    """One real batch -> {column: [B] numpy} (see module doc for the columns)."""
    spec = run.spec
    cpu = lambda t: t.detach().to("cpu").numpy()  # noqa: E731  [B] tensor -> [B] numpy
    ids = cpu(batch.ids)  # [B]
    # Without a group key each row is its own group: no GAUC, and the bootstrap resamples rows.
    group = cpu(batch.meta[spec.group_key]).astype(np.int64) if spec.group_key else ids  # [B]
    columns = {"id": ids, "group": group}
    if slice_column:
        columns["slice"] = cpu(batch.meta[slice_column]).astype(np.int64)
    for label, values in batch.labels.items():
        columns[f"label.{label}"] = cpu(values).astype(np.int8)
    for space, mask in batch.masks.items():
        columns[f"mask.{space}"] = cpu(mask)
    for target in run.targets:
        columns[f"pred.{target.name}"] = cpu(target.predictions(outputs).float())
        if target.oracle_column and target.oracle_column in batch.meta:
            columns[f"truth.{target.oracle_column}"] = cpu(batch.meta[target.oracle_column].float())
    return columns


class _BucketWriters:
    """One ParquetWriter per group bucket, opened on first rows: OUT/<day>/bucket-<b>/rank-<r>.parquet."""

    def __init__(self, day_dir: Path, rank: int, buckets: int) -> None:
        self.day_dir, self.rank, self.buckets = day_dir, rank, buckets
        self.writers: dict[int, object] = {}
        self.rows = 0

    def write(self, columns: dict[str, np.ndarray]) -> None:
        bucket = (splitmix64(columns["group"].view(np.uint64)) % np.uint64(self.buckets)).astype(np.int64)
        for b in np.unique(bucket).tolist():
            rows = bucket == b  # [B] bool
            table = pa.table({name: values[rows] for name, values in columns.items()})
            if b not in self.writers:
                path = self.day_dir / f"bucket-{b:04d}" / f"rank-{self.rank:04d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                self.writers[b] = pq.ParquetWriter(str(path), table.schema)
            self.writers[b].write_table(table)
        self.rows += len(bucket)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def score_worker(inputs: ScoreInputs) -> None:
    """Ray Train's train_loop_per_worker: for each model, load its checkpoint and score every row of
    every day; one model in memory at a time."""
    rows = 0
    for scoring in inputs.models:
        run, layout = scoring.run, scoring.layout
        device = start_worker(run.cfg.train.torch_threads)
        sharded = sharded_from(run.spec, run.cfg, device, run.checkpoint)
        load_checkpoint(sharded.model, run.checkpoint, weights_only=True)  # DCP reshards if tables moved
        padding = padding_batch(layout, run.spec).to(device)
        for day in scoring.days:
            writers = _BucketWriters(Path(scoring.out_dir) / day, rank(), inputs.buckets)
            shard = ray.train.get_dataset_shard(scoring.dataset(day))
            batches = iter_batches(shard, layout, run.cfg.data.eval_batch_size, run.cfg.data.prefetch_batches)
            for batch, outputs in forward_in_lockstep(sharded.model, batches, padding, device):
                writers.write(_batch_columns(batch, outputs, run, inputs.slice_column))
            writers.close()
            rows += writers.rows
        del sharded
    ray.train.report({"rows": rows})


def score_key(
    run: RunArtifacts, inventories: dict, buckets: int, slice_column: str | None, split=None
) -> str:
    """What a model's scores depend on, hashed: checkpoint (path and manifest, whose id is new with every
    save: a run retrained in place is scored again), files and their rows,
    buckets, slice column. Equal keys: the scores on disk can be reused."""
    identity = {
        "checkpoint": str(run.checkpoint),
        "manifest": (run.checkpoint / "MANIFEST.json").read_text(),
        "files": {day: [[f.path, f.rows] for f in inv.files] for day, inv in inventories.items()},
        "buckets": buckets,
        "slice_column": slice_column,
        "split": None if split is None else [split.fraction, split.part, split.column],
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def score_runs(
    models: list[tuple[RunArtifacts, dict]],
    scores_root: Path,
    buckets: int,
    slice_column: str | None,
    split=None,
) -> list[Path]:
    """Score each (run, inventories) pair ({day: LogInventory}) with the run's checkpoint (see module
    doc) into SCORES_ROOT/<score_key>/, unless a finished scoring (SCORED.json) is already there.
    Returns those directories, in order; each one's quarantine/ holds rows validation set aside.
    `split` (pipelines.split.HoldoutSplit): score only that side of the hold-out.

    Models of the same world size (a daily candidate and the promoted model) are scored in one Ray
    Train run, one after the other: Ray Train's start-up (~25 s on 2 cores) is paid once."""
    out_dirs = [scores_root / score_key(run, inv, buckets, slice_column, split) for run, inv in models]
    pending: dict[tuple[int, float], dict[Path, tuple]] = {}  # a model compared with itself: once
    for (run, inventories), out_dir in zip(models, out_dirs, strict=True):
        if not (out_dir / SCORED).is_file():
            shutil.rmtree(out_dir, ignore_errors=True)  # an interrupted scoring
            group = pending.setdefault((run.world_size, run.cfg.train.cpus_per_worker), {})
            group[out_dir] = (run, inventories)
    for (workers, cpus), group in pending.items():
        _score_group(group, workers, cpus, scores_root, buckets, slice_column, split)
    return out_dirs


def _score_group(group: dict, workers, cpus, scores_root, buckets, slice_column, split) -> None:
    """One TorchTrainer of `workers` workers scoring every model of `group` ({out_dir: (run,
    inventories)}), one after the other; SCORED.json per model."""
    datasets, models = {}, []
    for out_dir, (run, inventories) in group.items():
        spaces = required_spaces(run.cfg.tasks, run.spec)
        layout = layout_for(run.spec, spaces, next(iter(inventories.values())))
        scoring = ModelScoring(run, layout, tuple(inventories), str(out_dir))
        for day, inventory in inventories.items():
            datasets[scoring.dataset(day)] = build_dataset(
                inventory, run.spec, run.stats, spaces, run.cfg.data, out_dir / "quarantine", split=split
            )
        models.append(scoring)
    trainer = make_trainer(
        score_worker,
        ScoreInputs(tuple(models), buckets, slice_column),
        datasets,
        workers=workers,
        cpus_per_worker=cpus,
        name="score",
        storage_path=scores_root / "ray",
    )
    trainer.fit()
    for scoring in models:
        days = list(scoring.days)
        Path(scoring.out_dir, SCORED).write_text(json.dumps({"run": str(scoring.run.path), "days": days}))
