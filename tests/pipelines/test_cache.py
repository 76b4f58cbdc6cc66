"""pipelines.cache.ShardCache: a whole pass kept in memory serves later passes, every row exactly once
per pass, reshuffled by seed; nothing is kept from a partial pass or over the budget; and the ranks
read from memory all together or not at all (2 real gloo ranks)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.cache import ShardCache
from tests.harness import run_on_two_ranks


def _tables(rows: int, batch: int, first_id: int = 0) -> list[pa.Table]:
    ids = np.arange(first_id, first_id + rows, dtype=np.int64)
    lists = pa.array([[int(i)] * int(i % 3) for i in ids], type=pa.list_(pa.int64()))  # multi-hot, some empty
    whole = pa.table({"id": ids, "sparse.recent": lists, "label.click": (ids % 2).astype(np.int8)})
    return [whole.slice(start, batch) for start in range(0, rows, batch)]


def _ids(tables) -> np.ndarray:
    return np.concatenate([np.zeros(0, np.int64), *(t["id"].to_numpy() for t in tables)])


def _kept_pass(cache: ShardCache, tables: list[pa.Table]) -> np.ndarray:
    seen = _ids(cache.keep(iter(tables)))
    cache.complete(whole_pass=True)
    return seen


def test_a_whole_pass_is_kept_and_later_passes_reshuffle_every_row_once():
    cache = ShardCache(budget_bytes=1 << 20)
    streamed = _tables(1000, 64)
    assert not cache.ready
    assert np.array_equal(_kept_pass(cache, streamed), np.arange(1000))  # passed through unchanged
    assert cache.ready

    first, second = [list(cache.tables(100, seed)) for seed in (1, 2)]
    assert [t.num_rows for t in first] == [100] * 10
    for tables in (first, second):
        assert np.array_equal(np.sort(_ids(tables)), np.arange(1000))  # every row, once
    assert not np.array_equal(_ids(first), _ids(second))  # another order each pass
    assert np.array_equal(_ids(cache.tables(100, 1)), _ids(first))  # the seed decides it
    assert np.array_equal(_ids(cache.tables(300, None)), np.arange(1000))  # no seed: the read order

    # a row's columns travel together: the list column and the label follow their id
    table = pa.concat_tables(first)
    ids = table["id"].to_numpy()
    assert table["sparse.recent"].to_pylist() == [[int(i)] * int(i % 3) for i in ids]
    assert np.array_equal(table["label.click"].to_numpy(), ids % 2)


def test_nothing_is_kept_from_a_partial_pass_or_over_the_budget():
    partial = ShardCache(budget_bytes=1 << 20)
    stream = partial.keep(iter(_tables(1000, 64)))
    next(stream)  # the consumer stopped after one batch (max_steps)
    partial.complete(whole_pass=True)
    assert not partial.ready

    resumed = ShardCache(budget_bytes=1 << 20)
    _ids(resumed.keep(iter(_tables(1000, 64))))
    resumed.complete(whole_pass=False)  # a resumed epoch: only the rows it had left
    assert not resumed.ready
    assert np.array_equal(_kept_pass(resumed, _tables(1000, 64)), np.arange(1000))  # the next whole one is
    assert resumed.ready

    tables = _tables(1000, 64)
    small = ShardCache(budget_bytes=sum(t.nbytes for t in tables) - 1)
    assert np.array_equal(_kept_pass(small, tables), np.arange(1000))  # still streams every row
    assert not small.ready and small.over_budget
    _kept_pass(small, tables)
    assert not small.ready  # over the budget for good

    empty = ShardCache(budget_bytes=1 << 20)  # Ray's split gave this rank no block: ready, serves nothing
    assert _kept_pass(empty, []).size == 0
    assert empty.ready and list(empty.tables(64, seed=3)) == []

    off = ShardCache(budget_bytes=0)  # data.cache_mb=0
    _kept_pass(off, tables)
    assert not off.ready and off.over_budget
    with pytest.raises(RuntimeError, match="before a whole pass"):
        next(off.tables(10, None))


def _agreement_worker(rank: int, out_dir) -> None:
    big = 10 * sum(t.nbytes for t in _tables(500, 50))

    # rank 1 has not kept a whole pass (its epoch was a resumed one): both stream, rank 0 drops its rows
    cache = ShardCache(big)
    if rank == 0:
        _kept_pass(cache, _tables(500, 50, first_id=0))
    assert cache.ready == (rank == 0)
    assert cache.ready_on_every_rank() is False and not cache.ready
    # the next pass is whole on both ranks: both read from memory after it
    _kept_pass(cache, _tables(500, 50, first_id=rank * 500))
    assert cache.ready_on_every_rank() is True
    assert np.array_equal(np.sort(_ids(cache.tables(64, seed=rank))), np.arange(rank * 500, rank * 500 + 500))

    # rank 1's shard is empty (fewer blocks than ranks): rank 0 still reads from memory
    cache = ShardCache(big)
    _kept_pass(cache, _tables(500, 50) if rank == 0 else [])
    assert cache.ready_on_every_rank() is True
    assert _ids(cache.tables(64, seed=1)).size == (500 if rank == 0 else 0)

    # rank 0's shard is over its budget: both stream, now and later
    budget = 10 if rank == 0 else big
    cache = ShardCache(budget)
    _kept_pass(cache, _tables(500, 50, first_id=rank * 500))
    assert cache.ready == (rank == 1)
    assert cache.ready_on_every_rank() is False
    _kept_pass(cache, _tables(500, 50, first_id=rank * 500))
    assert not cache.ready and cache.ready_on_every_rank() is False
    (out_dir / f"rank{rank}.ok").write_text("ok")


@pytest.mark.distributed
def test_ranks_read_from_memory_all_together_or_not_at_all(tmp_path):
    run_on_two_ranks(_agreement_worker, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.ok", "rank1.ok"]
