"""What the benchmark sections share: the machine, cached generated logs, a local Ray, one timed run.

Logs are generated once per size under `--cache` and reused; they are regenerated when the feature
spec has changed since (a column the spec reads is missing) or a day holds the wrong row count.

Example::

    >>> logs = ensure_logs(Path("data/bench"), spec, {day(0): 1_000_000, day(1): 1_000_000})
    >>> with local_ray():
    ...     run = timed_train(args, "end_to_end", ["train.max_steps=30"])   # {"samples_per_s", ...}
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from mtl_rec.config import FeatureSpec, SampleSpace
from mtl_rec.quiet import quiet_ray_data

# The sample spaces the reference tasks train on (CTR over impressions, CVR and cart over clicks).
SPACES = {
    "all": SampleSpace(),
    "clicked": SampleSpace.parse("click == 1"),
    "carted": SampleSpace.parse("cart == 1"),
}
FIRST_DAY = dt.date(2026, 11, 18)
# A small held-out day after every benchmark day, so runs that time training only (growth) do
# not spend a minute each evaluating a full day.
SMALL_EVAL_DAY = dt.date(2026, 11, 30)


def day(index: int) -> dt.date:
    """The index-th benchmark day (0: the training day of `train`)."""
    return FIRST_DAY + dt.timedelta(days=index)


def machine() -> dict:
    """CPU model, cores and library versions, for the figures' record."""
    import pyarrow
    import ray
    import torch

    cpu = platform.processor() or "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "date": dt.date.today().isoformat(),
    }


def _stale_days(logs: Path, spec: FeatureSpec, rows_by_day: Mapping[dt.date, int]) -> list[dt.date]:
    """Days that are missing, do not match the spec's columns, or hold another number of rows."""
    from pipelines.errors import BadInputError
    from pipelines.read import inspect_logs

    stale = []
    for date, rows in sorted(rows_by_day.items()):
        try:
            if inspect_logs(logs, [date], spec).rows != rows:
                stale.append(date)
        except BadInputError:
            stale.append(date)
    return stale


def ensure_logs(root: Path, spec: FeatureSpec, rows_by_day: Mapping[dt.date, int]) -> Path:
    """Generated logs under root/logs (one folder for every size), regenerating stale days only."""
    from jobs.make_logs import GeneratorConfig, generate_logs

    logs = root / "logs"
    runs: list[list[dt.date]] = []  # consecutive stale days of one size: one generator call each
    for date in _stale_days(logs, spec, rows_by_day):
        previous = runs[-1][-1] if runs else None
        if (
            previous
            and date - previous == dt.timedelta(days=1)
            and rows_by_day[date] == rows_by_day[previous]
        ):
            runs[-1].append(date)
        else:
            runs.append([date])
    for dates in runs:
        generate_logs(
            logs, dates[0], len(dates), rows_by_day[dates[0]], GeneratorConfig(seed=0), verbose=False
        )
    return logs


def process_tree_cpu_s() -> float | None:
    """CPU seconds (user + system, reaped children included) of every process descending from this
    one: with a local Ray started here, the raylet and every Ray worker. None off Linux."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        parent[entry.name] = fields[1]
        cpu[entry.name] = sum(int(x) for x in fields[11:15]) / tick  # utime, stime, cutime, cstime
    root, total = str(os.getpid()), 0.0
    for pid, seconds in cpu.items():
        ancestor = parent.get(pid)
        while ancestor not in (None, "0", "1", root):
            ancestor = parent.get(ancestor)
        total += seconds if ancestor == root else 0.0
    return total


def start_local_ray(num_cpus: int | None = None) -> bool:
    """A fresh local Ray (never one a `ray start` on this machine left behind), quiet Ray Data.
    Returns False, changing nothing, where this process already runs Ray (a test's session Ray).

    num_cpus: logical CPUs (default twice the cores, as jobs.train starts it: train workers reserve
    `train.cpus_per_worker` each and Ray Data's read tasks need room beside them).
    """
    import ray

    if ray.is_initialized():
        return False
    quiet_ray_data()  # before ray.init: the local Ray's processes inherit it
    ray.init(
        address="local",
        num_cpus=num_cpus or 2 * (os.cpu_count() or 1),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return True


@contextmanager
def local_ray(num_cpus: int | None = None) -> Iterator[None]:
    """start_local_ray for the block; shut down after it only if it was started here."""
    import ray

    started = start_local_ray(num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def timed_train(
    args,
    name: str,
    overrides: Sequence[str] = (),
    spec_overrides: Sequence[str] = (),
    eval_day: dt.date | None = None,
) -> dict:
    """One `jobs.train` run of args.train_config on day(0), evaluated on `eval_day` (default day(1)).

    Returns the worker-measured training figures: rows, seconds (the training loop's wall time,
    first batch included, Ray and model start-up excluded), samples_per_s, steps, workers,
    peak_rss_mb_per_worker, and the AUC of every task.
    """
    from jobs.train import train
    from mtl_rec.config.run import SINGLE_PASS
    from mtl_rec.run_config import load_run_config

    # one pass over the rows: the presets' validation passes and calibration are not what is timed
    settings = [*SINGLE_PASS, f"data.batch_size={args.train_batch_size}", *overrides]
    cfg = load_run_config(args.train_config, settings)
    run_dir = Path(args.cache) / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a checkpoint left there would make the run resume
    metrics = train(
        cfg,
        str(Path(args.cache) / "logs"),
        day(0).isoformat(),
        (eval_day or day(1)).isoformat(),
        run_dir,
        tuple(spec_overrides),
    )
    result = {
        key: metrics["train"][key]
        for key in ("rows", "seconds", "samples_per_s", "steps", "workers", "peak_rss_mb_per_worker")
    }
    result["auc"] = {task: m["auc"] for task, m in metrics["tasks"].items()}
    return result
