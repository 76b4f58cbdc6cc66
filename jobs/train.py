"""Train a multi-task model on a date range of logs and evaluate it on held-out dates.

    python -m jobs.train --config jobs/configs/mmoe.yaml --logs DIR \\
        --train-dates 2026-11-18..2026-11-19 --eval-dates 2026-11-20 --out RUN_DIR \\
        [--set key=value ...] [--address ADDR]

A resume (RUN_DIR holds a checkpoint) trains on the checkpoint's saved spec, and a warm start
(--init-from) on the resolved one; either is refused before anything starts when the resolved spec
is incompatible with the checkpoint's saved one, with every difference named (mtl_rec.config.compat).

Without --address it starts a local Ray; with one it joins that cluster. It also runs as
`ray job submit --working-dir . -- python -m jobs.train ...`.

RUN_DIR gets config.yaml (resolved), features.yaml (the resolved feature spec, after --spec-set),
feature_stats.json (dense scaling from the training dates), plan.json (the sharding plan),
checkpoint/ (sharded DCP + plan + config + spec + stats, MANIFEST last), quarantine/ (rejected rows,
if any) and metrics.json:
    {"tasks": {task: {"auc", "logloss", "rows", "positives", "oracle_auc", ...}},
     "train": {"rows", "seconds", "samples_per_s", "history": [...]}, "data": {...}}
"""

from __future__ import annotations

import argparse
import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import yaml

from jobs.cli import run_job
from jobs.worker.runtime import make_trainer
from jobs.worker.train import WorkerInputs, train_worker
from mtl_rec.checkpoint import published_checkpoint
from mtl_rec.config import SampleSpace
from mtl_rec.config.compat import check_spec_compatible, config_differences
from mtl_rec.config.features import FeatureSpec, load_feature_spec, save_feature_spec, saved_feature_spec
from mtl_rec.config.loader import ConfigError, to_dict
from mtl_rec.config.run import RunConfig
from mtl_rec.config.stats import FeatureStats
from mtl_rec.config.weighting import weight_group_count
from mtl_rec.data_position import POSITION_FILE
from mtl_rec.metrics import required_spaces
from mtl_rec.quiet import quiet_ray_data
from mtl_rec.run_config import load_run_config, run_config_from_dict
from pipelines.dataset import build_dataset, compute_stats, layout_for
from pipelines.errors import BadInputError
from pipelines.ids import shared_ids
from pipelines.read import inspect_logs, parse_dates
from pipelines.split import VALIDATION_SALT, HoldoutSplit, combine
from pipelines.validate import quarantine_summary


def start_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    quiet_ray_data()  # before ray.init: a local Ray's processes inherit the setting
    if address or os.environ.get("RAY_ADDRESS"):  # --address, or running under `ray job submit`
        ray.init(address=address or None, configure_logging=False)
    else:
        # Twice the cores as logical CPUs: train workers reserve cpus_per_worker each and Ray Data's
        # read tasks need room beside them (they are mostly waiting on memory, not computing).
        ray.init(
            address="local",  # a new local Ray, never one that `ray start` left on this machine
            num_cpus=2 * (os.cpu_count() or 1),
            # The dashboard serves Ray's State API, which Ray Train's PlacementGroupCleaner polls to
            # release a dead controller's placement group; without it the cleaner cannot work and
            # logs "Failed to query Ray Train Controller actor state" every second (~1 s more start-up).
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            configure_logging=False,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False


def label_priors(inventory, tasks, spec) -> dict[str, float]:
    """{task: positive rate of its label over its sample space} on the training files (labels only)."""

    columns = list(spec.labels)
    tables = [pq.read_table(path, columns=columns) for path in inventory.paths]
    labels = {c: np.concatenate([t[c].to_numpy(zero_copy_only=False) for t in tables]) for c in columns}
    priors = {}
    for task in tasks:
        in_space = SampleSpace.parse(task.space).mask(labels)  # [N] bool
        priors[task.name] = float(labels[task.label][in_space].mean()) if in_space.any() else 0.5
    return priors


_WARM_ADVICE = (
    "Warm-start with the spec the checkpoint was trained on (that file, or the features file and "
    "--spec-set overrides it was trained with), or train from scratch (no --init-from)"
)
_RESUME_ADVICE = (
    "Resume with the spec the run started with (that file, or the same features file and --spec-set "
    "overrides), or train the new spec into another --out"
)


def run_spec(resolved: FeatureSpec, resumed: Path | None, init_from: str | Path | None) -> FeatureSpec:
    """The spec a run trains on: a resumed run's own (saved in its checkpoint), else `resolved`
    (the config's features file after --spec-set). SpecMismatch where `resolved` is incompatible with
    the spec saved in the checkpoint being resumed or warm-started from. A checkpoint written before
    runs saved their spec has none to check against: then the resolved spec, as before."""
    if resumed is not None:
        saved = saved_feature_spec(resumed)
        if saved is None:
            return resolved
        check_spec_compatible(saved, resolved, resumed, "resume", _RESUME_ADVICE)
        return saved  # every field of its own spec, those that may differ too (meta columns, oracle)
    saved = saved_feature_spec(init_from) if init_from else None
    if saved is not None:
        check_spec_compatible(saved, resolved, init_from, "warm start", _WARM_ADVICE)
    return resolved  # a warm start is a new run: the resolved spec's meta columns, oracle, ...


def train(
    cfg: RunConfig,
    logs: str,
    train_dates: str,
    eval_dates: str,
    out: Path,
    spec_overrides: tuple[str, ...] = (),
    address: str | None = None,
    init_from: str | Path | None = None,
    holdout: float | None = None,
) -> dict:
    """Train on `train_dates`, evaluate on `eval_dates`; returns (and writes) RUN_DIR/metrics.json.

    A RUN_DIR that already holds a published checkpoint is RESUMED (the same dates and files):
    training continues from its data position, so no row is trained on twice, and a finished run
    goes straight to evaluation. `init_from` (a checkpoint directory) warm-starts a fresh run.
    `holdout` (a fraction): train on the rows outside a hash hold-out of the request ids
    (pipelines.split) and evaluate on the rows inside it; the dates may then overlap.
    """

    out = out.resolve()
    resumed = published_checkpoint(out / "checkpoint")
    spec = run_spec(load_feature_spec(cfg.features, spec_overrides), resumed, init_from)
    weight_group_count(cfg.weighting, spec)  # weighting.groups needs the spec's domain column
    if resumed is not None and (resumed / "config.yaml").is_file():
        # read as a RunConfig: settings added since it was saved take their defaults, as in that run
        saved = run_config_from_dict(yaml.safe_load((resumed / "config.yaml").read_text()))
        changed = config_differences(to_dict(saved), to_dict(cfg))
        if changed:  # a resume continues the run it finds: another recipe would be a different run
            raise ConfigError(
                f"{out}: resume refused: this --out holds a run trained with other settings "
                f"({resumed / 'config.yaml'}): {'; '.join(changed)}. A run re-run with the same "
                "settings resumes (a finished one is evaluated again); to train on with new settings "
                f"(more epochs, another rate), warm-start a new run: --init-from {resumed} --out NEW_DIR"
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    save_feature_spec(spec, out)
    inspect = partial(
        inspect_logs,
        logs,
        spec=spec,
        on_bad_files=cfg.data.on_bad_files,
        on_bad_rows=cfg.data.on_bad_rows,
        check_ids=cfg.data.check_duplicate_ids,
    )
    train_inventory = inspect(parse_dates(train_dates))
    eval_inventory = inspect(parse_dates(eval_dates), like=train_inventory)  # no type drift between them
    if eval_inventory.rows == 0:
        raise BadInputError(
            f"eval dates {eval_dates}: no rows to score: {len(eval_inventory.files)} files of 0 rows "
            f"({', '.join(f.path for f in eval_inventory.files[:3])})"
        )
    overlap = {f.date for f in train_inventory.files} & {f.date for f in eval_inventory.files}
    if overlap and holdout is None:
        raise ValueError(f"train and eval dates overlap: {sorted(str(d) for d in overlap)}")
    if holdout is None:  # a hold-out splits one day's ids in two: they are disjoint by construction
        shared_ids(train_inventory, eval_inventory, spec.id_column)

    start_ray(address)
    quarantine = out / "quarantine"
    if resumed is not None and resumed.name != "checkpoint":  # a crash between publish's two renames
        resumed.rename(out / "checkpoint")
    if resumed is not None and (out / "feature_stats.json").is_file():
        stats = FeatureStats.load(out / "feature_stats.json")  # the scaling the checkpoint was trained with
    elif init_from and (Path(init_from) / "feature_stats.json").is_file():
        # A warm start keeps the scaling its weights were trained with: new statistics would shift
        # every dense input under the same weights.
        stats = FeatureStats.load(Path(init_from) / "feature_stats.json")
        stats.save(out / "feature_stats.json")
    else:
        stats = compute_stats(train_inventory, spec, cfg.data, quarantine)
        stats.save(out / "feature_stats.json")
    spaces = required_spaces(cfg.tasks, spec)
    daily_train = HoldoutSplit(holdout, "train", spec.row_id_column) if holdout else None
    validation = cfg.train.validation_fraction
    valid_side = lambda side: (  # noqa: E731
        HoldoutSplit(validation, side, spec.row_id_column, VALIDATION_SALT) if validation else None
    )
    build = partial(
        build_dataset, spec=spec, stats=stats, spaces=spaces, data=cfg.data, quarantine_dir=quarantine
    )
    datasets = {
        "train": build(
            train_inventory,
            position_file=out / "checkpoint" / POSITION_FILE,
            split=combine(daily_train, valid_side("train")),
            shuffle_seed=cfg.train.seed if cfg.data.shuffle_buffer_rows else None,
        ),
        "eval": build(
            eval_inventory, split=HoldoutSplit(holdout, "holdout", spec.row_id_column) if holdout else None
        ),
    }
    if validation:  # scored after every epoch (early stopping); never trained on
        datasets["valid"] = build(train_inventory, split=combine(daily_train, valid_side("holdout")))
    layout = layout_for(spec, spaces, eval_inventory)

    trainer = make_trainer(
        train_worker,
        WorkerInputs(
            cfg,
            spec,
            stats,
            layout,
            str(out),
            train_inventory.rows,
            tuple(train_inventory.paths),
            str(Path(init_from).resolve()) if init_from else None,
            label_priors(train_inventory, cfg.tasks, spec) if cfg.weighting.method == "prior_loss" else None,
            # hash hold-outs keep their fraction of rows to within a fraction of a percent
            planned_rows_per_epoch=round(train_inventory.rows * (1 - (holdout or 0.0)) * (1 - validation)),
        ),
        datasets,
        workers=cfg.train.workers,
        cpus_per_worker=cfg.train.cpus_per_worker,
        name="train",
        storage_path=out / "ray",
        max_failures=cfg.train.max_failures,
        preserve_order=cfg.data.deterministic,
    )
    trainer.fit()
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["data"] = {
        "train_dates": train_dates,
        "eval_dates": eval_dates,
        "holdout": holdout,
        "train_rows_in_files": train_inventory.rows,
        "eval_rows_in_files": eval_inventory.rows,
        "quarantine": quarantine_summary(quarantine, spec.row_id_column),
        "skipped_files": train_inventory.skipped + eval_inventory.skipped,
        "ignored_files": train_inventory.ignored + eval_inventory.ignored,  # in day folders, not data
        "duplicate_ids": {  # repeats of an earlier row's id: set aside (quarantine) under their reason
            "checked": train_inventory.ids.checked,
            "train": train_inventory.ids.by_file,
            "eval": eval_inventory.ids.by_file,
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def metrics_table(metrics: dict, title: str = "") -> str:
    lines = [
        f"{title}",
        "| task | space | rows | positives | AUC | oracle AUC | gap | logloss |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in metrics["tasks"].items():
        fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        gap = m["oracle_auc"] - m["auc"] if m["auc"] is not None and m.get("oracle_auc") is not None else None
        lines.append(
            f"| {name} | {m['space']} | {m['rows']:,} | {m['positives']:,} | {fmt(m['auc'])} | "
            f"{fmt(m.get('oracle_auc'))} | {fmt(gap)} | {fmt(m['logloss'])} |"
        )
    train = metrics["train"]
    lines.append(
        f"\ntrained on {train['rows']:,} rows in {train['seconds']:.1f} s "
        f"({train['samples_per_s']:,.0f} samples/s, {train['workers']} workers)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m jobs.train` (infra/ manifests are checked against it)."""
    parser = argparse.ArgumentParser(
        prog="python -m jobs.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--logs", required=True)
    parser.add_argument("--train-dates", required=True)
    parser.add_argument("--eval-dates", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--spec-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="feature-spec override, e.g. tables.user_id.num_embeddings=100000",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address; default starts a local Ray")
    parser.add_argument("--init-from", default=None, help="checkpoint directory to warm-start from")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    cfg = load_run_config(args.config, args.set)
    metrics = train(
        cfg,
        args.logs,
        args.train_dates,
        args.eval_dates,
        args.out,
        tuple(args.spec_set),
        args.address,
        args.init_from,
    )
    print(metrics_table(metrics, f"# {args.config}: {args.train_dates} -> {args.eval_dates}"))
    print(f"\nrun directory: {args.out}")


if __name__ == "__main__":
    run_job(main)
