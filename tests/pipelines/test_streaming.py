"""A generated day streams through Ray Data and 2 consumers see every row exactly once."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from mtl_rec.config import SampleSpace, load_feature_spec
from mtl_rec.config.data import DataConfig
from pipelines.dataset import build_dataset, compute_stats, iter_batches, layout_for
from pipelines.read import inspect_logs, parse_dates

pytestmark = pytest.mark.distributed


def test_two_consumers_see_every_row_exactly_once(generated_logs, ray_local):
    ray = ray_local
    spec = load_feature_spec("jobs/configs/features.yaml")
    inventory = inspect_logs(generated_logs, parse_dates("2026-11-18"), spec)
    expected = np.concatenate(
        [pq.read_table(p, columns=["request_id"])["request_id"].to_numpy() for p in inventory.paths]
    )
    assert len(expected) == inventory.rows == 30_000

    data = DataConfig(batch_size=1000, rows_per_block=2500)  # 12 blocks: both consumers get some
    spaces = {"all": SampleSpace(), "clicked": SampleSpace.parse("click == 1")}
    stats = compute_stats(inventory, spec, data)
    assert stats.rows == 30_000
    ds = build_dataset(inventory, spec, stats, spaces, data)
    layout = layout_for(spec, spaces, inventory)

    @ray.remote(num_cpus=0.5)
    class Consumer:
        def run(self, shard):
            ids, keys, clicked = [], None, 0
            for batch in iter_batches(shard, layout, data.batch_size):
                ids.append(batch.ids.numpy())
                keys = batch.sparse.keys()
                clicked += int(batch.masks["clicked"].sum())
                assert batch.dense.shape == (batch.batch_size, 13)
            return np.concatenate(ids), keys, clicked

    shards = ds.streaming_split(2, equal=False)
    consumers = [Consumer.remote() for _ in shards]
    ray.get([c.__ray_ready__.remote() for c in consumers])
    results = ray.get([c.run.remote(s) for c, s in zip(consumers, shards)])
    seen = [r[0] for r in results]
    assert all(len(s) > 0 for s in seen), "both consumers must get rows"
    union = np.concatenate(seen)
    assert len(union) == len(expected)
    assert len(np.unique(union)) == len(union), "a row was delivered twice"
    assert set(union.tolist()) == set(expected.tolist()), "a row was lost"
    assert results[0][1] == list(spec.sparse_names)
    clicks = pq.read_table(inventory.paths[0], columns=["click"])["click"].to_numpy().sum()
    assert (
        sum(r[2] for r in results)
        == sum(pq.read_table(p, columns=["click"])["click"].to_numpy().sum() for p in inventory.paths)
        >= clicks
    )
