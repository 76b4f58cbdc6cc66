"""How Ray Train hands a dataset's rows to mtl-rec's workers: `NoDropDataConfig`.

A module of its own, importing only Ray: Ray Train's controller actor unpickles the dataset config
with the run's context, and everything this module imports, the controller imports before it starts
the worker group. Defined beside the worker runtime, it pulled torch and torchrec into the controller
(about 2.4 s of CPU before any worker starts, on every fit; docs/benchmarks.md).
"""

from __future__ import annotations

import warnings

from ray.train import DataConfig as RayDataConfig


class NoDropDataConfig(RayDataConfig):
    """Ray Train's DataConfig, but every dataset is split with equal=False: no row is dropped (one
    worker iterates the whole dataset, unsplit). `preserve_order` keeps block order (reproducible
    single-worker runs).

    Example::

        >>> TorchTrainer(loop, datasets={"train": ds}, dataset_config=NoDropDataConfig())
    """

    def __init__(self, preserve_order: bool = False) -> None:
        super().__init__()
        self.preserve_order = preserve_order

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            with warnings.catch_warnings():  # Ray's own default sets the deprecated field (Ray 2.60)
                warnings.filterwarnings("ignore", "`ExecutionOptions.exclude_resources` is deprecated")
                ds.context.execution_options = self._resolve_execution_options(name)
            ds.context.execution_options.preserve_order = self.preserve_order
            if world_size == 1:
                # The one worker runs the streaming executor itself. A split of one would start a
                # coordinator actor per dataset before the first batch: a 20-pass UCI Adult MMoE ran
                # 67-80k samples/s that way, 101-115k this way (docs/benchmarks.md). Same rows.
                output[0][name] = ds.iterator()
                continue
            for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                output[i][name] = split
        return output
