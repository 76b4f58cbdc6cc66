"""Training benchmark: end to end next to the model-only ceiling and the dense-FLOP floor.

`jobs.train` with `--train-config` (the reference MMoE) on one generated day, evaluated on the next:
  end to end          Ray Data split -> collate -> DMP -> losses -> backward -> optimizers
  model-only ceiling  the same job and process layout, each rank's batches built in memory first
                      (train.prebuilt_batches), so the timed loop is model, losses and optimizers only
  dense-FLOP floor    jobs.bench.flops: the machine's matmul rate / the model's FLOPs per sample

samples/s is measured inside the workers (rows over the training loop's wall time, first batch
included), not Ray's start-up. The two runs alternate `--train-repeat` times and the best of each is
kept (as timeit does): on a shared 2-core machine a single run moves by +-5%, enough to swing the
loader cost by half. loader cost = 1 - best end to end / best ceiling.

Example::

    python -m jobs.bench train --out docs/bench-train.json
"""

from __future__ import annotations

from jobs.bench.common import timed_train

RUNS = {"end_to_end": [], "model_only_ceiling": ["train.prebuilt_batches=true"]}


def bench_train(args, flops: dict) -> dict:
    """flops: the result of jobs.bench.flops.bench_flops (for the floor)."""
    runs: dict[str, list[dict]] = {name: [] for name in RUNS}
    for _ in range(max(1, args.train_repeat)):  # alternating, so a slow spell hits both kinds alike
        for name, overrides in RUNS.items():
            runs[name].append(timed_train(args, name, overrides))
    results = {name: max(r, key=lambda run: run["samples_per_s"]) for name, r in runs.items()}
    e2e, ceiling = results["end_to_end"]["samples_per_s"], results["model_only_ceiling"]["samples_per_s"]
    floor = flops["floor_samples_per_s"]
    return {
        "config": args.train_config,
        "batch_size_per_worker": args.train_batch_size,
        **results,
        "runs_samples_per_s": {name: [run["samples_per_s"] for run in r] for name, r in runs.items()},
        "floor_samples_per_s": floor,
        "loader_cost": 1 - e2e / ceiling,
        "end_to_end_of_floor": e2e / floor,
        "ceiling_of_floor": ceiling / floor,
    }


def print_train(result: dict) -> None:
    print(f"\ntrain: {result['config']}, batch {result['batch_size_per_worker']} per worker")
    for name in RUNS:
        r = result[name]
        peak = [round(x) for x in r["peak_rss_mb_per_worker"]]
        print(
            f"  {name:22s} {r['samples_per_s']:>10,.0f} samples/s  "
            f"({r['rows']:,} rows in {r['seconds']:.1f} s, "
            f"{r['workers']} workers, peak RSS MB per worker {peak})"
        )
        every = ", ".join(f"{x:,.0f}" for x in result.get("runs_samples_per_s", {}).get(name, []))
        print(f"  {'':22s} best of: {every}")
    print(f"  {'dense-FLOP floor':22s} {result['floor_samples_per_s']:>10,.0f} samples/s")
    print(
        f"  loader cost against the ceiling: {result['loader_cost']:.1%}; end to end is "
        f"{result['end_to_end_of_floor']:.2f} of the floor, the ceiling {result['ceiling_of_floor']:.2f}"
    )
