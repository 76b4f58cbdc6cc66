"""The dense-FLOP floor: how fast the model could train if this machine did nothing but its matmuls.

    floor samples/s = matmul FLOP/s of the machine (all cores) / dense FLOPs per training sample

FLOPs per sample are counted, not estimated: one forward and one backward of the real model under
torch.utils.flop_counter.FlopCounterMode, which records every matmul-like op (addmm, mm, bmm) in
both passes. For a Linear of `i` inputs and `o` outputs that is 2*i*o per sample forward, 2*i*o for
the weight gradient, and 2*i*o more for the input gradient where the input needs one (every layer
past the embeddings; not the first layer of the dense-feature MLP, whose input is data).
Element-wise work (activations, softmax, losses, the optimizer) is not counted: it is memory-bound
and small beside the matmuls. Embedding pooling is reported apart (`pooling_flops_per_sample`:
one add per looked-up value and dimension, forward and backward); it is memory-bound as well and
not part of the floor.

The matmul rate is the best of a few square float32 matmuls with torch using every core, the
most this machine does per second on dense math.

Example::

    >>> counts = count_flops(model, batch)          # forward + backward, per sample
    >>> counts.forward, counts.backward
    (1163264.0, 2323200.0)
    >>> floor = matmul_flops_per_s()["flops_per_s"] / counts.total
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class FlopCount:
    """Per-sample FLOPs of one training step's forward and backward, and their split by op."""

    forward: float
    backward: float
    by_op: dict[str, float]

    @property
    def total(self) -> float:
        return self.forward + self.backward


def count_flops(model: torch.nn.Module, batch) -> FlopCount:
    """Run model(batch) and a backward of the summed log-probabilities under FlopCounterMode.

    model: a MultiTaskModel on a real device (returns TaskOutputs); batch: mtl_rec.batch.Batch of B rows.
    Every task's log_p enters the backward, so every tower and gate gets its gradient, as in training.
    """
    from torch.utils.flop_counter import FlopCounterMode

    rows = batch.batch_size
    with FlopCounterMode(display=False) as counter:
        outputs = model(batch)
        loss = torch.stack([log_p.sum() for log_p in outputs.log_p.values()]).sum()  # T x [B] -> []
        forward = counter.get_total_flops()
        loss.backward()
        total = counter.get_total_flops()
    by_op = {str(op): count / rows for op, count in counter.get_flop_counts()["Global"].items()}
    return FlopCount(forward=forward / rows, backward=(total - forward) / rows, by_op=by_op)


def synthetic_batch(spec, batch_size: int, list_length: int = 1):
    """A Batch of `batch_size` rows for `spec`: id 0 in every table, `list_length` ids per multi-hot
    feature, random dense features. Dense FLOPs depend on shapes only, not on the ids."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from mtl_rec.batch import Batch

    lengths = torch.cat(
        [
            torch.full((batch_size,), list_length if feature.multi_hot else 1, dtype=torch.int32)
            for feature in spec.sparse
        ]
    )  # [K * B]
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=list(spec.sparse_names),
        values=torch.zeros(int(lengths.sum()), dtype=torch.int64),  # [sum lengths]
        lengths=lengths,
    )
    ones = torch.ones(batch_size)
    return Batch(
        sparse=sparse,
        dense=torch.randn(batch_size, spec.num_dense),  # [B, D]
        labels={label: ones for label in spec.labels},
        masks={},
        ids=torch.arange(batch_size),
    )


def model_flops(cfg, spec, batch_size: int = 256) -> FlopCount:
    """FLOPs per sample of cfg's model, counted on a synthetic batch with every table cut to 8 rows
    (table size changes no dense FLOP, and the model is then built in milliseconds)."""
    from mtl_rec.models.model import MultiTaskModel

    small_tables = {
        name: replace(table, num_embeddings=min(table.num_embeddings, 8))
        for name, table in spec.tables.items()
    }
    small = replace(spec, tables=small_tables)
    torch.manual_seed(0)
    model = MultiTaskModel(small, cfg.model, cfg.tasks, device="cpu")
    return count_flops(model, synthetic_batch(small, batch_size))


def pooling_flops_per_sample(spec, mean_list_length: dict[str, float]) -> float:
    """Adds of embedding pooling per sample, forward and backward: 2 * dim * ids looked up per row.

    mean_list_length: {multi-hot feature: mean ids per row in the data}; single-hot features look up 1.
    """
    ids_times_dim = sum(
        spec.tables[f.table].dim * (mean_list_length.get(f.name, 0.0) if f.multi_hot else 1.0)
        for f in spec.sparse
    )
    return 2.0 * ids_times_dim


def matmul_flops_per_s(size: int = 2048, threads: int | None = None, repeats: int = 5) -> dict:
    """Best float32 [size, size] x [size, size] rate with `threads` torch threads (default: all cores)."""
    threads = threads or os.cpu_count() or 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up: thread pool start, first-touch of the output
        best = float("inf")
        for _ in range(repeats):
            begin = time.perf_counter()
            a @ b  # [n, n] x [n, n] -> [n, n]
            best = min(best, time.perf_counter() - begin)
    finally:
        torch.set_num_threads(previous)
    return {"size": size, "threads": threads, "seconds": best, "flops_per_s": 2.0 * size**3 / best}


def bench_flops(args) -> dict:
    """FLOPs per sample of the training config's model, the machine's matmul rate, and the floor."""
    from mtl_rec.run_config import load_run_config

    cfg = load_run_config(args.train_config)
    spec = cfg.feature_spec()
    counts = model_flops(cfg, spec)
    rate = matmul_flops_per_s()
    return {
        "config": args.train_config,
        "flops_per_sample": {
            "forward": counts.forward,
            "backward": counts.backward,
            "total": counts.total,
            "by_op": counts.by_op,
        },
        "matmul": rate,
        "floor_samples_per_s": rate["flops_per_s"] / counts.total,
    }


def print_flops(result: dict) -> None:
    counts, rate = result["flops_per_sample"], result["matmul"]
    print(f"\nflops: {result['config']}")
    print(
        f"  dense FLOPs per sample  {counts['total'] / 1e6:8.3f} M  "
        f"(forward {counts['forward'] / 1e6:.3f} M, backward {counts['backward'] / 1e6:.3f} M)"
    )
    print(
        f"  matmul rate             {rate['flops_per_s'] / 1e9:8.1f} GFLOP/s  "
        f"([{rate['size']}]^2 float32, {rate['threads']} threads)"
    )
    print(f"  dense-FLOP floor        {result['floor_samples_per_s']:>10,.0f} samples/s")
