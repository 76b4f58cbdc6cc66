"""Silence the library output a user has no use for, precisely: by logger, or by warning category,
module and message. Never all warnings: a new one from any library still shows.

Each entry below is known and checked:

- FBGEMM's "an autograd kernel was not registered ... may lead to silently incorrect behavior" for
  `fbgemm::dense_embedding_codegen_lookup_function`: the kernel of TorchRec's data-parallel tables
  registers its backward as an autograd.Function around the op rather than on the op's Autograd key,
  so torch's fallback warns on the first backward. The gradient is right: the data-parallel table's
  gradient on 2 real gloo ranks equals plain autograd's on an unsharded copy of the model
  (tests/mtl_rec/test_sharding.py, test_fused_optimizer_updates_each_touched_row_exactly_once).
- TorchRec's planner FutureWarning on HeuristicalStorageReservation (advice for GPU memory
  estimates; the CPU plans here are pinned per checkpoint, mtl_rec.sharding), its `broadcast_buffers`
  deprecation (inside DistributedModelParallel's own DDP wrapper), torch.distributed.checkpoint's
  ShardedTensor deprecation (TorchRec's sharded tables are ShardedTensors in torchrec 1.8) and
  torch.fx's is_fx_tracing notice (TorchRec's tracing helpers): none is about this code.
- INFO records of torchrec and fbgemm_gpu (the planner's storage and perf tables; FBGEMM logs every
  TBE's constructor arguments on the root logger) and TorchRec's "Sharding Type is data_parallel,
  caching params will be ignored" (~100 lines per worker and fit). Rank 0 prints the plan itself
  (jobs.worker.train).

- Ray Data's INFO lines on the console ("Starting execution of Dataset ...", its plan, "execution
  finished in 0.3 seconds": four lines for every pass over every dataset, from the driver and from
  each split coordinator) and its "Progress bars disabled" notice (progress is the trainer's own
  bar): `quiet_ray_data`, through Ray Data's own logging config. They stay in ray-data.log.

Example::

    >>> quiet_libraries()   # first thing in a Ray Train worker function
    >>> quiet_ray_data()    # on the driver, before it starts a local Ray
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from pathlib import Path

# (category, module regex, message regex) per known-benign warning; see the module doc.
BENIGN_WARNINGS = (
    (
        UserWarning,
        r"torch\.autograd\.graph",
        r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
    ),
    (
        FutureWarning,
        r"torchrec\.distributed\.planner",
        r"HeuristicalStorageReservation is known to cause issues",
    ),
    (FutureWarning, r"torchrec\.distributed", r"`broadcast_buffers` is deprecated"),
    (
        FutureWarning,
        r"torch\.distributed\.checkpoint",
        r"Please use DTensor instead and we are deprecating ShardedTensor",
    ),
)
# Loggers whose INFO records are the planner's and the kernels' diagnostics; warnings still show.
CHATTY_LOGGERS = ("torchrec", "fbgemm_gpu")
# torch's own logging (the "[rank0]:W..." lines) of modules that only relay TorchRec's internals
TORCH_NOTICES = ("torch.fx._symbolic_trace",)
# (logger, message prefix, highest level dropped) of known-benign records: TorchRec warns for every
# data-parallel table that caching parameters are ignored (such tables are dense replicas, with no
# cache), and its planner's plan check warns "Sharding spec not found" for each of them too (a
# replica has no shard spec; a sharded table without one fails DMP's sharding itself); FBGEMM logs
# every TBE's constructor arguments at INFO on the root logger; TorchRec 1.8 asks for Topology to be
# built by its TopologyFactory (mtl_rec.sharding builds it directly; the stack move of issue 17
# revisits that, since the notice says a later TorchRec will insist); its planner warns that dense
# sizes are wrong "in dry run scenarios, where tensors are not materialized": the dense layers here
# are materialised on the CPU before planning (mtl_rec.models.model), only the tables are on meta.
BENIGN_RECORDS = (
    (
        "torchrec.distributed.utils",
        "Sharding Type is data_parallel, caching params will be ignored",
        logging.WARNING,
    ),
    ("", "Sharding spec not found for ", logging.WARNING),
    ("torchrec.distributed.planner.types", "The topology was constructed directly", logging.WARNING),
    ("", "[TBE=", logging.INFO),
    (
        "torchrec.distributed.planner.storage_reservations",
        "There is a known issue with TorchRec's dense tensor size calculation in dry run",
        logging.WARNING,
    ),
)


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str, level: int) -> None:
        super().__init__(name=f"mtl_rec.quiet:{prefix}")
        self.prefix, self.level = prefix, level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > self.level or not record.getMessage().startswith(self.prefix)


RAY_DATA_LOGGING = Path(__file__).with_name("ray_data_logging.yaml")
RAY_DATA_NOTICE = "Progress bars disabled."


class RayDataNotices(logging.Filter):
    """Drops Ray Data's notice that its progress bars are off (set by the pipeline on purpose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_DATA_NOTICE)


def quiet_ray_data() -> None:
    """Ray Data's console output to warnings and errors (see the module doc): in this process, and, by
    RAY_DATA_LOGGING_CONFIG, in the processes of a local Ray started after this call (its workers
    inherit the environment). A user's own RAY_DATA_LOGGING_CONFIG is left as it is."""
    if "RAY_DATA_LOGGING_CONFIG" in os.environ or not RAY_DATA_LOGGING.is_file():
        return
    os.environ["RAY_DATA_LOGGING_CONFIG"] = str(RAY_DATA_LOGGING)
    for handler in logging.getLogger("ray.data").handlers:  # configured when ray.data was imported
        if handler.name == "console":
            handler.setLevel(logging.WARNING)
            handler.addFilter(RayDataNotices())


# Ray Train logs "Reporting training result N: TrainingReport(...)" at INFO on every rank for every
# ray.train.report, through a logger named after its module's file path (outside `ray.train`, so its
# LoggingConfig level does not reach it): the run's metrics.json holds what it reports.
RAY_TRAIN_REPORTS = ("ray.train.v2._internal.execution.context", "Reporting training result", logging.INFO)


def quiet_libraries() -> None:
    """Apply the filters above in this process (idempotent; call in every worker process)."""
    module, prefix, level = RAY_TRAIN_REPORTS
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # another Ray Train layout: nothing to filter
        spec = None
    if spec is not None and spec.origin:
        _drop(spec.origin, prefix, level)
    for category, module, message in BENIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in TORCH_NOTICES:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name, prefix, level in BENIGN_RECORDS:
        _drop(name, prefix, level)


def _drop(logger_name: str, prefix: str, level: int) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropRecords) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(_DropRecords(prefix, level))
