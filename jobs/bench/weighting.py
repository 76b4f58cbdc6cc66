"""Loss-weighting benchmark: per-step time of every method relative to fixed weights.

The reference MMoE (3 tasks) sharded by DMP on one gloo rank (fused table optimizer inside
backward), the same pre-built batches of day(0) for every method; median of `--weighting-steps`
steps after `--weighting-warmup` warm-up steps. Every method runs once per round, `--weighting-rounds`
rounds, and keeps its best median: on a shared machine a single pass puts whatever else was running
at that moment into one method's figure (fixed weights, the denominator, included).

Example::

    python -m jobs.bench weighting --out docs/bench-weighting.json
"""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from jobs.bench.common import day
from mtl_rec.metrics import required_spaces
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.run_config import load_run_config
from mtl_rec.sharding import shard_model
from mtl_rec.step import TrainPipeline
from mtl_rec.weighting import METHODS, build_weighting
from pipelines.collate import collate
from pipelines.dataset import layout_for
from pipelines.prepare import prepare_block
from pipelines.read import inspect_logs
from pipelines.transform import block_moments, reduce_moments


def _init_single_rank() -> None:
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29561")
        dist.init_process_group("gloo", rank=0, world_size=1)


def _batches(cfg, spec, cache: str) -> list:
    """Full batches of cfg.data.batch_size from the first file of day(0), validated and transformed."""
    inventory = inspect_logs(f"{cache}/logs", [day(0)], spec)
    table = pq.read_table(inventory.paths[0], columns=inventory.columns)
    stats = reduce_moments([block_moments(table, spec).to_pylist()[0]], spec)
    spaces = required_spaces(cfg.tasks, spec)
    prepared = prepare_block(table, inventory.paths[0], spec, stats, spaces, "error", None)
    layout = layout_for(spec, spaces, inventory)
    size = cfg.data.batch_size
    batches = [collate(prepared.slice(i, size), layout) for i in range(0, prepared.num_rows, size)]
    return [b for b in batches if b.batch_size == size]


def bench_weighting(args) -> dict:
    _init_single_rank()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_run_config(args.train_config, [f"data.batch_size={args.weighting_batch_size}"])
    spec = cfg.feature_spec()
    batches = _batches(cfg, spec, args.cache)
    priors = {t.name: 0.1 for t in cfg.tasks}
    rounds: dict[str, list[float]] = {method: [] for method in METHODS}
    kinds = {}
    for _ in range(args.weighting_rounds):
        for method in METHODS:
            step_ms, kinds[method] = _time_method(method, args, cfg, spec, batches, priors)
            rounds[method].append(step_ms)
    results = {
        method: {"step_ms": min(ms), "rounds_ms": ms, "kind": kinds[method]} for method, ms in rounds.items()
    }
    fixed = results["fixed"]["step_ms"]
    for r in results.values():
        r["relative_to_fixed"] = r["step_ms"] / fixed
    return {
        "config": args.train_config,
        "tasks": len(cfg.tasks),
        "batch_size": cfg.data.batch_size,
        "steps": args.weighting_steps,
        "rounds": args.weighting_rounds,
        "methods": results,
    }


def _time_method(method: str, args, cfg, spec, batches: list, priors: dict) -> tuple[float, str]:
    """-> (median ms per step of one fresh sharded model trained with `method`, "loss" or "gradient").

    The step is the training worker's own (mtl_rec.step.TrainPipeline), auxiliary losses included."""
    torch.manual_seed(0)
    weighting = build_weighting(
        load_run_config(args.train_config, [f"weighting.method={method}"]).weighting, cfg.tasks, priors
    )
    sharded = shard_model(
        MultiTaskModel(spec, cfg.model, cfg.tasks), cfg, torch.device("cpu"), list(weighting.parameters())
    )
    pipeline = TrainPipeline(sharded.model, sharded.module, sharded, weighting, cfg.tasks)
    steps = (batches[step % len(batches)] for step in itertools.count())
    times = []
    for _ in range(args.weighting_warmup + args.weighting_steps):
        begin = time.perf_counter()
        pipeline.progress(steps)
        times.append(time.perf_counter() - begin)
    step_ms = 1000 * float(np.median(times[args.weighting_warmup :]))
    return step_ms, "gradient" if weighting.requires_shared else "loss"


# Per-step cost goals relative to fixed weights.
GOALS = {"loss": 1.3, "gradient": 2.0}


def print_weighting(result: dict) -> None:
    print(
        f"\nweighting: {result['config']}, {result['tasks']} tasks, batch {result['batch_size']}, "
        f"median of {result['steps']} steps, best of {result.get('rounds', 1)} rounds"
    )
    for method, r in result["methods"].items():
        print(
            f"  {method:18s} {r['step_ms']:8.1f} ms/step  {r['relative_to_fixed']:5.2f}x fixed  "
            f"(goal <= {GOALS[r['kind']]}x, {r['kind']}-based)"
        )
