"""What every Ray Train worker of mtl-rec shares, training and scoring alike.

- `make_trainer`: the TorchTrainer (gloo on CPU, NCCL where the cluster has GPUs; one worker per
  GPU by default), datasets split with `NoDropDataConfig` (jobs/worker/data_config.py).
- `start_worker`: quiet libraries, torch threads, the worker's device.
- `sharded_from`: the MultiTaskModel sharded by DMP, with the sharding types of the checkpoint it
  will load pinned, so the checkpoint's optimizer state fits.
- `lockstep` and `padding_batch`: ranks stay in lockstep without dropping rows. The dataset is split
  with equal=False (Ray's equal=True drops up to world-1 rows), and `lockstep` all-reduces one small
  tensor per step. A rank that runs out before the others feeds a 1-row padding batch whose masks are
  all False: zero loss, zero gradient, but the same collectives as everybody else, so DMP's
  all-to-alls never hang. `forward_in_lockstep` is the scoring loop built on it.

Example::

    >>> trainer = make_trainer(train_worker, inputs, datasets, workers=2, cpus_per_worker=0.5,
    ...                        name="train", storage_path=out / "ray")
    >>> trainer.fit()
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import ray
import ray.train
import torch
from ray.train.torch import TorchConfig, TorchTrainer
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from jobs.worker.data_config import NoDropDataConfig
from mtl_rec.batch import Batch
from mtl_rec.config.features import FeatureSpec
from mtl_rec.config.run import RunConfig
from mtl_rec.distributed import all_reduce_sum, rank, world_size
from mtl_rec.models.heads import TaskOutputs
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.quiet import quiet_libraries
from mtl_rec.sharding import ShardedModel, plan_types, shard_model
from mtl_rec.step import StepBatch
from pipelines.collate import BatchLayout


def make_trainer(
    loop: Callable,
    loop_config: object,
    datasets: dict,
    *,
    workers: int,
    cpus_per_worker: float,
    name: str,
    storage_path: Path,
    max_failures: int = 0,
    preserve_order: bool = False,
) -> TorchTrainer:
    """A TorchTrainer running `loop(loop_config)` on `workers` workers (0: one per GPU of the
    cluster, else 2), each reserving `cpus_per_worker` CPUs; `datasets` split without dropping rows."""
    # The cluster's GPUs, not the driver's: under KubeRay the head (and the job's driver) has none.
    gpus = int(ray.cluster_resources().get("GPU", 0))
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers or gpus or 2, use_gpu=gpus > 0, resources_per_worker={"CPU": cpus_per_worker}
        ),
        datasets=datasets,
        dataset_config=NoDropDataConfig(preserve_order=preserve_order),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # the controller's and workers' own INFO lines (resources requested, group started, each
            # report) are in the run's Ray Train log files; the console keeps warnings and errors
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def rank0_print(text: str) -> None:
    """One line on the driver's console, from rank 0. Ray Train patches print() to log each line
    through the root logger and, where Ray has wrapped sys.stdout, to print it as well: the same line
    twice. The process's own stdout takes it once."""
    if rank() == 0:
        print(text, file=sys.__stdout__, flush=True)


def start_worker(torch_threads: int = 0) -> torch.device:
    """First thing in a worker: quiet known-benign library output, set the intra-op threads
    (0: the cores shared among this machine's workers), and return this worker's device."""
    quiet_libraries()
    torch.set_num_threads(torch_threads or max(1, (os.cpu_count() or 1) // max(world_size(), 1)))
    if torch.cuda.is_available():
        return torch.device(f"cuda:{ray.train.get_context().get_local_rank()}")
    return torch.device("cpu")


def sharded_from(
    spec: FeatureSpec,
    cfg: RunConfig,
    device: torch.device,
    checkpoint: Path | None = None,
    extra_params: list | None = None,
) -> ShardedModel:
    """MultiTaskModel(spec, cfg) sharded by DMP on `device`. With `checkpoint` (the one this worker
    will load), each table keeps the sharding type its plan.json records, so the optimizer state
    saved for it fits; `extra_params` join the dense optimizer (learnable loss weights)."""
    plan = checkpoint / "plan.json" if checkpoint is not None else None
    pinned = plan_types(plan.read_text()) if plan is not None and plan.is_file() else None
    module = MultiTaskModel(spec, cfg.model, cfg.tasks)
    return shard_model(module, cfg, device, extra_params or [], pinned_types=pinned)


def padding_batch(layout: BatchLayout, spec: FeatureSpec) -> Batch:
    """A 1-row batch in no sample space: row 0 of every table, zero dense, all masks False."""
    keys = list(layout.sparse)
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.zeros(len(keys), dtype=torch.int64),  # [K]: row 0, one id per feature
        lengths=torch.ones(len(keys), dtype=torch.int32),  # [K]
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


def lockstep(batches: Iterator[Batch], padding: Batch) -> Iterator[StepBatch]:
    """StepBatches until EVERY rank is out of batches (see module doc); a padding one where this
    rank is out. Collective: one all-reduce of a [2] tensor per step."""
    batches = iter(batches)
    while True:
        batch = next(batches, None)
        state = torch.tensor([0 if batch is None else 1, 0 if batch is None else batch.batch_size])  # [2]
        ranks_with_data, global_rows = all_reduce_sum(state).tolist()
        if ranks_with_data == 0:
            return
        yield StepBatch(padding, False, global_rows) if batch is None else StepBatch(batch, True, global_rows)


@torch.no_grad()  # not inference_mode: gloo collectives fail inside it
def forward_in_lockstep(
    model: torch.nn.Module, batches: Iterator[Batch], padding: Batch, device: torch.device
) -> Iterator[tuple[Batch, TaskOutputs]]:
    """(batch on `device`, model(batch)) for each of this rank's real batches, in eval mode. Every
    rank runs a forward every step, padding included: DMP's all-to-alls need all ranks."""
    was_training = model.training
    model.eval()
    try:
        for item in lockstep(batches, padding):
            batch = item.batch.to(device, non_blocking=True)
            outputs = model(batch)
            if item.real:
                yield batch, outputs
    finally:
        model.train(was_training)
