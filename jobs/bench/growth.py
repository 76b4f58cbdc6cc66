"""How cost grows: training time against rows, table size and workers, all else equal.

Every run is `jobs.train` end to end on day(0), stopped after a fixed number of lockstep steps
(train.max_steps) and evaluated on a small held-out day, so a run costs its training and start-up:
  rows      x1, x2, x4 the rows (steps): the time should grow linearly, seconds = fixed + rows * per
            row with every run near that line (a fixed start-up makes the plain ratios sublinear)
  tables    every embedding table with x2, x4 its rows, same rows trained: the time should stay flat
            (a lookup costs the same in a bigger table) while peak memory grows with the tables
  workers   1 worker instead of 2, same rows and per-worker batch (twice the steps): the speed-up
            of 2 workers over 1 on this machine's cores

The base run (rows x1, tables x1, 2 workers) is shared by all three. Its steps let the largest rows
factor read 3/4 of one day: 0.75 * rows_per_day // (max factor * 2 workers * batch).

Example::

    python -m jobs.bench growth --out docs/bench-growth.json
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.bench.common import SMALL_EVAL_DAY, timed_train

BASE_WORKERS = 2
DAY_SHARE = 0.75


@dataclass(frozen=True)
class GrowthRun:
    """One timed run of the study: which axis, by what factor, and the overrides that make it."""

    study: str  # rows | tables | workers
    factor: int  # rows or table multiple, or the worker count
    overrides: tuple[str, ...]
    spec_overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "base" if self.study == "base" else f"{self.study}-x{self.factor}"


def base_steps(rows_per_day: int, batch_size: int, rows_factors) -> int:
    """Steps of the base run: the largest rows factor reads at most DAY_SHARE of the day, since the
    split hands whole blocks to ranks (one rank may get fewer rows) and a rank out of rows pads."""
    steps = int(DAY_SHARE * rows_per_day) // (max(rows_factors, default=1) * BASE_WORKERS * batch_size)
    if steps < 1:
        raise ValueError(
            f"a day of {rows_per_day:,} rows cannot hold x{max(rows_factors)} the rows of one step of "
            f"{BASE_WORKERS} workers x batch {batch_size}: use more --rows-per-day or a smaller batch"
        )
    return steps


def plan_growth(spec, steps: int, rows_factors, table_factors, worker_counts) -> list[GrowthRun]:
    """The runs of the study, base first; factors of 1 (and BASE_WORKERS workers) are the base."""
    base = GrowthRun("base", 1, (f"train.workers={BASE_WORKERS}", f"train.max_steps={steps}"))
    runs = [base]
    for factor in (f for f in rows_factors if f != 1):
        runs.append(
            GrowthRun("rows", factor, (f"train.workers={BASE_WORKERS}", f"train.max_steps={steps * factor}"))
        )
    for factor in (f for f in table_factors if f != 1):
        bigger = tuple(
            f"tables.{name}.num_embeddings={table.num_embeddings * factor}"
            for name, table in spec.tables.items()
        )
        runs.append(GrowthRun("tables", factor, base.overrides, bigger))
    for workers in (w for w in worker_counts if w != BASE_WORKERS):
        same_rows = steps * BASE_WORKERS // workers
        runs.append(
            GrowthRun("workers", workers, (f"train.workers={workers}", f"train.max_steps={same_rows}"))
        )
    return runs


def summarise_growth(runs: dict[str, dict], plan: list[GrowthRun]) -> dict:
    """Timed runs {name: timed_train result} -> per axis, {str(factor): figures}, base included.

    rows:    time_ratio (seconds / base seconds), rows_ratio, linearity = time_ratio / rows_ratio;
             rows_fit: seconds = fixed_s + per_row_s * rows over them (fit_line)
    tables:  time_ratio per row (1: flat) and peak memory per worker
    workers: samples/s, and speedup = base (2 workers) samples/s / this run's
    """
    base = runs["base"]
    per_row = lambda r: r["seconds"] / r["rows"]  # noqa: E731
    out: dict[str, dict] = {"rows": {}, "tables": {}, "workers": {}}
    for run in plan:
        r = runs[run.name]
        entry = {
            "rows": r["rows"],
            "seconds": r["seconds"],
            "samples_per_s": r["samples_per_s"],
            "workers": r["workers"],
            "peak_rss_mb_per_worker": r["peak_rss_mb_per_worker"],
        }
        if run.study in ("base", "rows"):
            time_ratio, rows_ratio = r["seconds"] / base["seconds"], r["rows"] / base["rows"]
            out["rows"][str(run.factor)] = {
                **entry,
                "time_ratio": time_ratio,
                "rows_ratio": rows_ratio,
                "linearity": time_ratio / rows_ratio,
            }
        if run.study in ("base", "tables"):
            out["tables"][str(run.factor)] = {**entry, "time_per_row_ratio": per_row(r) / per_row(base)}
        if run.study in ("base", "workers"):
            out["workers"][str(r["workers"])] = {
                **entry,
                "speedup_of_base": base["samples_per_s"] / r["samples_per_s"],
            }
    out["rows_fit"] = fit_line([(g["rows"], g["seconds"]) for g in out["rows"].values()])
    return out


def fit_line(points: list[tuple[float, float]]) -> dict:
    """Least-squares seconds = fixed_s + per_row_s * rows over the rows runs.

    max_deviation: the largest |measured - fitted| / measured; None with fewer than 3 points (two
    points always lie on their line). Linear growth is a small deviation; fixed_s is the start-up
    every run pays (split coordinator, first read task), which makes plain time ratios sublinear.
    """
    if len(points) < 2:
        return {"fixed_s": None, "per_row_s": None, "max_deviation": None}
    rows = np.array([p[0] for p in points], dtype=np.float64)  # [n]
    seconds = np.array([p[1] for p in points], dtype=np.float64)  # [n]
    per_row, fixed = np.polyfit(rows, seconds, 1)  # seconds ~ per_row * rows + fixed
    fitted = fixed + per_row * rows  # [n]
    deviation = float(np.max(np.abs(seconds - fitted) / seconds)) if len(points) >= 3 else None
    return {"fixed_s": float(fixed), "per_row_s": float(per_row), "max_deviation": deviation}


def bench_growth(args, spec) -> dict:
    rows_factors, table_factors, worker_counts = args.growth_rows, args.growth_tables, args.growth_workers
    steps = base_steps(args.rows_per_day, args.train_batch_size, rows_factors)
    plan = plan_growth(spec, steps, rows_factors, table_factors, worker_counts)
    runs = {
        run.name: timed_train(args, f"growth-{run.name}", run.overrides, run.spec_overrides, SMALL_EVAL_DAY)
        for run in plan
    }
    return {
        "config": args.train_config,
        "batch_size_per_worker": args.train_batch_size,
        "base_steps": steps,
        "runs": runs,
        **summarise_growth(runs, plan),
    }


def print_growth(result: dict) -> None:
    print(
        f"\ngrowth: {result['config']}, batch {result['batch_size_per_worker']} per worker, "
        f"base {result['base_steps']} steps of {BASE_WORKERS} workers"
    )
    print(f"  {'run':14s} {'rows':>10s} {'seconds':>8s} {'samples/s':>10s}  {'vs base':>34s}  peak RSS MB")
    lines = []
    for factor, r in result["rows"].items():
        lines.append((f"rows x{factor}", r, f"time x{r['time_ratio']:.2f} for rows x{r['rows_ratio']:.2f}"))
    for factor, r in result["tables"].items():
        if int(factor) != 1:
            lines.append((f"tables x{factor}", r, f"time per row x{r['time_per_row_ratio']:.2f}"))
    for workers, r in result["workers"].items():
        if int(workers) != BASE_WORKERS:
            lines.append(
                (f"{workers} worker(s)", r, f"{BASE_WORKERS} workers x{r['speedup_of_base']:.2f} faster")
            )
    for name, r, versus in lines:
        peak = [round(x) for x in r["peak_rss_mb_per_worker"]]
        figures = f"{r['rows']:>10,} {r['seconds']:>8.1f} {r['samples_per_s']:>10,.0f}"
        print(f"  {name:14s} {figures}  {versus:>34s}  {peak}")
    fit = result["rows_fit"]
    if fit["per_row_s"] is not None:
        deviation = "" if fit["max_deviation"] is None else f", runs within {fit['max_deviation']:.1%} of it"
        print(f"  time = {fit['fixed_s']:.2f} s + {fit['per_row_s'] * 1e6:.2f} us per row{deviation}")
