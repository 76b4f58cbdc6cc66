"""NoDropDataConfig: how Ray Train hands a dataset's rows to the workers (jobs.worker.data_config)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import ray
from ray.data._internal.iterator.stream_split_iterator import StreamSplitDataIterator

from jobs.worker.data_config import NoDropDataConfig

ROOT = Path(__file__).resolve().parents[2]
ROWS = 1_003  # not a multiple of 2: Ray's equal=True split would drop a row


@ray.remote(num_cpus=0.5)
class Consumer:
    def ids(self, iterator, passes: int = 1) -> list[np.ndarray]:
        return [  # one array per pass over the same iterator, as a worker reads one per epoch
            np.concatenate([b["id"] for b in iterator.iter_batches(batch_size=100, batch_format="numpy")])
            for _ in range(passes)
        ]


def _delivered(iterators: list, passes: int = 1) -> list:
    # the shards of a streaming split are read at the same time, by one consumer each (as workers do)
    consumers = [Consumer.remote() for _ in iterators]
    delivered = ray.get([c.ids.remote(it, passes) for c, it in zip(consumers, iterators)])
    return [ids[0] for ids in delivered] if passes == 1 else delivered


def test_one_worker_reads_the_dataset_itself_and_two_split_it_without_dropping_a_row(ray_local):
    dataset = ray.data.range(ROWS, override_num_blocks=7)
    config = NoDropDataConfig()

    (one,) = config.configure({"train": dataset}, 1, None, None)
    # no split of one: that would start a coordinator actor before the first batch
    assert not isinstance(one["train"], StreamSplitDataIterator)
    (ids,) = _delivered([one["train"]])
    assert np.array_equal(np.sort(ids), np.arange(ROWS))

    # the config's execution options reach the lone worker's executor, pass after pass
    (ordered,) = NoDropDataConfig(preserve_order=True).configure({"train": dataset}, 1, None, None)
    assert ordered["train"].get_context().execution_options.preserve_order
    ((first, second),) = _delivered([ordered["train"]], passes=2)  # every epoch reads every row again
    assert np.array_equal(first, np.arange(ROWS)) and np.array_equal(second, np.arange(ROWS))

    two = config.configure({"train": dataset}, 2, None, None)
    assert all(isinstance(shard["train"], StreamSplitDataIterator) for shard in two)
    delivered = _delivered([shard["train"] for shard in two])
    assert all(len(ids) > 0 for ids in delivered)
    assert np.array_equal(np.sort(np.concatenate(delivered)), np.arange(ROWS))  # each row exactly once


def test_the_data_config_imports_no_torch():
    # Ray Train's controller unpickles the dataset config, importing its module before any worker
    # starts: torch and torchrec there cost every fit ~2.4 s of CPU (docs/benchmarks.md, start-up).
    check = (
        "import sys; import jobs.worker.data_config;"
        "heavy = ('torch', 'torchrec', 'mtl_rec.models', 'jobs.worker.runtime');"
        "heavy = sorted(m for m in heavy if m in sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=120)
