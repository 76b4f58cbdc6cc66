"""How the pipeline reads, checks and batches the logs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class DataConfig:
    """Reader, validator and batching settings.

    on_bad_rows:  error      stop at the first block with bad rows; the message names file, column, counts
                  quarantine write bad rows with a `_reject_reason` under RUN_DIR/quarantine and count them
    on_bad_files: error      an empty, corrupt or mis-typed file stops the job
                  skip       such a file is set aside, listed with its reason and row count in the summary;
                             every file's pages are decoded once before training, so a torn page behind
                             an intact footer is set aside too, never met half way through a pass
    """

    # rows per step on EACH worker (the global batch is workers x batch_size). 1024 on 2 workers
    # (2048 a step) is the quality/speed balance measured in docs/benchmarks.md (quality): 4096 is
    # 1.5x faster and ~0.01 AUC worse on 200k training rows (4x fewer steps)
    batch_size: int = 1024
    eval_batch_size: int = 16384
    on_bad_rows: Literal["error", "quarantine"] = "error"
    on_bad_files: Literal["error", "skip"] = "error"
    prefetch_batches: int = 2
    # rows per streamed block (one Parquet row-group read); blocks are the unit the split hands out
    rows_per_block: int = 65536
    # read tasks of a training or evaluation dataset running at once. 0 (auto): one per node on a
    # cluster without GPUs, where trainers hold every core and a read task outpaces a CPU trainer
    # ~40x (each extra one only starts a worker process that competes with them); no cap with GPUs
    read_tasks: int = 0
    # keep Ray Data's block order (preserve_order): with one worker the run is then reproducible;
    # costs some throughput, since a slow block holds back the ones behind it
    deterministic: bool = False
    # training rows are drawn at random from a buffer of this many rows on each worker (Ray Data's
    # local shuffle, seeded by train.seed, the epoch and the rank), and the files are read in a
    # seeded order, so batches mix days and files instead of consecutive impressions; 0: file order
    shuffle_buffer_rows: int = 65536
    # a worker keeps its share of the transformed training rows (and of the validation hold-out)
    # in memory after a pass that read all of them, while each stays under this many MB, and the
    # later passes (epochs) draw their batches from there instead of re-reading the logs
    # (pipelines.cache; +18-33% samples/s on UCI Adult's multi-pass runs). A pass from memory is a
    # full random permutation of the worker's rows, seeded like the streamed shuffle but not equal
    # to it. 0: every pass reads the logs
    cache_mb: int = 1024
    # audit the request ids before reading (pipelines.ids): a repeated id is a bad row under
    # on_bad_rows, an eval day sharing ids with the train days an error. The driver holds 16 bytes
    # a row while it runs (1.6 GB for 100M rows): turn it off only for logs deduplicated upstream
    check_duplicate_ids: bool = True
