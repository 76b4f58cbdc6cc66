"""Run a test function on N real gloo ranks (local processes) that never hangs the test session.

Example::

    >>> def worker(rank, out_dir): ...          # module level, so the ranks can import it
    >>> run_on_two_ranks(worker, tmp_path)      # re-raises a rank's failure; TimeoutError past timeout_s
    >>> run_on_ranks(worker, tmp_path, world_size=1)
    >>> assert_float32_close(two_ranks, one_rank, ulps=64)  # float32 math done in another order
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist

FLOAT32_EPS = torch.finfo(torch.float32).eps  # 2**-23 ~ 1.19e-7: one float32 ulp at 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _init_and_run(rank: int, port: int, world_size: int, worker: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=30),
    )
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(worker: Callable, *args, world_size: int = 2, timeout_s: float = 60.0) -> None:
    """Run worker(rank, *args) on `world_size` gloo ranks; re-raise a rank's failure; never hang.

    forkserver, not spawn: the server imports torch, torchrec and the test modules once (preload) and
    forks each rank from that clean, not-yet-threaded process; two spawned ranks would import them in
    parallel on a 2-core CI box, 3x slower. Fork from pytest itself is unsafe (OpenMP, Ray threads).
    """
    for attempt in range(3):
        try:
            return _run_once(worker, args, world_size, timeout_s)
        except torch.multiprocessing.ProcessRaisedException as failure:
            # The free port was taken between choosing and binding it (a Ray cluster starting beside
            # the test): the ranks failed in init_process_group, before the worker ran. Another port.
            if "EADDRINUSE" not in str(failure) or attempt == 2:
                raise


def _run_once(worker: Callable, args: tuple, world_size: int, timeout_s: float) -> None:
    context = start_ranks(worker, *args, world_size=world_size)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):  # raises ProcessRaisedException if a rank failed
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world_size}-rank test still running after {timeout_s} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join()


def start_ranks(worker: Callable, *args, world_size: int = 2):
    """Start worker(rank, *args) on `world_size` gloo ranks and return at once: a ProcessContext whose
    `.processes` can be watched, joined or killed (see run_on_ranks)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(sorted({__name__, worker.__module__}))
    return torch.multiprocessing.start_processes(
        _init_and_run,
        args=(_free_port(), world_size, worker, args),
        nprocs=world_size,
        join=False,
        start_method="forkserver",
    )


def run_on_two_ranks(worker: Callable, *args, timeout_s: float = 60.0) -> None:
    """run_on_ranks with world_size 2."""
    run_on_ranks(worker, *args, world_size=2, timeout_s=timeout_s)


def assert_float32_close(actual, expected, ulps: float, scale: float | None = None, msg=None) -> None:
    """Assert float32 results of the same math, summed in another order, agree to `ulps` float32 ulps:
    |actual - expected| <= ulps * eps * (|expected| + scale), eps = FLOAT32_EPS.

    For comparisons across batch shapes, world sizes, thread counts or CPUs (DESIGN.md pitfall 11):
    oneDNN / MKL pick kernels by shape and instruction set, so sums are reordered and the last bits
    differ. A reordering error scales with the terms summed, not with each result, so the absolute
    part uses `scale` (default max |expected|): an entry that nearly cancels gets the slack of the
    largest. Choose `ulps` from the depth of the computation (a few per layer) so that it stays far
    below any real bug (a factor of 2, a missed row or a wrong weight: ~1e-2 and more).
    Where the arithmetic is really the same (a stored tensor loaded back), keep torch.equal.
    """
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    tolerance = ulps * FLOAT32_EPS
    torch.testing.assert_close(actual, expected, rtol=tolerance, atol=tolerance * scale, msg=msg)
