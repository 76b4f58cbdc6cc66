"""Write synthetic multi-task impression logs (click -> cart -> conversion) as day-partitioned Parquet.

The rows come from the hidden model in ``jobs.logsim`` (read its docstring for the model and its
knobs); this module plans the files, runs the sampling in a process pool and writes::

    OUT/dt=YYYY-MM-DD/part-00000.parquet, part-00001.parquet, ...

in the layout and schema that ``jobs/configs/features.yaml`` reads (``SCHEMA`` below). Each file
has ``rows_per_file`` rows (the day's last may be shorter) in row groups of ``row_group_size``;
rows are in time order within a day and ``request_id = (day since epoch << 32) | row of the day``.
A file is a function of the config, its day and its slice of the day only (its random stream is
keyed by (seed, day, file index)), so the same arguments rewrite byte-identical files in any order,
with any worker count, and a day comes out the same whichever other days are generated with it.

Example::

    python -m jobs.make_logs --out data/logs --start 2026-11-18 --days 3 --rows-per-day 200000 --seed 0

At the end it prints the rows, seconds, rows/s, and per day the label rates and the oracle AUC of
each task (the truth probability scored against the label over the task's space): click over all
impressions, cart and conversion over clicked impressions (P(cart | click), P(conversion | click)),
CTCVR (click and conversion) over all impressions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from jobs.logsim import World, file_rng
from mtl_rec.evaluation import exact_auc

__all__ = ["SCHEMA", "GeneratorConfig", "generate_logs", "main"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Every knob of the generator (the hidden model is described in ``jobs.logsim``).

    The same config, start date and row counts give the same logs.
    """

    seed: int = 0
    """Root of every random stream: entity tables, daily cohorts, each file's rows."""
    user_vocab: int = 2_000_000
    """Users existing before the first day; their ids are 0..user_vocab-1."""
    item_vocab: int = 500_000
    """Items existing before the first day; their ids are 0..item_vocab-1."""
    user_zipf: float = 1.0
    """Exponent of user popularity: rank r (from 1) weighs (r + zipf_offset) ** -user_zipf."""
    item_zipf: float = 1.0
    """Exponent of item popularity."""
    zipf_offset: float = 10.0
    """Mandelbrot shift flattening the very head, so no single id takes several % of the traffic."""
    new_user_rate: float = 0.02
    """Share of a day's impressions whose user is new that day."""
    new_item_rate: float = 0.03
    """Share of a day's impressions whose item is new that day."""
    new_users_per_day: int = 20_000
    """Size of a day's cohort of new users (Zipf within it); ids user_vocab + day * size + j."""
    new_items_per_day: int = 5_000
    """Size of a day's cohort of new items; ids item_vocab + day * size + j."""
    num_cities: int = 400
    """City vocabulary (Zipf, exponent 1)."""
    num_categories: int = 2_000
    """Category vocabulary; items, brands and browsing histories follow its Zipf popularity."""
    category_zipf: float = 1.0
    """Exponent of category popularity."""
    num_brands: int = 50_000
    """Brand vocabulary; every brand belongs to one category, every category has a brand."""
    num_shops: int = 150_000
    """Shop vocabulary: the one attribute vocabulary beyond 100k values."""
    latent_dim: int = 8
    """Dimension of the click latent vectors; the purchase latent has half of it."""
    segment_latent_scale: float = 0.32
    """Std per coordinate of the segment (age + gender + occupation) and category latents."""
    individual_latent_scale: float = 0.1
    """Std per coordinate of the per-user and per-item latent parts: hard to learn, so small."""
    id_effect_scale: float = 0.15
    """Std of the per-user and per-item biases (click and purchase)."""
    click_rate: float = 0.06
    """Target mean P(click) over a week of traffic."""
    cart_rate: float = 0.28
    """Target mean P(cart | click)."""
    conversion_rate: float = 0.4
    """Target mean P(conversion | cart)."""
    position_bias: float = 0.35
    """The click logit falls by position_bias * log1p(slot_position)."""
    task_correlation: float = 0.5
    """Correlation in [0, 1] of each post-click affinity with the click affinity."""
    selection_bias: float = 1.0
    """Weight (>= 0) of the standardised click affinity added to the post-click logits."""
    post_click_scale: float = 0.6
    """Logit std of the post-click affinities before selection_bias; their AUCs grow with it."""
    domain_shares: tuple[float, ...] = (0.6, 0.3, 0.1)
    """Traffic share of each domain (the app's scenes, e.g. home feed, search, item page); the
    ``domain`` column holds 0..len - 1. The shares sum to 1."""
    domain_click_shift: tuple[float, ...] = (0.0, 0.6, -0.5)
    """Click-logit shift of each domain (before the intercept is solved: the mean rate stays click_rate)."""
    domain_buy_shift: tuple[float, ...] = (0.0, 0.5, -0.4)
    """Shift of each domain's purchase affinity (cart and conversion, before standardisation)."""
    domain_interaction_scale: float = 0.3
    """Std of the domain x category effects on the click and purchase logits (0: domains differ by a
    shift only)."""
    domain_task_correlation: tuple[float, ...] = ()
    """Per domain, the task_correlation of its post-click stages (empty: task_correlation in every
    domain). Domains then trade the tasks off differently: where it is high a row's purchases follow
    its click affinity, where it is 0 they depend on the purchase features alone (the setting of
    task weights per group, mtl_rec.weighting.groups)."""
    favourite_categories: int = 4
    """Favourite categories per user: the best of 8 popular candidates under the user's latent."""
    recent_from_favourites: float = 0.7
    """Share of recent_* entries taken from the user's favourites (the rest: popular ones)."""
    empty_recent_rate: float = 0.12
    """Share of existing users' impressions with an empty recent_categories list (new users: 0.6)."""
    max_recent_categories: int = 20
    """Longest recent_categories list."""
    max_recent_brands: int = 10
    """Longest recent_brands list."""
    history_impressions: int = 30_000_000
    """Past impressions behind the *_hist_* features: popular entities get precise estimates, rare
    ones noisy estimates, new ones the prior."""
    hist_prior_strength: float = 20.0
    """Pseudo-impressions of prior in the *_hist_* estimates."""
    calibration_rows: int = 140_000
    """Rows of the calibration sample fixing the intercepts and the affinity standardisation."""
    rows_per_file: int = 50_000
    """Rows per Parquet file (a day's last file may be shorter). Part of a file's identity."""
    row_group_size: int = 16_384
    """Rows per Parquet row group."""
    compression: str = "zstd"
    """Parquet codec: zstd or snappy."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.task_correlation <= 1.0:
            raise ValueError(f"task_correlation must be in [0, 1], got {self.task_correlation}")
        if self.selection_bias < 0 or self.position_bias < 0:
            raise ValueError("selection_bias and position_bias must be >= 0")
        for name in ("click_rate", "cart_rate", "conversion_rate", "new_user_rate", "new_item_rate"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if min(self.rows_per_file, self.row_group_size, self.new_users_per_day, self.new_items_per_day) < 1:
            raise ValueError("rows_per_file, row_group_size and the cohort sizes must be positive")
        if self.num_categories > self.num_brands or not 1 <= self.favourite_categories <= 8:
            raise ValueError("need num_categories <= num_brands and 1 <= favourite_categories <= 8")
        domains = len(self.domain_shares)
        if min(self.domain_shares, default=0.0) <= 0 or abs(sum(self.domain_shares) - 1.0) > 1e-6:
            raise ValueError(f"domain_shares must be positive and sum to 1, got {self.domain_shares}")
        if not len(self.domain_click_shift) == len(self.domain_buy_shift) == domains:
            raise ValueError(
                f"domain_click_shift and domain_buy_shift need one value per domain ({domains}), got "
                f"{self.domain_click_shift} and {self.domain_buy_shift}"
            )
        if self.domain_task_correlation and len(self.domain_task_correlation) != domains:
            raise ValueError(
                f"domain_task_correlation needs one value per domain ({domains}), "
                f"got {self.domain_task_correlation}"
            )
        if not all(0.0 <= rho <= 1.0 for rho in self.domain_task_correlation):
            raise ValueError(
                f"domain_task_correlation values must be in [0, 1], got {self.domain_task_correlation}"
            )
        if self.domain_interaction_scale < 0:
            raise ValueError(f"domain_interaction_scale must be >= 0, got {self.domain_interaction_scale}")


_INT = ("request_id", "ts", "user_id", "item_id", "age_bucket", "gender", "city", "user_level", "occupation",
        "category", "brand", "shop", "price_level", "hour", "weekday", "device", "os", "network",
        "slot_position", "page", "domain")  # fmt: skip
_LISTS = ("recent_categories", "recent_brands")
_DENSE = ("price", "discount", "item_hist_ctr", "item_hist_cvr", "user_hist_ctr", "user_hist_cvr",
          "user_active_days", "item_age_days", "item_review_count", "item_rating", "shop_rating",
          "distance_km", "session_depth")  # fmt: skip
_LABELS = ("click", "cart", "conversion")
_TRUTH = ("_truth_p_click", "_truth_p_cart_given_click", "_truth_p_conversion_given_cart",
          "_truth_p_conversion_given_click", "_truth_p_ctcvr")  # fmt: skip
SCHEMA = pa.schema(
    [pa.field(name, pa.int64()) for name in _INT]
    + [pa.field(name, pa.list_(pa.int64())) for name in _LISTS]
    + [pa.field(name, pa.float32()) for name in _DENSE]
    + [pa.field(name, pa.int8()) for name in _LABELS]
    + [pa.field(name, pa.float32()) for name in _TRUTH]
)
"""The exact columns and Arrow types of every file (no ``dt`` column: it is the partition key)."""


@dataclass(frozen=True)
class FileTask:
    """One Parquet file: `rows` rows of `day` (days since epoch) starting at row `first_row` of the day."""

    day: int
    index: int
    first_row: int
    rows: int
    rows_per_day: int
    path: Path


@dataclass(frozen=True)
class FileResult:
    """What the summary needs from a written file: its day and the labels with their truth."""

    day: int
    labels: dict[str, np.ndarray]


def plan_files(
    out_dir: Path, start: dt.date, days: int, rows_per_day: int, rows_per_file: int
) -> list[FileTask]:
    epoch = dt.date(1970, 1, 1)
    tasks = []
    for offset in range(days):
        date = start + dt.timedelta(days=offset)
        for index, first_row in enumerate(range(0, rows_per_day, rows_per_file)):
            rows = min(rows_per_file, rows_per_day - first_row)
            path = out_dir / f"dt={date.isoformat()}" / f"part-{index:05d}.parquet"
            tasks.append(FileTask((date - epoch).days, index, first_row, rows, rows_per_day, path))
    return tasks


@lru_cache(maxsize=1)
def _world(config: GeneratorConfig) -> World:
    return World(config)


def _model_config(config: GeneratorConfig) -> GeneratorConfig:
    """The config without the writer knobs, so the cached World is shared across them."""
    return replace(config, rows_per_file=1, row_group_size=1, compression="zstd")


def _init_worker(config: GeneratorConfig) -> None:
    _world(_model_config(config))  # build the tables once per process, before the first file


def write_file(task: FileTask, config: GeneratorConfig) -> FileResult:
    """Sample and write one file: a function of the config and the task only."""
    world = _world(_model_config(config))
    rng = file_rng(config.seed, task.day, task.index)
    # The file covers its slice of the day's traffic, so ts increases across a day's files.
    q0, q1 = task.first_row / task.rows_per_day, (task.first_row + task.rows) / task.rows_per_day
    impressions = world.sample(rng, task.day, task.rows, q0, q1)
    columns = impressions.columns
    columns["request_id"] = (task.day << 32) | (task.first_row + np.arange(task.rows, dtype=np.int64))
    arrays = []
    for field in SCHEMA:
        if field.name in impressions.lists:
            offsets, values = impressions.lists[field.name]
            arrays.append(
                pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int64()))
            )
        else:
            arrays.append(pa.array(np.asarray(columns[field.name], field.type.to_pandas_dtype()), field.type))
    table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    task.path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a reader listing the partition never sees half a file (dot files are ignored).
    temporary = task.path.with_name(f".{task.path.name}.{os.getpid()}.tmp")
    pq.write_table(table, temporary, row_group_size=config.row_group_size, compression=config.compression)
    temporary.replace(task.path)
    return FileResult(task.day, {name: columns[name] for name in _LABELS + _TRUTH})


def generate_logs(
    out_dir: str | Path,
    start: dt.date,
    days: int,
    rows_per_day: int,
    config: GeneratorConfig,
    *,
    workers: int = 2,
    verbose: bool = True,
) -> list[Path]:
    """Write `days` days of `rows_per_day` impressions from `start` under `out_dir`; return the files.

    Existing ``part-*.parquet`` files of the written days are removed first, so a rerun with fewer
    files per day leaves no stale ones. With ``verbose`` a progress bar ticks per file and a summary
    (throughput, rates, oracle AUCs) is printed at the end.
    """
    if days < 1 or not 1 <= rows_per_day < 1 << 32:  # request_id keeps the row of the day in 32 bits
        raise ValueError(f"need days >= 1 and 1 <= rows_per_day < 2**32, got {days} and {rows_per_day}")
    began = time.perf_counter()
    out_dir = Path(out_dir)
    tasks = plan_files(out_dir, start, days, rows_per_day, config.rows_per_file)
    for partition in sorted({task.path.parent for task in tasks}):
        for stale in [*partition.glob("part-*.parquet"), *partition.glob(".part-*.tmp")]:
            stale.unlink()
    results: list[FileResult] = []
    with tqdm(total=len(tasks), unit="file", desc="make_logs", disable=not verbose) as progress:
        if workers <= 1:
            for task in tasks:
                results.append(write_file(task, config))
                progress.update()
        else:
            # spawn, not fork: a forked child can inherit locks held by the parent's Arrow threads.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(tasks)), context, _init_worker, (config,)) as pool:
                for future in as_completed([pool.submit(write_file, task, config) for task in tasks]):
                    results.append(future.result())
                    progress.update()
    if verbose:
        print(format_summary(results, days * rows_per_day, time.perf_counter() - began))
    return [task.path for task in tasks]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """exact_auc, NaN for a single class (the summary's tables print it as such)."""
    auc = exact_auc(labels, scores)
    return float("nan") if auc is None else auc


def day_summary(labels: dict[str, np.ndarray]) -> dict[str, float]:
    """Label rates and oracle AUCs of one day's rows (columns as in the files)."""
    click, cart, conversion = (labels[name].astype(bool) for name in _LABELS)
    ratio = lambda num, den: float(num.sum() / den.sum()) if den.any() else float("nan")
    return {
        "rows": len(click),
        "ctr": float(click.mean()),
        "cart_per_click": ratio(cart, click),
        "conversion_per_cart": ratio(conversion, cart),
        "auc_click": _auc(click, labels["_truth_p_click"]),
        "auc_cart": _auc(cart[click], labels["_truth_p_cart_given_click"][click]),
        "auc_conversion": _auc(conversion[click], labels["_truth_p_conversion_given_click"][click]),
        "auc_ctcvr": _auc(conversion, labels["_truth_p_ctcvr"]),
    }


_SUMMARY_HEADER = (
    "date",
    "rows",
    "ctr",
    "cart/click",
    "conv/cart",
    "auc_click",
    "auc_cart",
    "auc_conv",
    "auc_ctcvr",
)


def format_summary(results: list[FileResult], rows: int, seconds: float) -> str:
    """Throughput, then one line per day: label rates and oracle AUCs (cart, conv: over clicked rows)."""
    lines = [f"wrote {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)"]
    lines.append("  ".join(f"{name:>10}" for name in _SUMMARY_HEADER))
    for day in sorted({result.day for result in results}):
        parts = [result.labels for result in results if result.day == day]
        summary = day_summary({name: np.concatenate([part[name] for part in parts]) for name in parts[0]})
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        values = [f"{value:>10,}" if key == "rows" else f"{value:>10.4f}" for key, value in summary.items()]
        lines.append("  ".join([f"{date.isoformat():>10}", *values]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Path]:
    defaults = GeneratorConfig()
    parser = argparse.ArgumentParser(prog="python -m jobs.make_logs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="root of the dt=YYYY-MM-DD partitions")
    parser.add_argument("--start", required=True, type=dt.date.fromisoformat, help="first day, YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--rows-per-day", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--rows-per-file", type=int, default=defaults.rows_per_file)
    parser.add_argument("--task-correlation", type=float, default=defaults.task_correlation)
    parser.add_argument("--selection-bias", type=float, default=defaults.selection_bias)
    parser.add_argument("--position-bias", type=float, default=defaults.position_bias)
    parser.add_argument("--workers", type=int, default=2, help="processes; days and files run in parallel")
    args = parser.parse_args(argv)
    config = replace(
        defaults,
        seed=args.seed,
        rows_per_file=args.rows_per_file,
        task_correlation=args.task_correlation,
        selection_bias=args.selection_bias,
        position_bias=args.position_bias,
    )
    return generate_logs(args.out, args.start, args.days, args.rows_per_day, config, workers=args.workers)


if __name__ == "__main__":
    main()
