"""Benchmarks: `python -m jobs.bench [loader|all] --out FILE.json`.

loader  rows/s from Parquet to Batch through Ray Data's streaming_split (2 consumer actors, as Ray
        Train's workers consume it), next to pyarrow alone reading the same columns, and next to
        our validate + transform + collate in one process without Ray (the per-core ceiling).
train   the reference MMoE (jobs/configs/mmoe.yaml: 20 sparse features of dim 16, 13 dense, 4 experts
        [256, 128], 3 tasks) trained by `jobs.train` on one generated day: end-to-end samples/s
        (Ray Data + DMP + model + losses + optimizers) next to the model-only ceiling (the same job
        and process layout, each rank's batches built in memory first), and peak memory per worker.
weighting  per-step time of every loss-weighting method relative to fixed weights, at 3 tasks: the
        reference MMoE sharded by DMP on one gloo rank (fused table optimizer inside backward), the
        same pre-built batches for every method, warm-up steps excluded.

Speed lives here, never in timed tests. Figures go to docs/benchmarks.md with the machine and command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from mtl_rec.config import SampleSpace, load_feature_spec
from mtl_rec.config.data import DataConfig

SPACES = {
    "all": SampleSpace(),
    "clicked": SampleSpace.parse("click == 1"),
    "carted": SampleSpace.parse("cart == 1"),
}


def machine() -> dict:
    import pyarrow
    import ray
    import torch

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else "?"
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "date": dt.date.today().isoformat(),
    }


def ensure_logs(root: Path, rows_per_day: int, days: int) -> Path:
    """Generate benchmark logs once (cached by size) and return their directory."""
    from jobs.make_logs import GeneratorConfig, generate_logs

    logs = root / f"logs-{days}x{rows_per_day}"
    if not (logs / "_SUCCESS").exists():
        generate_logs(logs, dt.date(2026, 11, 18), days, rows_per_day, GeneratorConfig(seed=0))
        (logs / "_SUCCESS").touch()
    return logs


def bench_pyarrow(inventory) -> dict:
    import pyarrow.parquet as pq

    start = time.perf_counter()
    rows = sum(pq.read_table(path, columns=inventory.columns).num_rows for path in inventory.paths)
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def bench_in_process(inventory, spec, stats, batch_size: int) -> dict:
    """validate + transform + collate on one core, no Ray: what one process can do per core."""
    import pyarrow.parquet as pq

    from pipelines.collate import collate
    from pipelines.dataset import layout_for
    from pipelines.transform import transform_block
    from pipelines.validate import validate_block

    layout = layout_for(spec, SPACES, inventory)
    start = time.perf_counter()
    rows = 0
    for path in inventory.paths:
        table = transform_block(
            validate_block(pq.read_table(path, columns=inventory.columns), spec, "error", None),
            spec,
            stats,
            SPACES,
        )
        for offset in range(0, table.num_rows, batch_size):
            rows += collate(table.slice(offset, batch_size), layout).batch_size
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def bench_ray_split(inventory, spec, stats, data: DataConfig, consumers: int, consumer_cpus: float) -> dict:
    import ray

    from pipelines.dataset import build_dataset, iter_batches, layout_for

    @ray.remote(num_cpus=consumer_cpus)
    class Consumer:
        def consume(self, shard, layout, batch_size, prefetch):
            rows, ids, first_at, first_rows, start = 0, [], None, 0, time.perf_counter()
            for batch in iter_batches(shard, layout, batch_size, prefetch):
                if first_at is None:
                    first_at, first_rows = time.perf_counter(), batch.batch_size
                rows += batch.batch_size
                ids.append(batch.ids.numpy())
            end = time.perf_counter()
            steady = (rows - first_rows) / (end - first_at) if first_at and end > first_at else 0.0
            return (
                rows,
                np.concatenate(ids) if ids else np.zeros(0, np.int64),
                (first_at or end) - start,
                steady,
            )

    layout = layout_for(spec, SPACES, inventory)
    actors = [Consumer.remote() for _ in range(consumers)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    ds = build_dataset(inventory, spec, stats, SPACES, data)
    shards = ds.streaming_split(consumers, equal=False)
    start = time.perf_counter()
    results = ray.get(
        [a.consume.remote(s, layout, data.batch_size, data.prefetch_batches) for a, s in zip(actors, shards)]
    )
    seconds = time.perf_counter() - start
    rows = sum(r[0] for r in results)
    ids = np.concatenate([r[1] for r in results])
    for actor in actors:
        ray.kill(actor)
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "consumers": consumers,
        "rows_per_consumer": [r[0] for r in results],
        "distinct_ids": int(len(np.unique(ids))),
        "first_batch_s": max(r[2] for r in results),
        "steady_rows_per_s": sum(r[3] for r in results),
    }


def bench_loader(args) -> dict:
    import ray

    from pipelines.dataset import compute_stats
    from pipelines.read import inspect_logs, parse_dates

    spec = load_feature_spec(args.spec)
    logs = ensure_logs(Path(args.cache), args.rows_per_day, args.days)
    inventory = inspect_logs(
        logs, parse_dates(f"2026-11-18..{dt.date(2026, 11, 17) + dt.timedelta(args.days)}"), spec
    )
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        stats = compute_stats(inventory, spec, DataConfig())
        data = DataConfig(batch_size=args.batch_size)
        ray_split = [
            bench_ray_split(inventory, spec, stats, data, 2, args.consumer_cpus) for _ in range(args.repeat)
        ]
    finally:
        ray.shutdown()
    pyarrow_only = max((bench_pyarrow(inventory) for _ in range(args.repeat)), key=lambda r: r["rows_per_s"])
    in_process = bench_in_process(inventory, spec, stats, args.batch_size)
    best = max(ray_split, key=lambda r: r["rows_per_s"])
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
        "ray_split_runs": [r["rows_per_s"] for r in ray_split],
        "ray_over_pyarrow": best["rows_per_s"] / pyarrow_only["rows_per_s"],
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
        f"(every row once: {result['ray_split']['distinct_ids'] == result['rows']})"
    )


def bench_train(args) -> dict:
    from jobs.train import start_ray, train
    from mtl_rec.config.run import load_run_config

    logs = ensure_logs(Path(args.cache), args.rows_per_day, 2)
    start_ray(None)
    results = {}
    for name, extra in (("end_to_end", []), ("model_only_ceiling", ["train.prebuilt_batches=true"])):
        cfg = load_run_config(args.train_config, [f"data.batch_size={args.train_batch_size}", *extra])
        metrics = train(cfg, str(logs), "2026-11-18", "2026-11-19", Path(args.cache) / f"train-{name}")
        results[name] = {
            k: metrics["train"][k]
            for k in ("rows", "seconds", "samples_per_s", "workers", "peak_rss_mb_per_worker")
        }
        results[name]["auc"] = {t: m["auc"] for t, m in metrics["tasks"].items()}
    e2e, ceiling = results["end_to_end"]["samples_per_s"], results["model_only_ceiling"]["samples_per_s"]
    return {
        "config": args.train_config,
        "batch_size_per_worker": args.train_batch_size,
        **results,
        "loader_cost": 1 - e2e / ceiling,
    }


def print_train(result: dict) -> None:
    print(f"\ntrain: {result['config']}, batch {result['batch_size_per_worker']} per worker")
    for name in ("end_to_end", "model_only_ceiling"):
        r = result[name]
        peak = [round(x) for x in r["peak_rss_mb_per_worker"]]
        print(
            f"  {name:22s} {r['samples_per_s']:>10,.0f} samples/s  "
            f"({r['rows']:,} rows in {r['seconds']:.1f} s, "
            f"{r['workers']} workers, peak RSS MB per worker {peak})"
        )
    print(f"  loader cost against the ceiling: {result['loader_cost']:.1%}")


def bench_weighting(args) -> dict:
    import os

    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist

    from mtl_rec.config.run import load_run_config
    from mtl_rec.losses import task_losses
    from mtl_rec.metrics import required_spaces
    from mtl_rec.models.model import MultiTaskModel
    from mtl_rec.sharding import shard_model
    from mtl_rec.weighting import METHODS, build_weighting
    from pipelines.collate import collate
    from pipelines.dataset import layout_for
    from pipelines.prepare import prepare_block
    from pipelines.read import inspect_logs, parse_dates
    from pipelines.transform import block_moments, reduce_moments

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29561")
        dist.init_process_group("gloo", rank=0, world_size=1)
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_run_config(args.train_config, [f"data.batch_size={args.weighting_batch_size}"])
    spec = cfg.feature_spec()
    inventory = inspect_logs(
        ensure_logs(Path(args.cache), args.rows_per_day, 2), parse_dates("2026-11-18"), spec
    )
    table = pq.read_table(inventory.paths[0], columns=inventory.columns)
    stats = reduce_moments([block_moments(table, spec).to_pylist()[0]], spec)
    spaces = required_spaces(cfg.tasks, spec)
    prepared = prepare_block(table, inventory.paths[0], spec, stats, spaces, "error", None)
    layout = layout_for(spec, spaces, inventory)
    batch_size = cfg.data.batch_size
    batches = [
        collate(prepared.slice(i, batch_size), layout) for i in range(0, prepared.num_rows, batch_size)
    ]
    batches = [b for b in batches if b.batch_size == batch_size]
    priors = {t.name: 0.1 for t in cfg.tasks}
    results = {}
    for method in METHODS:
        torch.manual_seed(0)
        weighting = build_weighting(
            load_run_config(args.train_config, [f"weighting.method={method}"]).weighting, cfg.tasks, priors
        )
        sharded = shard_model(
            MultiTaskModel(spec, cfg.model, cfg.tasks), cfg, torch.device("cpu"), list(weighting.parameters())
        )
        if weighting.requires_shared:
            weighting.attach_shared(weighting.shared_parameters(sharded.module.backbone))
        times = []
        for step in range(args.weighting_warmup + args.weighting_steps):
            batch = batches[step % len(batches)]
            begin = time.perf_counter()
            total, _ = weighting.combine(task_losses(sharded.model(batch), batch, cfg.tasks).losses, step)
            sharded.zero_grad()
            total.backward()
            weighting.after_backward()
            weighting.sync_gradients()
            sharded.step()
            times.append(time.perf_counter() - begin)
        step_ms = 1000 * float(np.median(times[args.weighting_warmup :]))
        results[method] = {"step_ms": step_ms, "kind": "gradient" if weighting.requires_shared else "loss"}
    fixed = results["fixed"]["step_ms"]
    for r in results.values():
        r["relative_to_fixed"] = r["step_ms"] / fixed
    return {
        "config": args.train_config,
        "tasks": len(cfg.tasks),
        "batch_size": batch_size,
        "steps": args.weighting_steps,
        "methods": results,
    }


def print_weighting(result: dict) -> None:
    print(
        f"\nweighting: {result['config']}, {result['tasks']} tasks, batch {result['batch_size']}, "
        f"median of {result['steps']} steps"
    )
    for method, r in result["methods"].items():
        goal = 1.3 if r["kind"] == "loss" else 2.0
        print(
            f"  {method:18s} {r['step_ms']:8.1f} ms/step  {r['relative_to_fixed']:5.2f}x fixed  "
            f"(goal <= {goal}x, {r['kind']}-based)"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["loader", "train", "weighting", "all"])
    parser.add_argument("--out", default="docs/bench-latest.json")
    parser.add_argument("--spec", default="jobs/configs/features.yaml")
    parser.add_argument("--cache", default="data/bench", help="where generated benchmark logs are kept")
    parser.add_argument(
        "--rows-per-day", type=int, default=1_000_000, help="rows per generated benchmark day"
    )
    parser.add_argument("--days", type=int, default=2, help="benchmark days (2 x 1M rows by default)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs for the local Ray")
    parser.add_argument("--consumer-cpus", type=float, default=0.5, help="logical CPUs per consumer actor")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--train-config", default="jobs/configs/mmoe.yaml")
    parser.add_argument("--train-batch-size", type=int, default=4096)
    parser.add_argument("--weighting-batch-size", type=int, default=4096)
    parser.add_argument("--weighting-steps", type=int, default=20)
    parser.add_argument("--weighting-warmup", type=int, default=3)
    args = parser.parse_args(argv)

    results = {"machine": machine(), "command": "python -m jobs.bench " + " ".join(argv or os.sys.argv[1:])}
    if args.what in ("loader", "all"):
        results["loader"] = bench_loader(args)
        print_loader(results["loader"])
    if args.what in ("train", "all"):
        results["train"] = bench_train(args)
        print_train(results["train"])
    if args.what in ("weighting", "all"):
        results["weighting"] = bench_weighting(args)
        print_weighting(results["weighting"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
