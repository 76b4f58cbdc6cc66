"""A rank's training rows held in memory after a pass that read all of them, for the later passes.

Every pass over a Ray Train shard re-reads, validates and transforms the logs and waits for Ray's
split to hand out blocks. A rank that has read its whole shard keeps the transformed Arrow rows
(under a memory budget) and later passes draw their batches from them, reshuffled with that pass's
seed: +18-33% samples/s on UCI Adult's multi-pass runs (docs/benchmarks.md, 2026-12-07). A pass from
memory is a full random permutation of the rank's rows; a streamed pass shuffles within Ray's local
buffer (data.shuffle_buffer_rows), so the two give different orders.

Memory: the kept rows are copied out of Ray's object store as they arrive (nothing pins its
blocks), so a rank holds at most the budget plus, while a pass ends, one more copy as the pieces
are joined; a pass from memory gathers one batch at a time.

What stays exact: every row carries its id and data position, so the rows a pass trains are the
same set whichever way they are read, and a checkpoint taken mid-pass records exactly the rows
trained. A restarted worker starts with an empty cache and streams again (the read tasks skip what
the checkpoint covers). A pass that did not read every row of the shard (a resumed one) is not
kept. Every rank decides together (`ready_on_every_rank`, one all-reduce per pass) because a rank
that streams while another reads its cache would be handed the other's blocks by Ray's split.

Example::

    >>> cache = ShardCache(budget_bytes=1 << 30)
    >>> tables = cache.keep(iter_tables(shard, 1024))      # the first pass streams, and is kept
    >>> for batch in collate_tables(tables, layout): ...
    >>> cache.complete(whole_pass=True)
    >>> if cache.ready_on_every_rank():                     # collective
    ...     tables = cache.tables(1024, seed=1)             # the next pass, from memory
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from mtl_rec.distributed import all_reduce_sum, world_size


class ShardCache:
    """One rank's transformed training rows, kept while their Arrow size stays within budget_bytes
    (0: never kept; every pass streams)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.rows: pa.Table | None = None  # the whole shard, once a complete pass was kept
        self._kept: list[pa.Table] = []
        self._kept_bytes = 0
        self._over_budget = budget_bytes <= 0
        self._exhausted = False
        self._empty = False  # a whole pass that held no rows (Ray's split gave this rank no block)

    @property
    def ready(self) -> bool:
        """Whether this rank can serve a whole pass from memory."""
        return self.rows is not None or self._empty

    def ready_on_every_rank(self) -> bool:
        """Collective: whether this pass reads every rank's rows from memory. All ranks or none: a
        rank that streams while another reads its cache would be handed the other's blocks by Ray's
        split. A rank over its budget makes every rank stream from then on."""
        ready, over_budget = all_reduce_sum(torch.tensor([int(self.ready), int(self.over_budget)])).tolist()
        if over_budget:
            self.drop(forever=True)
        elif ready < world_size():
            self.drop()  # some rank has not read a whole pass yet (a resumed epoch): stream this one
        return self.ready

    def keep(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """`tables` passed through unchanged, kept while they fit; `complete` decides at the pass's end."""
        self._kept, self._kept_bytes, self._exhausted = [], 0, False
        for table in tables:
            if not self._over_budget:
                self._kept_bytes += table.nbytes
                if self._kept_bytes > self.budget_bytes:  # too large: stream every pass, hold nothing
                    self._over_budget, self._kept = True, []
                else:  # a copy: the streamed table may be a view into a block of Ray's object store
                    self._kept.append(table.take(pa.array(np.arange(table.num_rows))))
            yield table
        self._exhausted = True

    def complete(self, whole_pass: bool) -> None:
        """End of a pass: hold its rows for later passes if the pass read every row of the shard
        (`whole_pass`: it started with no rows consumed, and its stream ran to the end)."""
        if whole_pass and self._exhausted and not self._over_budget:
            if self._kept:
                self.rows = pa.concat_tables(self._kept).combine_chunks()  # one contiguous table
            else:
                self._empty = True  # ready, with nothing to serve: the others need not stream
        self._kept, self._kept_bytes = [], 0

    @property
    def over_budget(self) -> bool:
        """Whether this rank's shard has outgrown the budget (it then streams every pass)."""
        return self._over_budget

    def drop(self, forever: bool = False) -> None:
        """Stream the next pass (another rank has no whole pass in memory); `forever`: and every
        later one, keeping nothing (another rank's shard is over its budget)."""
        self.rows, self._kept, self._empty = None, [], False
        self._over_budget = self._over_budget or forever

    def tables(self, batch_size: int, seed: int | None) -> Iterator[pa.Table]:
        """A pass over the kept rows in tables of `batch_size` (the last may be short): a seeded
        permutation of every row (seed None: the order they were read in)."""
        if not self.ready:
            raise RuntimeError("ShardCache.tables before a whole pass was kept")
        rows = self.rows
        if rows is None:  # an empty shard
            return
        order = None if seed is None else np.random.default_rng(seed).permutation(rows.num_rows)  # [N]
        for start in range(0, rows.num_rows, batch_size):
            if order is None:
                yield rows.slice(start, batch_size)
            else:  # one batch gathered at a time: no second copy of the shard
                yield rows.take(pa.array(order[start : start + batch_size]))  # [b] rows of the permutation
