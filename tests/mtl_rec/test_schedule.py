"""Learning-rate schedules: the multiplier's shape, and that both the dense optimizer and FBGEMM's
fused table optimizer really take the scheduled rate (a table row's SGD update scales with it)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mtl_rec.config import from_dict
from mtl_rec.config.run import RunConfig
from mtl_rec.losses import task_losses, weighted_sum
from mtl_rec.schedule import LRSchedule, ScheduledLR
from tests.harness import assert_float32_close, run_on_ranks
from tests.mtl_rec.test_sharding import (
    CONFIG,
    local_tables,
    make_batch,
    make_spec,
    sharded_model,
    task_weights,
)


def test_warmup_then_cosine_and_linear_decay_over_the_share_of_rows_done():
    cosine = LRSchedule(warmup_fraction=0.1, decay="cosine", min_ratio=0.1)
    assert [cosine.multiplier(p) for p in (0.01, 0.05, 0.1)] == pytest.approx([0.1, 0.5, 1.0])
    assert cosine.multiplier(0.55) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert cosine.multiplier(1.0) == pytest.approx(0.1)  # the end: min_ratio
    assert cosine.multiplier(1.7) == pytest.approx(0.1)  # more rows than planned: stays there
    linear = LRSchedule(decay="linear")
    assert [linear.multiplier(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.5, 0.0])
    assert LRSchedule().multiplier(0.3) == 1.0  # constant


def _step_deltas(rank: int, out: Path) -> None:
    """One SGD step at multiplier 1 and one at 0.25 from the same weights: table rows and dense weights."""
    cfg = from_dict(RunConfig, copy.deepcopy(CONFIG))
    spec, batch = make_spec(), make_batch(make_spec())
    deltas = []
    for multiplier in (1.0, 0.25):
        sharded = sharded_model(spec, cfg, seed=0)
        for group in sharded.dense_optimizer.param_groups:  # plain SGD-like check for the dense side
            group["lr"] = 0.01
        schedule = LRSchedule(warmup_fraction=1.0)  # the multiplier is the share of rows done
        lr = ScheduledLR(schedule, [sharded.dense_optimizer], fused=sharded.model.fused_optimizer)
        applied = lr.apply(multiplier)
        assert applied == multiplier
        assert sharded.dense_optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * multiplier)
        before = local_tables(sharded.model)
        sharded.zero_grad()
        weighted_sum(task_losses(sharded.model(batch), batch, cfg.tasks).losses, task_weights(cfg)).backward()
        sharded.step()
        after = local_tables(sharded.model)
        key = next(k for k in before if "user" in k)  # a table_wise (fused) table
        deltas.append(after[key][0][2] - before[key][0][2])
    torch.save(deltas, out / "deltas.pt")


@pytest.mark.distributed
def test_the_fused_table_optimizer_takes_the_scheduled_rate(tmp_path):
    run_on_ranks(_step_deltas, tmp_path, world_size=1)
    full, quarter = torch.load(tmp_path / "deltas.pt")
    assert full.abs().max() > 1e-5  # rows moved (lr 0.5 x gradients of ~1e-4)
    # SGD: the same gradient at a quarter of the rate moves every touched row a quarter as far
    # (same weights, batch, shapes and kernels: the same gradient). A delta is (w + d) - w with
    # |w| < 1, so it carries up to an ulp of 1.0: scale 1.0. A rate not applied is off by 0.75 x d.
    assert_float32_close(quarter, 0.25 * full, ulps=4, scale=1.0)
    assert (quarter - full).abs().max() > 100 * 4 * 1.2e-7  # the check above can tell the two apart
