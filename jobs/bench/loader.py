"""Loader benchmark: rows/s from Parquet to Batch, through Ray Data as the trainers consume it.

Three paths over the same generated days (`--days` x `--rows-per-day`):
  pyarrow alone      pq.read_table of the columns the pipeline reads (multithreaded), no checks
  one process        read + validate + transform + collate in this process, no Ray: per-core cost
  Ray Data split     build_dataset -> streaming_split(2) -> 2 consumer actors of `--consumer-cpus`
                     each iterating Batches, as Ray Train's workers do; checked for every row once.
                     Also its CPU seconds per million rows, consumers apart from the rest (read
                     tasks, split coordinator, Ray): on 2 cores every such second is the trainers'

Example::

    python -m jobs.bench loader --out docs/bench-loader.json --repeat 3
"""

from __future__ import annotations

import time

import numpy as np

from jobs.bench.common import SPACES, day, local_ray, process_tree_cpu_s
from mtl_rec.config.data import DataConfig


def loader_days(args) -> list:
    return [day(i) for i in range(args.days)]


def bench_pyarrow(inventory) -> dict:
    import pyarrow.parquet as pq

    start = time.perf_counter()
    rows = sum(pq.read_table(path, columns=inventory.columns).num_rows for path in inventory.paths)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def bench_in_process(inventory, spec, stats, batch_size: int, rows_per_block: int) -> dict:
    """What a read task and a consumer do per row, back to back in one process, on one core."""
    from pipelines.collate import collate
    from pipelines.dataset import layout_for
    from pipelines.prepare import prepare_block
    from pipelines.read import read_file_blocks

    layout = layout_for(spec, SPACES, inventory)
    start = time.perf_counter()
    rows = 0
    for path in inventory.paths:
        for block in read_file_blocks(path, inventory.columns, rows_per_block):
            prepared = prepare_block(block, path, spec, stats, SPACES, "error", None)
            for offset in range(0, prepared.num_rows, batch_size):
                rows += collate(prepared.slice(offset, batch_size), layout).batch_size
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def bench_ray_split(inventory, spec, stats, data: DataConfig, consumers: int, consumer_cpus: float) -> dict:
    """build_dataset -> streaming_split(consumers) -> actors iterating Batches; every row counted once."""
    import ray

    from pipelines.dataset import build_dataset, iter_batches, layout_for

    @ray.remote(num_cpus=consumer_cpus)
    class Consumer:
        def consume(self, shard, layout, batch_size, prefetch):
            rows, ids, first_at, first_rows, start = 0, [], None, 0, time.perf_counter()
            cpu_start = time.process_time()  # every thread of this process: the iterator's too
            for batch in iter_batches(shard, layout, batch_size, prefetch):
                if first_at is None:
                    first_at, first_rows = time.perf_counter(), batch.batch_size
                rows += batch.batch_size
                ids.append(batch.ids.numpy())
            end = time.perf_counter()
            steady = (rows - first_rows) / (end - first_at) if first_at and end > first_at else 0.0
            first = (first_at or end) - start
            cpu = time.process_time() - cpu_start
            return rows, np.concatenate(ids) if ids else np.zeros(0, np.int64), first, steady, cpu

    layout = layout_for(spec, SPACES, inventory)
    actors = [Consumer.remote() for _ in range(consumers)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    shards = build_dataset(inventory, spec, stats, SPACES, data).streaming_split(consumers, equal=False)
    start, cpu_start = time.perf_counter(), process_tree_cpu_s()
    results = ray.get(
        [a.consume.remote(s, layout, data.batch_size, data.prefetch_batches) for a, s in zip(actors, shards)]
    )
    seconds, cpu_end = time.perf_counter() - start, process_tree_cpu_s()
    for actor in actors:
        ray.kill(actor)
    rows, consumer_cpu = sum(r[0] for r in results), sum(r[4] for r in results)
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "consumers": consumers,
        "rows_per_consumer": [r[0] for r in results],
        "distinct_ids": int(len(np.unique(np.concatenate([r[1] for r in results])))),
        "first_batch_s": max(r[2] for r in results),
        "steady_rows_per_s": sum(r[3] for r in results),
        # what a training worker pays to receive its batches: Ray's iterator and collate
        "consumer_cpu_s_per_million_rows": consumer_cpu / rows * 1e6,
        # what everything else pays (read tasks, split coordinator, Ray's own processes): CPU that
        # the trainers lose to the loader on a machine they share with it
        "data_plane_cpu_s_per_million_rows": (
            (cpu_end - cpu_start - consumer_cpu) / rows * 1e6 if cpu_start is not None else None
        ),
    }


def bench_loader(args, spec) -> dict:
    from pipelines.dataset import compute_stats
    from pipelines.read import inspect_logs

    inventory = inspect_logs(f"{args.cache}/logs", loader_days(args), spec)
    data = DataConfig(batch_size=args.batch_size)
    with local_ray(args.ray_cpus):
        stats = compute_stats(inventory, spec, DataConfig())
        runs = [
            bench_ray_split(inventory, spec, stats, data, 2, args.consumer_cpus) for _ in range(args.repeat)
        ]
    pyarrow_only = max((bench_pyarrow(inventory) for _ in range(args.repeat)), key=lambda r: r["rows_per_s"])
    in_process = bench_in_process(inventory, spec, stats, args.batch_size, data.rows_per_block)
    best = max(runs, key=lambda r: r["rows_per_s"])
    return {
        "rows": inventory.rows,
        "files": len(inventory.files),
        "sparse": len(spec.sparse),
        "dense": spec.num_dense,
        "batch_size": args.batch_size,
        "ray_cpus": args.ray_cpus,
        "consumer_cpus": args.consumer_cpus,
        "pyarrow_only": pyarrow_only,
        "in_process_one_core": in_process,
        "ray_split": best,
        "ray_split_runs": [r["rows_per_s"] for r in runs],
        "ray_over_pyarrow": best["rows_per_s"] / pyarrow_only["rows_per_s"],
        "every_row_once": best["distinct_ids"] == inventory.rows == best["rows"],
    }


def print_loader(result: dict) -> None:
    print(
        f"\nloader: {result['rows']:,} rows, {result['files']} files, {result['sparse']} sparse + "
        f"{result['dense']} dense, batch {result['batch_size']}"
    )
    print(f"  {'path':42s} {'rows/s':>12s}")
    for name, key in [
        ("pyarrow alone (read columns)", "pyarrow_only"),
        ("validate+transform+collate, 1 process", "in_process_one_core"),
        ("Ray Data streaming_split -> 2 consumers", "ray_split"),
    ]:
        print(f"  {name:42s} {result[key]['rows_per_s']:>12,.0f}")
    split = result["ray_split"]
    print(
        f"  {'  of which steady state (after 1st batch)':42s} {split['steady_rows_per_s']:>12,.0f}"
        f"   (first batch after {split['first_batch_s']:.1f} s)"
    )
    print(
        f"  Ray path / pyarrow alone: {result['ray_over_pyarrow']:.2f}  "
        f"(every row once: {result['every_row_once']})"
    )
    data_plane = split["data_plane_cpu_s_per_million_rows"]
    print(
        f"  CPU per million rows: consumers {split['consumer_cpu_s_per_million_rows']:.2f} s (iterator + "
        f"collate), data plane {'n/a' if data_plane is None else f'{data_plane:.2f}'} s (read tasks, "
        "coordinator, Ray)"
    )
