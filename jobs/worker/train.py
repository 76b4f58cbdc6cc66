"""The training worker, run by Ray Train's TorchTrainer on every rank (jobs.train starts it).

One flat loop: every epoch's batches, in lockstep across ranks (jobs.worker.runtime), each step's
learning rates set before its forward, then `TrainPipeline.progress` (mtl_rec.step): losses on their
sample spaces, weighting, one backward, optimizers. Then exact evaluation over every held-out row
and a sharded checkpoint. RunProgress (mtl_rec.run_state) counts every row once across restarts.

Example::

    >>> trainer = make_trainer(train_worker, WorkerInputs(cfg, spec, stats, layout, str(out), rows),
    ...                        datasets, workers=2, cpus_per_worker=0.5, name="train", storage_path=out)
    >>> trainer.fit()   # RUN_DIR/metrics.json, plan.json, checkpoint/
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import yaml
from tqdm import tqdm

from jobs.worker.runtime import (
    forward_in_lockstep,
    lockstep,
    padding_batch,
    rank0_print,
    sharded_from,
    start_worker,
)
from mtl_rec.calibration import LogitHistogram
from mtl_rec.checkpoint import CheckpointMismatch, load_checkpoint, published_checkpoint, save_checkpoint
from mtl_rec.config.features import SPEC_FILE, FeatureSpec, spec_yaml
from mtl_rec.config.loader import to_dict
from mtl_rec.config.run import RunConfig
from mtl_rec.config.stats import FeatureStats
from mtl_rec.config.weighting import weight_group_count
from mtl_rec.distributed import all_reduce_sum, gather_concat, rank, world_size
from mtl_rec.early_stopping import EarlyStopping
from mtl_rec.metrics import MetricAccumulator, eval_targets
from mtl_rec.run_state import RunProgress
from mtl_rec.schedule import LRSchedule, ScheduledLR
from mtl_rec.sharding import describe_plan, plan_to_json
from mtl_rec.step import StepBatch, StepResult, TrainPipeline
from mtl_rec.table_l2 import FrequencyL2, all_reduce_counts, count_table_rows
from mtl_rec.weighting import build_weighting
from pipelines.cache import ShardCache
from pipelines.collate import BatchLayout
from pipelines.dataset import collate_tables, iter_tables, start_early


@dataclass(frozen=True)
class WorkerInputs:
    """Everything a worker needs besides its dataset shards (picklable, sent once)."""

    run: RunConfig
    spec: FeatureSpec  # resolved on the driver (workers run in another directory)
    stats: FeatureStats
    layout: BatchLayout
    run_dir: str
    train_rows: int  # rows in the training files (footers), for progress
    train_files: tuple[str, ...] = ()  # the training inventory's paths, in order (data positions)
    init_from: str | None = None  # a checkpoint to warm-start from (a fresh run only)
    label_priors: dict | None = None  # {task: positive rate over its space}, for weighting=prior_loss
    # rows an epoch trains (the files' rows outside the hold-outs): the LR schedule's length; 0: train_rows
    planned_rows_per_epoch: int = 0


def train_worker(inputs: WorkerInputs) -> None:
    """Ray Train's train_loop_per_worker. Rank 0 writes RUN_DIR/metrics.json and plan.json.

    Resumes from RUN_DIR/checkpoint when one is published (a restart after a worker failure, or a
    re-run): weights, optimizers, weighting state, history and the data position. Otherwise
    `inputs.init_from` warm-starts the weights (and the optimizers, where the sharding plan agrees).
    """
    cfg, spec, run_dir = inputs.run, inputs.spec, Path(inputs.run_dir)
    device = start_worker(cfg.train.torch_threads)

    # this rank's rows, for the passes after a whole one (prebuilt batches hold them already)
    cache = ShardCache(0 if cfg.train.prebuilt_batches else cfg.data.cache_mb << 20)
    validation_cache = ShardCache(cfg.data.cache_mb << 20)  # its hold-out rows, scored every epoch

    def epoch_batches(epoch: int, from_cache: bool = False) -> Iterator:
        seed = (cfg.train.seed * 1_000_003 + epoch) * 1009 + rank()  # another order every epoch and rank
        if from_cache:
            tables = cache.tables(cfg.data.batch_size, seed if cfg.data.shuffle_buffer_rows else None)
        else:  # the read tasks skip the rows the checkpoint covers
            tables = cache.keep(iter_tables(
                ray.train.get_dataset_shard("train"), cfg.data.batch_size, cfg.data.prefetch_batches,
                shuffle_buffer_rows=cfg.data.shuffle_buffer_rows, shuffle_seed=seed,
            ))  # fmt: skip
        return collate_tables(tables, inputs.layout)

    # The shard's start-up (the executor, read tasks; a split coordinator with several workers)
    # overlaps building and sharding the model.
    # (A run resumed in a later epoch draws its first epoch's shuffle with epoch 0's seed.)
    first_epoch = None if cfg.train.prebuilt_batches else start_early(epoch_batches(0))
    torch.manual_seed(cfg.train.seed)  # the same initial dense weights on every rank
    groups = weight_group_count(cfg.weighting, spec)  # 0: one weight vector for every row
    weighting = build_weighting(cfg.weighting, cfg.tasks, inputs.label_priors, groups).to(device)
    to_load = published_checkpoint(run_dir / "checkpoint") or (
        Path(inputs.init_from) if inputs.init_from else None
    )
    sharded = sharded_from(spec, cfg, device, to_load, list(weighting.parameters()))
    # Every step's learning rates (dense and fused tables) from one schedule over the planned rows,
    # its base rates taken now, from the config: a checkpoint's optimizers hold the rates of its last
    # step (0 for the dense layers after a tables-only phase), which must not become a resumed or
    # warm-started run's base.
    schedule = LRSchedule(cfg.train.warmup_fraction, cfg.train.lr_schedule, cfg.train.lr_min_ratio)
    learning_rates = ScheduledLR(
        schedule,
        [sharded.dense_optimizer, sharded.table_optimizer],
        getattr(sharded.model, "fused_optimizer", None),
    )
    padding = padding_batch(inputs.layout, spec).to(device)
    plan_json = _publish_plan(sharded.plan, run_dir)
    checkpoint_files = {  # every checkpoint describes itself: scoring and resume never read the working copy
        "plan.json": plan_json,
        "config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
        SPEC_FILE: spec_yaml(spec),
        "feature_stats.json": json.dumps(to_dict(inputs.stats), indent=2),
    }
    run = RunProgress.start(
        sharded, weighting, run_dir, inputs.train_files, cfg.train.epochs, plan_json, cfg.train.audit_ids
    )
    warm_start = _warm_start(sharded, weighting, inputs.init_from, plan_json) if run.step == 0 else None
    if run.resumed_from:
        rank0_print(f"[rank 0] resumed from the checkpoint at {run.resumed_from}")

    def checkpoint() -> None:
        manifest = {"world_size": world_size(), "done": run.done}
        run.checkpoint(sharded, weighting, run_dir / "checkpoint", checkpoint_files, manifest)

    pipeline = TrainPipeline(sharded.model, sharded.module, sharded, weighting, cfg.tasks, device, run.step)
    planned_rows_per_epoch = max(1, inputs.planned_rows_per_epoch or inputs.train_rows)
    planned_rows = planned_rows_per_epoch * cfg.train.epochs

    def scheduled(steps: Iterator[StepBatch]) -> Iterator[StepBatch]:
        # the rows trained before this epoch (a resumed epoch's consumed rows are this epoch's)
        epoch_start = run.position.rows - run.position.consumed_rows
        # set as progress() pulls the item, before forward: the fused optimizer runs in backward
        for item in steps:
            if cfg.train.lr_cycle == "epoch":  # the planned share of this epoch done after it
                done = (run.position.rows - epoch_start + item.global_rows) / planned_rows_per_epoch
            else:  # the planned share of the run done after it
                done = (run.position.rows + item.global_rows) / planned_rows
            if cfg.train.max_steps:
                done = max(done, (run.step + 1) / cfg.train.max_steps)
            learning_rates.apply(done, warmup=run.epoch == 0 or cfg.train.lr_cycle == "run")
            if tables_only:  # the tables-only phase: the dense layers keep their best epoch's weights
                for group in sharded.dense_optimizer.param_groups:
                    group["lr"] = 0.0
            yield item

    stopping = EarlyStopping(
        cfg.train.early_stopping_patience, run.validation, cfg.train.validation_metric, cfg.train.tables_phase
    )
    tables_only = False

    def begin_tables_phase() -> None:
        nonlocal tables_only
        tables_only = True
        rank0_print(f"[rank 0] tables-only phase from epoch {stopping.tables_phase_from}: best epoch "
                    f"{stopping.best['epoch']} restored, dense layers frozen")  # fmt: skip

    if stopping.tables_phase_from is not None and not run.done:  # resumed inside the phase
        begin_tables_phase()
    prebuilt = list(epoch_batches(0)) if cfg.train.prebuilt_batches else None
    if cfg.train.table_l2 > 0:
        if run.table_counts is None:  # a fresh run: count every table row's lookups over all ranks' rows
            if run.position.rows:
                raise RuntimeError(f"train.table_l2 was switched on for a run resumed at step {run.step}: "
                                   "its counts need every training row; start a new run")  # fmt: skip
            if prebuilt is None:  # the first read (kept in memory if it fits, for the first pass)
                batches, first_epoch = first_epoch or epoch_batches(0), None
            local = count_table_rows(batches if prebuilt is None else prebuilt, spec)
            cache.complete(whole_pass=prebuilt is None)
            run.table_counts = all_reduce_counts(local)
        pipeline.table_regulariser = FrequencyL2(spec, run.table_counts, cfg.train.table_l2).to(device)
    stop = lambda: cfg.train.max_steps and run.step >= cfg.train.max_steps  # noqa: E731
    every = cfg.train.checkpoint_every
    bar = _epoch_bar(run.epoch, inputs, run.position.consumed_rows, shown=not run.done)
    rows_at_start, start, epochs_from_memory = run.position.rows, time.perf_counter(), 0
    while not run.done and not stop():
        whole_pass = run.position.consumed_rows == 0  # a resumed epoch reads only what is left
        if first_epoch is not None:
            batches, first_epoch = first_epoch, None
        elif prebuilt is not None:
            batches = iter(prebuilt)
        else:
            from_memory = cache.ready_on_every_rank()
            epochs_from_memory += from_memory
            batches = epoch_batches(run.epoch, from_memory)
        steps = scheduled(lockstep(batches, padding))
        while not stop():  # max_steps: the same step on every rank (lockstep), so all ranks leave together
            try:
                result = pipeline.progress(steps)
            except StopIteration:
                break
            if result.real:
                run.record(result.batch, result.global_rows)
            else:
                run.count_padding_step(result.global_rows)
            bar.total = max(bar.total, bar.n + result.global_rows)  # the hold-outs' share is approximate
            bar.update(result.global_rows)
            if run.step % cfg.train.log_every == 0:
                entry = _history_entry(result, run, rows_at_start, time.perf_counter() - start)
                entry["dense_lr"] = sharded.dense_optimizer.param_groups[0]["lr"]  # 0: tables-only phase
                run.history.append(entry)
                bar.set_postfix(samples_s=f"{entry['samples_per_s']:,.0f}", **entry["loss"])
            if every and run.step % every == 0 and not stop():
                checkpoint()
        if not stop():
            bar.close()
            cache.complete(whole_pass)
            run.end_epoch()  # the epoch's rows are all trained: the next epoch reads every row
            if cfg.train.validation_fraction:
                validation = evaluate(sharded.model, inputs, padding, device, "valid", validation_cache)
                if stopping.update(run.epoch, run.step, validation):
                    save_checkpoint(
                        sharded, run_dir / "best", files=checkpoint_files, manifest={"epoch": run.epoch}
                    )
                _print_validation(stopping, run.epoch)
                if stopping.tables_phase_from == run.epoch and not run.done:  # would stop: tables alone
                    load_checkpoint(sharded, run_dir / "best", current_plan_json=plan_json)
                    begin_tables_phase()
                if stopping.should_stop:
                    run.position.epoch = cfg.train.epochs  # done: no better epoch for `patience` epochs
            if every and not run.done:
                checkpoint()
            if not run.done:
                bar = _epoch_bar(run.epoch, inputs)
    run.position.epoch = max(run.epoch, cfg.train.epochs)  # max_steps ends training early: done
    train_seconds = time.perf_counter() - start
    bar.close()
    # a later epoch was worse: back to the best one, unless a resumed run's checkpoint holds it
    # already, calibrated (RUN_DIR/best predates the calibration)
    if stopping.best is not None and stopping.best["step"] != run.step and run.calibration is None:
        load_checkpoint(sharded, run_dir / "best", current_plan_json=plan_json)
    if cfg.train.calibration == "platt" and run.calibration is None:  # not again after a restart
        run.calibration = calibrate(sharded, inputs, padding, device, validation_cache)
    checkpoint()  # before evaluation: a failure while evaluating resumes straight to evaluation
    metrics = evaluate(sharded.model, inputs, padding, device)
    summary = _summary(metrics, run, rows_at_start, train_seconds, warm_start, stopping, epochs_from_memory)
    if rank() == 0:
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    ray.train.report({"samples_per_s": summary["train"]["samples_per_s"] or 0.0})


def evaluate(
    model, inputs: WorkerInputs, padding, device, dataset: str = "eval", cache: ShardCache | None = None
) -> dict:
    """Exact per-target metrics over every row of `dataset` across ranks (see mtl_rec.metrics)."""
    accumulator = MetricAccumulator(eval_targets(inputs.run.tasks, inputs.spec))
    for batch, outputs in _forward_shard(model, inputs, padding, device, dataset, cache):
        accumulator.update(outputs, batch)
    return accumulator.compute()


def _forward_shard(
    model, inputs: WorkerInputs, padding, device, dataset: str, cache: ShardCache | None = None
) -> Iterator:
    """(batch, model(batch)) over every row of this rank's shard of `dataset`, in lockstep; with a
    cache, from memory once a whole pass was kept (the hold-out is scored every epoch)."""
    data = inputs.run.data
    if cache is not None and cache.ready_on_every_rank():
        tables = cache.tables(data.eval_batch_size, seed=None)
    else:
        shard = ray.train.get_dataset_shard(dataset)
        tables = iter_tables(shard, data.eval_batch_size, data.prefetch_batches)
        tables = tables if cache is None else cache.keep(tables)
    yield from forward_in_lockstep(model, collate_tables(tables, inputs.layout), padding, device)
    if cache is not None:
        cache.complete(whole_pass=True)  # scoring reads every row


def calibrate(sharded, inputs: WorkerInputs, padding, device, cache: ShardCache | None = None) -> dict:
    """Collective: fit every task's Platt calibration on the validation rows and apply it to the
    model (mtl_rec.calibration). Returns {task: PlattFit as a dict} for metrics.json."""
    histogram = LogitHistogram(inputs.run.tasks)
    for batch, outputs in _forward_shard(sharded.model, inputs, padding, device, "valid", cache):
        histogram.update(outputs, batch)
    fits = histogram.fit()  # the same on every rank
    sharded.module.heads.calibrate({task: (fit.scale, fit.shift) for task, fit in fits.items()})
    rank0_print("[rank 0] calibration: " + ", ".join(f"{task} {fit.scale:.3f} x logit {fit.shift:+.3f} "
                f"(validation pred/obs {fit.pred_over_obs_before:.3f} -> {fit.pred_over_obs_after:.3f})"
                for task, fit in fits.items() if fit.pred_over_obs_before is not None))  # fmt: skip
    return {task: asdict(fit) for task, fit in fits.items()}


def _history_entry(result: StepResult, run: RunProgress, rows_at_start: int, seconds: float) -> dict:
    """One logged step of metrics.json train.history: global losses (summed over ranks) and weights."""
    names = list(result.losses.losses)
    totals = all_reduce_sum(torch.stack([result.losses.losses[n].detach() for n in names])).tolist()  # [T]
    entry = {
        "step": run.step,
        "epoch": run.epoch,
        "rows": run.position.rows,
        "seconds": seconds,
        "samples_per_s": (run.position.rows - rows_at_start) / seconds,
        "loss": dict(zip(names, totals, strict=True)),
        "weights": result.weights,
    }
    if result.aux:
        aux_totals = all_reduce_sum(torch.stack(list(result.aux.values())).detach()).tolist()  # [A]
        entry["aux"] = dict(zip(result.aux, aux_totals, strict=True))
    if result.cosines:
        entry["grad_cosine"] = result.cosines
    if result.group_weights is not None:  # weighting.groups: {group: {task: weight}}
        entry["group_weights"] = result.group_weights
    return entry


def _summary(
    metrics, run: RunProgress, rows_at_start, seconds, warm_start, stopping, epochs_from_memory
) -> dict:
    """metrics.json: the evaluation's per-target metrics and the run's training figures."""
    rows = run.position.rows - rows_at_start
    peak_rss_mb = gather_concat(np.array([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))
    best = stopping.best
    return {
        "tasks": metrics,
        "train": {
            "rows": run.position.rows,
            "rows_this_attempt": rows,
            "seconds": seconds,
            "steps": run.step,
            "samples_per_s": rows / seconds if seconds > 0 else None,
            "workers": world_size(),
            "peak_rss_mb_per_worker": peak_rss_mb.tolist(),  # in rank order
            "resumed_from": run.resumed_from,
            "epochs_from_memory": epochs_from_memory,  # this attempt's, read from data.cache_mb
            "warm_start": warm_start,
            "validation": run.validation,  # per epoch: metrics on the validation rows and their score
            "best_epoch": best and best["epoch"],  # the epoch whose weights were kept
            "tables_phase_from": stopping.tables_phase_from,  # the epoch it began after, or None
            "calibration": run.calibration,  # {task: Platt fit on the validation rows}, or None
            "history": run.history,
        },
    }


def _publish_plan(plan, run_dir: Path) -> str:
    """RUN_DIR/workers/rank<R>.json (pid, Ray node, start: operators and fault tests); rank 0 also
    writes RUN_DIR/plan.json and prints the plan in one line. Returns the plan's JSON."""
    plan_json = plan_to_json(plan)
    folder = run_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    node = ray.get_runtime_context().get_node_id()
    info = {"pid": os.getpid(), "rank": rank(), "node": node, "started": time.time()}
    (folder / f"rank{rank()}.json").write_text(json.dumps(info))
    if rank() == 0:
        (run_dir / "plan.json").write_text(plan_json)
        rank0_print(f"[rank 0] {describe_plan(plan, world_size())}; shards in {run_dir / 'plan.json'}")
    return plan_json


def _epoch_bar(epoch: int, inputs: WorkerInputs, done_rows: int = 0, shown: bool = True) -> tqdm:
    """Rank 0's progress over one epoch (early stopping decides how many there are); done_rows: the
    epoch's rows trained before a restart; shown=False for a resumed run that is already done.
    mininterval: through Ray's log relay every refresh is a line of its own."""
    bar = tqdm(
        total=inputs.planned_rows_per_epoch or inputs.train_rows,
        unit="rows",
        desc=f"epoch {epoch + 1}",
        disable=rank() != 0 or not shown,
        mininterval=5.0,
    )
    bar.update(done_rows)
    return bar


def _print_validation(stopping: EarlyStopping, epoch: int) -> None:
    score, best = stopping.history[-1]["validation_score"], (stopping.best or {}).get("epoch")
    shown = f"AUC {-score:.5f}" if stopping.metric == "auc" and score is not None else f"NE {score}"
    rank0_print(f"[rank 0] epoch {epoch}: validation {shown} (best epoch {best})")


def _warm_start(sharded, weighting, init_from: str | None, plan_json: str) -> dict | None:
    """Load a checkpoint's weights (and optimizers and weighting state, where the plan agrees)."""
    if not init_from:
        return None
    try:
        loaded = load_checkpoint(sharded, init_from, current_plan_json=plan_json)
        optimizers = "dense_optimizer" in loaded.replicated  # a weights-only checkpoint has none
    except CheckpointMismatch as mismatch:
        rank0_print(f"[rank 0] warm start: weights only ({mismatch})")
        loaded = load_checkpoint(sharded, init_from, weights_only=True)
        optimizers = False
    if "weighting" in loaded.replicated:
        weighting.load_state_dict(loaded.replicated["weighting"])
    return {"from": str(init_from), "optimizers": optimizers, "steps": loaded.manifest.get("step")}
