"""Small collective helpers that are no-ops without an initialised process group.

Gradient convention (why `sum_gradients_hook` exists): each rank's loss is the SUM over its
in-space rows divided by the GLOBAL in-space count (mtl_rec.losses). TorchRec's sharded embedding
backward sums row gradients across ranks once its global GRADIENT_DIVISION flag is off (it divides
by world size by default; mtl_rec.sharding turns it off), so the dense parameters must be summed
too, not averaged as DDP does by default. With this hook on DMP's DDP, two ranks on halves of a batch give
exactly the gradient of one rank on the whole batch, for dense parameters and tables alike.

Example::

    >>> counts = all_reduce_sum(torch.tensor([12.0, 3.0]))   # [T] in-space counts, summed over ranks
    >>> scores = gather_concat(np.array([0.1, 0.7]))          # every rank's rows, rank order
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """dist.barrier() where a process group exists; a no-op in a single process."""
    if is_distributed():
        dist.barrier()


def collective_device() -> torch.device:
    """Where collective buffers must live: the current GPU under NCCL, else the CPU (gloo)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensor: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    if not is_distributed():
        return tensor.detach().clone()
    out = tensor.detach().to(collective_device(), copy=True)
    dist.all_reduce(out, op=op)
    return out.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy, autograd-free); identity on one process."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks (a copy, autograd-free); identity on one process."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def sum_gradients_hook(process_group, bucket):  # no annotations: DDP checks them against real classes
    """DDP communication hook: all-reduce a dist.GradBucket with SUM (DDP's default divides by world)."""
    group = process_group if process_group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def gather_concat(values: np.ndarray) -> np.ndarray:
    """Concatenate a 1-D array of any length from every rank, in rank order, on every rank.

    Lengths differ across ranks (the evaluation split is uneven on purpose: no row is dropped), so
    sizes are gathered first and each rank pads to the maximum.
    """
    if not is_distributed():
        return values
    device = collective_device()
    local = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    size = torch.tensor([local.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=local.dtype, device=device)
    padded[: local.numel()] = local
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)]).cpu().numpy()
