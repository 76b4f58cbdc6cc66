"""Speed paths of the pipeline keep its guarantees: start_early yields the same batches, in order,
with errors raised where the caller iterates; capped read tasks still deliver every row once."""

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from mtl_rec.config import SampleSpace, load_feature_spec
from mtl_rec.config.data import DataConfig
from pipelines.dataset import build_dataset, compute_stats, iter_batches, layout_for, start_early
from pipelines.errors import BadInputError
from pipelines.read import inspect_logs, parse_dates


def test_start_early_pulls_the_first_item_in_the_background_then_yields_everything_in_order():
    pulled_by, started = [], threading.Event()

    def items():
        pulled_by.append(threading.current_thread().name)
        started.set()
        yield from range(5)

    batches = start_early(items())
    assert started.wait(timeout=10), "the first item was not pulled before the caller iterated"
    assert pulled_by == ["first-batch"]
    assert list(batches) == [0, 1, 2, 3, 4]


def test_start_early_of_an_empty_iterator_is_empty_and_errors_surface_on_iteration():
    assert list(start_early(iter(()))) == []

    def failing():
        raise BadInputError("part-00000.parquet: column price has 3 null rows")
        yield  # a generator

    batches = start_early(failing())  # no error yet: it is the caller's next() that raises
    with pytest.raises(BadInputError, match="column price has 3 null rows"):
        next(batches)


@pytest.mark.distributed
def test_one_read_task_at_a_time_still_delivers_every_row_once(generated_logs, ray_local):
    spec = load_feature_spec("jobs/configs/features.yaml")
    inventory = inspect_logs(generated_logs, parse_dates("2026-11-18"), spec)
    expected = np.concatenate(
        [pq.read_table(p, columns=["request_id"])["request_id"].to_numpy() for p in inventory.paths]
    )
    spaces = {"all": SampleSpace()}
    data = DataConfig(batch_size=1000, rows_per_block=2500, read_tasks=1)
    stats = compute_stats(inventory, spec, data)
    ds = build_dataset(inventory, spec, stats, spaces, data)
    layout = layout_for(spec, spaces, inventory)
    ids = np.concatenate([b.ids.numpy() for b in start_early(iter_batches(ds, layout, data.batch_size))])
    assert len(ids) == len(expected) == 30_000
    assert np.array_equal(np.sort(ids), np.sort(expected))
