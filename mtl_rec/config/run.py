"""The whole run: a preset YAML plus `--set key=value` overrides -> one frozen RunConfig that reaches
every Ray worker unchanged.

Example::

    >>> cfg = read_run_config("jobs/configs/mmoe.yaml", ["train.epochs=2", "optim.dense.lr=0.002"])
    >>> cfg.model.arch, cfg.train.epochs, [t.name for t in cfg.tasks]
    ('mmoe', 2, ['ctr', 'cvr', 'cart'])

Jobs load it through mtl_rec.run_config.load_run_config, which also checks the backbone's and the
weighting method's params against their registries; this package imports neither (nor torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from mtl_rec.config.data import DataConfig
from mtl_rec.config.features import FeatureSpec, load_feature_spec
from mtl_rec.config.loader import ConfigError, apply_overrides, from_dict, load_yaml
from mtl_rec.config.model import ModelConfig, TaskConfig, validate_tasks
from mtl_rec.config.weighting import WeightingConfig

SHARDING_TYPES = (
    "table_wise",
    "column_wise",
    "table_column_wise",
    "row_wise",
    "table_row_wise",
    "data_parallel",
)


@dataclass(frozen=True)
class SparseOptimConfig:
    """The embedding tables' optimizer, fused into backward by FBGEMM (no .grad on the tables).

    weight_decay: L2 on the rows a batch touches (rowwise_adagrad and adam only), the usual
        regulariser of id embeddings: a row seen in many batches is pulled toward 0 more often, a
        rare id's row keeps what little it learned (frequency-adaptive, as in Zhang et al., CIKM 2022)
    """

    name: Literal["rowwise_adagrad", "adagrad", "adam", "sgd"] = "rowwise_adagrad"
    lr: float = 0.1
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.weight_decay < 0 or (self.weight_decay and self.name in ("adagrad", "sgd")):
            raise ConfigError(
                f"optim.sparse.weight_decay={self.weight_decay}: must be >= 0, and FBGEMM supports it "
                f"for rowwise_adagrad and adam only (name is {self.name})"
            )


@dataclass(frozen=True)
class DenseOptimConfig:
    """The optimizer of every parameter outside the embedding tables."""

    name: Literal["adam", "adagrad"] = "adam"
    lr: float = 2e-3  # with the default cosine schedule and a global batch of 2048
    weight_decay: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    sparse: SparseOptimConfig = SparseOptimConfig()
    dense: DenseOptimConfig = DenseOptimConfig()


@dataclass(frozen=True)
class ShardingConfig:
    """Which sharding types TorchRec's planner may use.

    allowed: for every table (empty: the device's default; on CPU + gloo table_wise, column_wise,
             table_column_wise and data_parallel, since row_wise fails there)
    tables:  per-table override, e.g. {user_id: [column_wise]}
    """

    allowed: tuple[str, ...] = ()
    tables: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for where, types in [
            ("allowed", self.allowed),
            *((f"tables.{k}", v) for k, v in self.tables.items()),
        ]:
            bad = [t for t in types if t not in SHARDING_TYPES]
            if bad:
                raise ConfigError(
                    f"sharding.{where}: unknown sharding types {bad}; valid: {', '.join(SHARDING_TYPES)}"
                )


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    workers: Ray Train workers (0: 2 on CPU, one per GPU on CUDA); data.batch_size is per worker,
             so the global batch is workers x data.batch_size
    epochs:  passes over the training dates
    max_steps: stop after this many steps (0: no limit; for smoke tests and benchmarks)
    log_every: steps between progress lines / train metrics on rank 0
    cpus_per_worker: logical CPUs each worker reserves; the rest stay for Ray Data's read tasks
    checkpoint_every: steps between checkpoints (model, optimizers, weighting, data position) that a
             run resumes from after a worker dies; 0: only the final one
    max_failures: worker-group failures Ray Train recovers from (FailureConfig) by resuming from the
             last checkpoint; 0: a failure ends the run
    audit_ids: keep the request ids each rank trained on in the checkpoint (exactly-once audits;
             8 bytes a row)
    """

    workers: int = 0
    epochs: int = 1
    max_steps: int = 0
    log_every: int = 50
    seed: int = 0
    cpus_per_worker: float = 0.5
    torch_threads: int = 0  # intra-op threads per worker (0: cores // workers)
    # benchmark only: each rank first materialises its batches in memory, then the timed loop
    # trains on them (the model-only ceiling of `python -m jobs.bench train`)
    prebuilt_batches: bool = False
    checkpoint_every: int = 0
    max_failures: int = 0
    audit_ids: bool = False
    # learning rates (dense and tables alike): linear warm-up over the first warmup_fraction of the
    # planned steps, then cosine (or linear, or no) decay to lr_min_ratio x lr at the last step
    # (mtl_rec.schedule). Decaying is what makes the last step's model calibrated: at a constant
    # rate the final logits wander by +-10-30% in pred/obs; decaying to 0.2 x lr rather than 0 keeps
    # learning in the last third of a one-epoch run (+0.002 to +0.009 AUC per task on 200k rows,
    # pred/obs 0.95-0.97; docs/benchmarks.md, quality)
    lr_schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_fraction: float = 0.05
    lr_min_ratio: float = 0.2
    # run: one warm-up and one decay over every planned epoch; epoch: the decay restarts every epoch
    # (warm-up in the first only), so each epoch ends annealed and early stopping keeps an annealed,
    # calibrated model whichever epoch is best (mtl_rec.schedule)
    lr_cycle: Literal["run", "epoch"] = "run"
    # platt: after training (and the best epoch restored), every task's logit is recalibrated as
    # a * logit + b fitted on the validation rows (mtl_rec.calibration): the ranking stays, the
    # predicted level matches the observed one; none: the logits as trained
    calibration: Literal["none", "platt"] = "none"
    # a hash hold-out of the training rows (by request id), scored after every epoch; 0: none
    validation_fraction: float = 0.0
    # stop after this many epochs without a better validation score (mean normalised entropy over
    # the tasks) and keep the best epoch's weights; 0: train every epoch, keep the last
    early_stopping_patience: int = 0
    # what ranks the epochs: ne (mean normalised entropy) or auc (mean AUC: the ranking alone, for
    # runs calibrated afterwards; mtl_rec.early_stopping)
    validation_metric: Literal["ne", "auc"] = "ne"
    # after early stopping would stop, a tables-only phase: the best epoch's weights back, the dense
    # layers frozen (learning rate 0), the tables trained on until validation stops improving again.
    # On logs with large id tables the dense layers memorise from the second pass on (Zhang et al.,
    # CIKM 2022) while the tables alone keep improving (docs/benchmarks.md, quality)
    tables_phase: bool = False
    # DIN's mini-batch aware L2 on the embedding rows a batch looks up, scaled by 1 / the id's count
    # (mtl_rec.table_l2), on the scale of one pass's mean loss (sklearn's C = 1 / (2 table_l2)); 0:
    # off. The counts cost one read of the training rows before the first step
    table_l2: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"train.validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.early_stopping_patience and not self.validation_fraction:
            raise ConfigError("train.early_stopping_patience needs train.validation_fraction > 0")
        if self.calibration != "none" and not self.validation_fraction:
            raise ConfigError(f"train.calibration={self.calibration} needs train.validation_fraction > 0")
        if self.tables_phase and not self.early_stopping_patience:
            raise ConfigError("train.tables_phase needs train.early_stopping_patience > 0 (it begins there)")
        if self.table_l2 < 0:
            raise ConfigError(f"train.table_l2 must be >= 0, got {self.table_l2}")
        if not 0.0 <= self.warmup_fraction < 1.0 or not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ConfigError("train.warmup_fraction must be in [0, 1) and train.lr_min_ratio in [0, 1]")


# Overrides for exactly one pass over every training row: no hold-out, no early stopping, no
# calibration, no tables-only phase, no counting read for the table L2, one decay over the run (the
# presets train until validation stops improving). For speed benchmarks (one pass is what they
# time) and tests that count the rows a run trains.
SINGLE_PASS = (
    "train.epochs=1",
    "train.validation_fraction=0",
    "train.early_stopping_patience=0",
    "train.calibration=none",
    "train.lr_cycle=run",
    "train.tables_phase=false",
    "train.table_l2=0",  # its counts are a read of every row before the first step
)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved resolved as RUN_DIR/config.yaml."""

    model: ModelConfig
    tasks: tuple[TaskConfig, ...]
    features: str = "jobs/configs/features.yaml"  # read_run_config resolves it (features_path)
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    sharding: ShardingConfig = ShardingConfig()
    train: TrainConfig = TrainConfig()
    weighting: WeightingConfig = WeightingConfig()

    def feature_spec(self) -> FeatureSpec:
        return load_feature_spec(self.features)


FEATURES_BESIDE = "features.yaml"  # the spec a config without `features:` reads, in its own folder


def features_path(path: str | Path, written: dict, overrides: Sequence[str] = ()) -> str:
    """Where the feature spec of the config file at `path` (its YAML: `written`) is. A relative
    `features:` in the file is read from the file's folder (a config and its spec move together);
    one given as a `--set` override, from the working directory (as every command-line path); none
    at all: the features.yaml beside the config, which must exist (never a silent fall back to the
    demo's spec)."""
    path = Path(path)
    given = [value for key, _, value in (o.partition("=") for o in overrides) if key == "features"]
    if given:
        return str(yaml.safe_load(given[-1]))
    if "features" in written:
        features = Path(str(written["features"]))
        return str(features if features.is_absolute() else path.parent / features)
    beside = path.parent / FEATURES_BESIDE
    if not beside.is_file():
        raise ConfigError(
            f"{path}: no `features:` (the feature spec file) and no {FEATURES_BESIDE} beside the config; "
            "name the spec with `features: PATH` (relative to the config's folder) or --set features=PATH"
        )
    return str(beside)


def read_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Preset YAML + overrides -> RunConfig, task labels checked against the feature spec. The
    backbone's and the weighting method's names and params are checked by
    mtl_rec.run_config.load_run_config, which calls this."""
    written = load_yaml(path)
    data = apply_overrides(written, list(overrides))
    data["features"] = features_path(path, written, overrides)
    weighting = data.get("weighting")
    if isinstance(weighting, dict):  # the flat form `{method: dwa, window: 50}` puts params beside method
        flat = {k: v for k, v in weighting.items() if k not in ("method", "params", "groups")}
        data["weighting"] = {
            "method": weighting.get("method", "fixed"),
            "params": {**weighting.get("params", {}), **flat},
            **({"groups": weighting["groups"]} if "groups" in weighting else {}),
        }
    try:
        cfg = from_dict(RunConfig, data)
        validate_tasks(cfg.tasks, cfg.feature_spec().labels)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    return cfg
