"""The per-worker training loop, run by Ray Train's TorchTrainer on every rank.

One flat loop: batches -> DMP model -> per-task losses on their sample spaces (normalised by the
global in-space count) -> weighted sum (mtl_rec.weighting) -> one backward (fused table optimizer
inside it) -> [gradient surgery on the backbone] -> dense optimizer step. Then exact evaluation over
every held-out row, and a sharded checkpoint.

Ranks stay in lockstep without dropping rows: the dataset is split with equal=False (no rows
dropped; Ray's equal=True drops up to world-1), and `lockstep` all-reduces one small tensor per step.
A rank that runs out before the others feeds a 1-row padding batch whose masks are all False: zero
loss, zero gradient, but the same collectives as everybody else, so DMP's all-to-alls never hang.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from ray.train import DataConfig as RayDataConfig

from mtl_rec.batch import Batch
from mtl_rec.config.features import SPEC_FILE, spec_yaml
from mtl_rec.config.loader import to_dict
from mtl_rec.config.run import RunConfig
from mtl_rec.quiet import quiet_libraries


class NoDropDataConfig(RayDataConfig):
    """Ray Train's DataConfig, but every dataset is split with equal=False: no row is dropped.
    `preserve_order` keeps block order (reproducible single-worker runs)."""

    def __init__(self, preserve_order: bool = False) -> None:
        super().__init__()
        self.preserve_order = preserve_order

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            ds.context.execution_options.preserve_order = self.preserve_order
            for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                output[i][name] = split
        return output


@dataclass(frozen=True)
class WorkerInputs:
    """Everything a worker needs besides its dataset shards (picklable, sent once)."""

    run: RunConfig
    spec: object  # FeatureSpec, resolved on the driver (workers run in another directory)
    stats: object  # FeatureStats
    layout: object  # pipelines.collate.BatchLayout
    run_dir: str
    train_rows: int  # rows in the training files (footers), for progress
    train_files: tuple[str, ...] = ()  # the training inventory's paths, in order (data positions)
    init_from: str | None = None  # a checkpoint to warm-start from (a fresh run only)
    label_priors: dict | None = None  # {task: positive rate over its space}, for weighting=prior_loss
    # rows an epoch trains (the files' rows outside the hold-outs): the LR schedule's length; 0: train_rows
    planned_rows_per_epoch: int = 0


def padding_batch(layout, spec) -> Batch:
    """A 1-row batch in no sample space: row 0 of every table, zero dense, all masks False."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    keys = list(layout.sparse)
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.zeros(len(keys), dtype=torch.int64),
        lengths=torch.ones(len(keys), dtype=torch.int32),
    )
    zeros = torch.zeros(1)
    return Batch(
        sparse=sparse,
        dense=torch.zeros(1, spec.num_dense),
        labels={name: zeros.clone() for name in layout.labels},
        masks={name: torch.zeros(1, dtype=torch.bool) for name in layout.masks},
        ids=torch.full((1,), -1, dtype=torch.int64),
        meta={name: torch.zeros(1, dtype=torch.float32) for name in layout.meta},
    )


def lockstep(batches: Iterator[Batch], padding: Batch) -> Iterator[tuple[Batch, bool, int]]:
    """Yield (batch, is_real, global_rows) until EVERY rank is out of batches (see module doc)."""
    from mtl_rec.distributed import all_reduce_sum

    batches = iter(batches)
    while True:
        batch = next(batches, None)
        state = torch.tensor([0 if batch is None else 1, 0 if batch is None else batch.batch_size])  # [2]
        ranks_with_data, global_rows = all_reduce_sum(state).tolist()
        if ranks_with_data == 0:
            return
        yield (padding, False, global_rows) if batch is None else (batch, True, global_rows)


def train_worker(inputs: WorkerInputs) -> None:
    """Ray Train's train_loop_per_worker. Rank 0 writes RUN_DIR/metrics.json and plan.json.

    Resumes from RUN_DIR/checkpoint when one is published (a restart after a worker failure, or a
    re-run): weights, optimizers, weighting state, history and the data position (mtl_rec.run_state).
    Otherwise `inputs.init_from` (a checkpoint path) warm-starts the weights (and the optimizers,
    where the sharding plan agrees).
    """
    import ray.train
    from tqdm import tqdm

    from mtl_rec.checkpoint import load_checkpoint, save_checkpoint
    from mtl_rec.distributed import all_reduce_sum, rank, world_size
    from mtl_rec.early_stopping import EarlyStopping
    from mtl_rec.losses import auxiliary_losses, task_losses
    from mtl_rec.models.model import MultiTaskModel
    from mtl_rec.run_state import RunProgress
    from mtl_rec.schedule import LRSchedule, ScheduledLR
    from mtl_rec.sharding import describe_plan, plan_to_json, shard_model
    from mtl_rec.weighting import build_weighting
    from pipelines.dataset import iter_batches, start_early

    quiet_libraries()
    cfg, spec, run_dir = inputs.run, inputs.spec, Path(inputs.run_dir)
    world = world_size()
    torch.set_num_threads(cfg.train.torch_threads or max(1, (os.cpu_count() or 1) // max(world, 1)))

    def epoch_batches(epoch: int):  # the read tasks skip the rows that the published checkpoint covers
        shard = ray.train.get_dataset_shard("train")
        seed = (cfg.train.seed * 1_000_003 + epoch) * 1009 + rank()  # another order every epoch and rank
        return iter_batches(
            shard, inputs.layout, cfg.data.batch_size, cfg.data.prefetch_batches,
            shuffle_buffer_rows=cfg.data.shuffle_buffer_rows, shuffle_seed=seed,
        )  # fmt: skip

    # The shard's start-up (split coordinator, read tasks) overlaps building and sharding the model.
    # (A run resumed in a later epoch draws its first epoch's shuffle with epoch 0's seed.)
    first_epoch = None if cfg.train.prebuilt_batches else start_early(epoch_batches(0))
    torch.manual_seed(cfg.train.seed)  # the same initial dense weights on every rank
    device = torch.device(
        f"cuda:{ray.train.get_context().get_local_rank()}" if torch.cuda.is_available() else "cpu"
    )
    weighting = build_weighting(cfg.weighting, cfg.tasks, inputs.label_priors).to(device)
    sharded = shard_model(
        MultiTaskModel(spec, cfg.model, cfg.tasks),
        cfg,
        device,
        list(weighting.parameters()),
        pinned_types=_checkpoint_plan_types(run_dir, inputs.init_from),
    )
    model = sharded.model
    padding = padding_batch(inputs.layout, spec).to(device)
    aux_spaces = sharded.module.auxiliary_spaces()
    if weighting.requires_shared:  # gradient methods measure the per-task gradients on the backbone
        weighting.attach_shared(weighting.shared_parameters(sharded.module.backbone), bool(aux_spaces))
    plan_json = plan_to_json(sharded.plan)
    _write_worker_file(run_dir)
    if rank() == 0:
        (run_dir / "plan.json").write_text(plan_json)
        print(f"[rank 0] {describe_plan(sharded.plan, world)}; shards in {run_dir / 'plan.json'}", flush=True)

    # Every checkpoint (RUN_DIR/checkpoint, RUN_DIR/best) describes itself: scoring, warm start and
    # resume read its spec and statistics, never the working copy's features file.
    checkpoint_files = {
        "plan.json": plan_json,
        "config.yaml": _yaml(to_dict(cfg)),
        SPEC_FILE: spec_yaml(spec),
        "feature_stats.json": json.dumps(to_dict(inputs.stats), indent=2),
    }
    run = RunProgress.start(
        sharded, weighting, run_dir, inputs.train_files, cfg.train.epochs, plan_json, cfg.train.audit_ids
    )
    warm_start = _warm_start(sharded, weighting, inputs.init_from, plan_json) if run.step == 0 else None
    if rank() == 0 and run.resumed_from:
        print(f"[rank 0] resumed from the checkpoint at {run.resumed_from}", flush=True)

    def checkpoint() -> None:
        manifest = {"world_size": world, "done": run.done}
        run.checkpoint(sharded, weighting, run_dir / "checkpoint", checkpoint_files, manifest)

    # Every step's learning rates (dense and fused tables) from one schedule over the planned rows.
    planned_rows = max(1, (inputs.planned_rows_per_epoch or inputs.train_rows) * cfg.train.epochs)
    schedule = LRSchedule(cfg.train.warmup_fraction, cfg.train.lr_schedule, cfg.train.lr_min_ratio)
    learning_rates = ScheduledLR(
        schedule,
        [sharded.dense_optimizer, sharded.table_optimizer],
        fused=getattr(model, "fused_optimizer", None),
    )
    stopping = EarlyStopping(cfg.train.early_stopping_patience, run.validation)

    history, rows_at_start, start = run.history, run.position.rows, time.perf_counter()
    progress = tqdm(
        total=inputs.train_rows * cfg.train.epochs,
        unit="rows",
        disable=rank() != 0,
        desc="train",
        mininterval=5.0,  # through Ray's log relay every refresh is a line of its own
    )
    progress.update(run.position.rows)
    model.train()
    prebuilt = None
    if cfg.train.prebuilt_batches:
        prebuilt = list(epoch_batches())
        start = time.perf_counter()
    every = cfg.train.checkpoint_every
    stop = lambda: cfg.train.max_steps and run.step >= cfg.train.max_steps  # noqa: E731
    while not run.done and not stop():
        if first_epoch is not None:
            batches, first_epoch = first_epoch, None
        elif prebuilt is None:
            batches = epoch_batches(run.epoch)
        else:
            batches = iter(prebuilt)
        for batch, real, global_rows in lockstep(batches, padding):
            batch = batch.to(device, non_blocking=True) if real else batch
            # the share of planned rows done at the end of this step (all ranks' rows), set before
            # forward: the fused table optimizer runs inside backward
            done = (run.position.rows + global_rows) / planned_rows
            if cfg.train.max_steps:
                done = max(done, (run.step + 1) / cfg.train.max_steps)
            learning_rates.apply(done)
            outputs = model(batch)
            losses = task_losses(outputs, batch, cfg.tasks)
            total, weights = weighting.combine(losses.losses, run.step)  # identical weights on every rank
            aux = auxiliary_losses(outputs.aux, aux_spaces, batch)  # regularisers, added unweighted
            if aux:
                total = total + torch.stack(list(aux.values())).sum()
            sharded.zero_grad()
            total.backward()  # the fused table optimizer runs in here
            # surgery methods replace the (summed) shared gradients; their weights are those it got
            weights = weighting.after_backward() or weights
            weighting.sync_gradients()  # learnable loss weights live outside DDP
            sharded.step()
            if real:
                run.record(batch, global_rows)
            else:
                run.count_padding_step(global_rows)
            progress.update(global_rows)
            if run.step % cfg.train.log_every == 0:
                names = list(losses.losses)
                totals = all_reduce_sum(torch.stack([losses.losses[n].detach() for n in names])).tolist()
                seconds = time.perf_counter() - start
                rows_now = run.position.rows - rows_at_start
                history.append(
                    {
                        "step": run.step,
                        "epoch": run.epoch,
                        "rows": run.position.rows,
                        "seconds": seconds,
                        "samples_per_s": rows_now / seconds,
                        "loss": dict(zip(names, totals)),
                        "weights": weights,
                    }
                )
                if aux:
                    aux_totals = all_reduce_sum(torch.stack(list(aux.values())).detach()).tolist()
                    history[-1]["aux"] = dict(zip(aux, aux_totals))
                if weighting.last_cosines:  # gradient methods: cosines of the global task gradients
                    history[-1]["grad_cosine"] = dict(weighting.last_cosines)
                progress.set_postfix(
                    samples_s=f"{rows_now / seconds:,.0f}", **{n: f"{v:.4f}" for n, v in zip(names, totals)}
                )
            if every and run.step % every == 0 and not stop():
                checkpoint()
            if stop():
                break  # the same step on every rank (lockstep), so all ranks leave together
        if not stop():
            run.end_epoch()  # the epoch's rows are all trained: the next epoch reads every row
            if cfg.train.validation_fraction:
                validation = evaluate(model, inputs, spec, cfg, padding, device, dataset="valid")
                if stopping.update(run.epoch, run.step, validation):
                    save_checkpoint(
                        sharded, run_dir / "best", files=checkpoint_files, manifest={"epoch": run.epoch}
                    )
                if rank() == 0:
                    score, best_epoch = (
                        stopping.history[-1]["validation_score"],
                        (stopping.best or {}).get("epoch"),
                    )
                    print(
                        f"[rank 0] epoch {run.epoch}: validation NE {score} (best epoch {best_epoch})",
                        flush=True,
                    )
                if stopping.should_stop:
                    run.position.epoch = cfg.train.epochs  # done: no better epoch for `patience` epochs
            if every and not run.done:
                checkpoint()
    run.position.epoch = max(run.epoch, cfg.train.epochs)  # max_steps ends training early: done
    train_seconds = time.perf_counter() - start
    progress.close()
    best = stopping.best
    if best is not None and best["step"] != run.step:  # a later epoch was worse: keep the best one's
        load_checkpoint(sharded, run_dir / "best", current_plan_json=plan_json)
    checkpoint()  # before evaluation: a failure while evaluating resumes straight to evaluation

    metrics = evaluate(model, inputs, spec, cfg, padding, device)
    peak_rss_mb = all_gather_floats(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    trained_rows = run.position.rows - rows_at_start
    summary = {
        "tasks": metrics,
        "train": {
            "rows": run.position.rows,
            "rows_this_attempt": trained_rows,
            "seconds": train_seconds,
            "steps": run.step,
            "samples_per_s": trained_rows / train_seconds if train_seconds > 0 else None,
            "workers": world,
            "peak_rss_mb_per_worker": peak_rss_mb,
            "resumed_from": run.resumed_from,
            "warm_start": warm_start,
            "validation": run.validation,  # per epoch: metrics on the validation rows and their score
            "best_epoch": best and best["epoch"],  # the epoch whose weights were kept
            "history": history,
        },
    }
    if rank() == 0:
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    ray.train.report({"samples_per_s": summary["train"]["samples_per_s"] or 0.0})


def _checkpoint_plan_types(run_dir: Path, init_from: str | None) -> dict[str, str] | None:
    """The sharding types of the checkpoint this run will load (its own, to resume, else the warm
    start's), so its optimizer state fits; None for a cold start."""
    from mtl_rec.checkpoint import published_checkpoint
    from mtl_rec.sharding import plan_types

    source = published_checkpoint(run_dir / "checkpoint") or (Path(init_from) if init_from else None)
    if source is None or not (source / "plan.json").is_file():
        return None
    return plan_types((source / "plan.json").read_text())


def _warm_start(sharded, weighting, init_from: str | None, plan_json: str) -> dict | None:
    """Load a checkpoint's weights (and optimizers and weighting state, where the plan agrees)."""
    if not init_from:
        return None
    from mtl_rec.checkpoint import CheckpointMismatch, load_checkpoint
    from mtl_rec.distributed import rank

    try:
        loaded = load_checkpoint(sharded, init_from, current_plan_json=plan_json)
        optimizers = "dense_optimizer" in loaded.replicated  # a weights-only checkpoint has none
    except CheckpointMismatch as mismatch:
        if rank() == 0:
            print(f"[rank 0] warm start: weights only ({mismatch})", flush=True)
        loaded = load_checkpoint(sharded, init_from, weights_only=True)
        optimizers = False
    if "weighting" in loaded.replicated:
        weighting.load_state_dict(loaded.replicated["weighting"])
    return {"from": str(init_from), "optimizers": optimizers, "steps": loaded.manifest.get("step")}


def _write_worker_file(run_dir: Path) -> None:
    """RUN_DIR/workers/rank<R>.json: this process's pid, Ray node and start time (operators and
    fault tests)."""
    from mtl_rec.distributed import rank

    folder = run_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    node = ray.get_runtime_context().get_node_id()
    info = {"pid": os.getpid(), "rank": rank(), "node": node, "started": time.time()}
    (folder / f"rank{rank()}.json").write_text(json.dumps(info))


@torch.no_grad()  # not inference_mode: gloo collectives fail inside it
def evaluate(
    model, inputs: WorkerInputs, spec, cfg: RunConfig, padding: Batch, device, dataset: str = "eval"
) -> dict:
    """Exact per-target metrics over every row of `dataset` across ranks (see mtl_rec.metrics)."""
    import ray.train

    from mtl_rec.metrics import MetricAccumulator, eval_targets
    from pipelines.dataset import iter_batches

    model.eval()
    accumulator = MetricAccumulator(eval_targets(cfg.tasks, spec))
    shard = ray.train.get_dataset_shard(dataset)
    batches = iter_batches(shard, inputs.layout, cfg.data.eval_batch_size, cfg.data.prefetch_batches)
    for batch, real, _ in lockstep(batches, padding):
        batch = batch.to(device, non_blocking=True) if real else batch
        outputs = model(batch)
        if real:
            accumulator.update(outputs, batch)
    model.train()
    return accumulator.compute()


def all_gather_floats(value: float) -> list[float]:
    """One float from every rank, in rank order."""
    import numpy as np

    from mtl_rec.distributed import gather_concat

    return gather_concat(np.array([value], dtype=np.float64)).tolist()


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
