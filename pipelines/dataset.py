"""The whole Ray Data chain: read -> validate -> transform, then Batch iteration on each consumer.

Validation and filtering happen here, before Ray Train splits the dataset, so every rank sees
the same stream shape (filtering per rank after the split would desynchronise DDP). Read, validate
and transform run in ONE task per file, block by block (no re-batching, one pass over the memory).

Example::

    >>> inventory = inspect_logs(logs, parse_dates("2026-11-18..2026-11-19"), spec)
    >>> stats = compute_stats(inventory, spec, data_cfg)
    >>> ds = build_dataset(inventory, spec, stats, spaces, data_cfg, quarantine_dir="run/quarantine")
    >>> for batch in iter_batches(ds, layout_for(spec, spaces, inventory), batch_size=4096):
    ...     ...
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow as pa

from mtl_rec.config import FeatureSpec, FeatureStats, SampleSpace
from mtl_rec.config.data import DataConfig
from pipelines.collate import BatchLayout, collate
from pipelines.errors import BadInputError, surface_bad_input
from pipelines.prepare import moments_block, prepare_block
from pipelines.read import LogInventory, read_logs
from pipelines.transform import reduce_moments
from pipelines.validate import quarantine_summary


def configure_ray_data() -> None:
    """Ray Data settings the pipeline relies on; call on the driver before building datasets."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Keep our BadInputError (file, column, counts) as the exception type instead of UserCodeException.
    ctx.raise_original_map_exception = True
    # Its plan and "Starting execution" lines for every pass over every dataset: in ray-data.log only.
    ctx.print_on_execution_start = False


def _quarantine(policy: str, quarantine_dir: str | Path | None) -> str | None:
    if policy == "quarantine" and not quarantine_dir:
        raise ValueError("on_bad_rows=quarantine needs a quarantine directory (RUN_DIR/quarantine)")
    return str(quarantine_dir) if quarantine_dir else None


def compute_stats(
    inventory: LogInventory, spec: FeatureSpec, data: DataConfig, quarantine_dir: str | Path | None = None
) -> FeatureStats:
    """Dense-feature moments over the validated rows of the inventory (the training dates)."""
    configure_ray_data()
    ds = read_logs(
        inventory,
        moments_block,
        data.rows_per_block,
        spec=spec,
        policy=data.on_bad_rows,
        quarantine_dir=_quarantine(data.on_bad_rows, quarantine_dir),
    )
    with surface_bad_input():
        rows = ds.take_all()
    dates = sorted({f.date.isoformat() for f in inventory.files})
    stats = reduce_moments(rows, spec, dates=dates)
    if stats.rows == 0:  # nothing to scale by or train on: stop before Ray Train starts
        set_aside = quarantine_summary(quarantine_dir, spec.row_id_column) if quarantine_dir else {}
        reasons = "; ".join(f"{r}: {n} rows" for r, n in set_aside.get("by_reason", {}).items())
        raise BadInputError(
            f"{', '.join(dates) or 'no dates'}: no valid rows to train on: {inventory.rows} rows in "
            f"{len(inventory.files)} files, {set_aside.get('rows', 0)} set aside"
            + (f" ({reasons})" if reasons else "")
        )
    dominated = _dominated_scaling(stats, spec)
    if dominated:
        raise BadInputError(
            f"{', '.join(dates)}: scaling statistics decided by single rows (fix or set aside those "
            "rows, or give the feature `transform: log1p`):\n  " + "\n  ".join(dominated)
        )
    return stats


# One row holding more than this share of a feature's variance (or span) decides its scaling alone:
# a value such as 1e30 in a column of prices turns every other row's scaled value into ~0. An ordinary
# heavy tail never comes close: one row's share is at most 1/n of the variance per unit of its z^2/n.
DOMINATING_SHARE = 0.5
MIN_ROWS_FOR_SHARE = 100  # below this one row legitimately holds much of the variance


def _dominated_scaling(stats: FeatureStats, spec: FeatureSpec) -> list[str]:
    """One line per scaled dense feature whose minimum or maximum alone holds more than
    DOMINATING_SHARE of its variance, over its training rows (after its transform)."""
    lines = []
    for feature in spec.dense:
        s = stats.features[feature.name]
        if feature.scaling == "none" or s.count < MIN_ROWS_FOR_SHARE or s.std == 0:
            continue
        for extreme in (s.minimum, s.maximum):
            share = (extreme - s.mean) ** 2 / (s.count * s.std**2)  # the row's share of n * variance
            if share > DOMINATING_SHARE:
                lines.append(
                    f"{feature.column}: one value ({extreme:.4g} after its transform) holds {share:.0%} of "
                    f"the feature's variance over {s.count:,} rows (mean {s.mean:.4g}, std {s.std:.4g}): "
                    "scaled by these statistics, every other row's value is about the same"
                )
    return lines


def read_task_cap(data: DataConfig) -> int | None:
    """How many read tasks a dataset may run at once: data.read_tasks, or for 0 (auto) one per node
    of a cluster without GPUs and no cap where there are GPUs or Ray is not started yet.

    Why a cap on CPU: trainers hold every core, and each concurrent read task starts a worker
    process (a second of imports) and reads ahead in a burst, taking CPU from the trainers for no
    gain in supply (docs/benchmarks.md: ~10% end to end on 2 cores, reference MMoE).
    """
    if data.read_tasks:
        return data.read_tasks
    import ray

    if not ray.is_initialized() or ray.cluster_resources().get("GPU", 0) > 0:
        return None
    return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


def build_dataset(
    inventory: LogInventory,
    spec: FeatureSpec,
    stats: FeatureStats,
    spaces: Mapping[str, SampleSpace],
    data: DataConfig,
    quarantine_dir: str | Path | None = None,
    position_file: str | Path | None = None,
    split=None,
    shuffle_seed: int | None = None,
):
    """A lazy ray.data.Dataset of transformed blocks (columns documented in pipelines.transform).

    position_file: a data position (mtl_rec.data_position) that read tasks load when they start; the
    rows it lists are skipped (a resumed run's already-trained rows).
    split: a pipelines.split.HoldoutSplit: keep only one side of the hold-out split.
    shuffle_seed: read the files in an order drawn from this seed (None: inventory order)."""
    configure_ray_data()
    return read_logs(
        inventory,
        prepare_block,
        data.rows_per_block,
        position_file=str(position_file) if position_file else None,
        split=split,
        max_tasks=read_task_cap(data),
        file_order_seed=shuffle_seed,
        spec=spec,
        stats=stats,
        spaces=dict(spaces),
        policy=data.on_bad_rows,
        quarantine_dir=_quarantine(data.on_bad_rows, quarantine_dir),
    )


def layout_for(spec: FeatureSpec, spaces: Mapping[str, SampleSpace], inventory: LogInventory) -> BatchLayout:
    """The BatchLayout transform_block produces for this spec (no need to look at data)."""
    meta = (spec.group_key, spec.time_column, *spec.meta_columns, *inventory.truth_columns)
    return BatchLayout(
        sparse=spec.sparse_names,
        multi_hot=frozenset(f.name for f in spec.sparse if f.multi_hot),
        labels=tuple(spec.labels),
        masks=tuple(spaces),
        meta=tuple(dict.fromkeys(c for c in meta if c)),
    )


def iter_batches(
    source,
    layout: BatchLayout,
    batch_size: int,
    prefetch_batches: int = 2,
    drop_last: bool = False,
    shuffle_buffer_rows: int = 0,
    shuffle_seed: int | None = None,
) -> Iterator:
    """Batches from a ray.data.Dataset or a DataIterator (a Ray Train shard). The last may be short.

    shuffle_buffer_rows > 0: rows are drawn at random from a buffer of at least that many rows
    (Ray Data's local shuffle, seeded by `shuffle_seed`), so a batch mixes blocks and files instead
    of holding consecutive impressions of one file. Every row still comes out exactly once, and each
    carries its own data position, so exactly-once resume is unaffected."""
    tables = iter_tables(source, batch_size, prefetch_batches, drop_last, shuffle_buffer_rows, shuffle_seed)
    return collate_tables(tables, layout)


def iter_tables(
    source,
    batch_size: int,
    prefetch_batches: int = 2,
    drop_last: bool = False,
    shuffle_buffer_rows: int = 0,
    shuffle_seed: int | None = None,
) -> Iterator[pa.Table]:
    """iter_batches before collation: the transformed rows as Arrow tables of `batch_size` rows."""
    return source.iter_batches(
        batch_size=batch_size,
        batch_format="pyarrow",
        prefetch_batches=prefetch_batches,
        drop_last=drop_last,
        local_shuffle_buffer_size=shuffle_buffer_rows or None,
        local_shuffle_seed=shuffle_seed if shuffle_buffer_rows else None,
    )


def collate_tables(tables: Iterator[pa.Table], layout: BatchLayout) -> Iterator:
    """Arrow tables of transformed rows -> Batches; a bad row met while reading raises BadInputError."""
    with surface_bad_input():
        for table in tables:
            yield collate(table, layout)


def start_early(batches: Iterator) -> Iterator:
    """Start pulling the first batch of `batches` now, in a background thread; iterate the result later.

    The first batch of a Ray Train shard waits for seconds of start-up: with several workers Ray
    Train creates the split's coordinator actor on the first get_dataset_shard; the executor (the
    coordinator, or a lone worker itself) starts the read tasks on the first request, and their
    worker processes may have to be started. A worker that calls
    this before building its model overlaps that wait with the model's construction and sharding.
    The thread only runs Ray calls (no torch collectives), and the iterator is never used from two
    threads at once: the caller's first next() joins the thread. An error is raised there.

    Example::

        >>> batches = start_early(iter_batches(ray.train.get_dataset_shard("train"), layout, 4096))
        >>> model = shard_model(...)            # meanwhile the first batch is read
        >>> for batch in batches: ...
    """
    import threading

    first: list = []
    error: list[BaseException] = []

    def pull() -> None:
        try:
            first.append(next(batches))
        except StopIteration:
            pass
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    thread = threading.Thread(target=pull, name="first-batch", daemon=True)
    thread.start()

    def resume() -> Iterator:
        thread.join()
        if error:
            raise error[0]
        if first:
            yield first.pop()
            yield from batches

    return resume()
