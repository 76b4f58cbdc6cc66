"""Checkpoints beyond the round trip (tests/mtl_rec/test_sharding.py has that):

1. A process killed (SIGKILL) in the middle of a save leaves the previous checkpoint published,
   complete and loadable, with exactly the weights it was saved with.
2. A checkpoint saved on 2 ranks loads on 1 rank (DCP reshards; every table keeps its sharding
   type): the same predictions, the same fused-optimizer state, the same dense-optimizer state.
3. Where the plan changes a table's sharding type, loading the optimizer state is refused with an
   error naming the table; the weights alone still load.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from mtl_rec.config import from_dict
from mtl_rec.config.run import RunConfig
from mtl_rec.losses import task_losses, weighted_sum
from tests.harness import assert_float32_close, run_on_ranks, start_ranks
from tests.mtl_rec.test_sharding import (
    CONFIG,
    ROWS,
    TWO_RANKS,
    make_batch,
    make_spec,
    sharded_model,
    task_weights,
)

pytestmark = pytest.mark.distributed

# Predictions made on 2 ranks over half batches (14 and 10 rows) against 1 rank over all 24: oneDNN / MKL
# choose kernels by shape and instruction set, so the float32 sums run in another order and the last
# bits differ on some CPUs (AVX-512 Intel; here too under MKL_CBWR=COMPATIBLE or ATEN_CPU_CAPABILITY=
# default: ~1 ulp). About 5 layers (dot products of up to 528 terms, log-sigmoid, log sums) of a few
# ulps each: 64 ulps (~1e-5 at |log p| < 1), still ~1000x below a weight that failed to load (>1e-2).
PREDICTION_ULPS = 64


def adagrad_config(**sharding: list[str]) -> RunConfig:
    """The sharding tests' config with rowwise Adagrad (it keeps per-row state) and optional
    per-table sharding overrides."""
    config = copy.deepcopy(CONFIG)
    config["optim"]["sparse"] = {"name": "rowwise_adagrad", "lr": 0.1}
    config["sharding"]["tables"].update(sharding)
    return from_dict(RunConfig, config)


def _train(sharded, cfg, start: int, end: int, steps: int, seed: int = 10) -> None:
    spec = make_spec()
    for step in range(steps):
        batch = make_batch(spec, start, end, seed=seed + step)
        sharded.zero_grad()
        weighted_sum(task_losses(sharded.model(batch), batch, cfg.tasks).losses, task_weights(cfg)).backward()
        sharded.step()


def _predict(sharded, start: int, end: int) -> torch.Tensor:
    batch = make_batch(make_spec(), start, end, seed=1)
    with torch.no_grad():  # not inference_mode: gloo collectives fail inside it
        out = sharded.model(batch)
    return torch.stack([out.log_p[t] for t in out.tasks])  # [T, B]


def _fused_state(sharded) -> dict[str, torch.Tensor]:
    """{table state key: full tensor} of the fused optimizer, assembled from this rank's shards."""
    state = {}
    for param_key, entries in sharded.model.fused_optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            shards = value.local_shards() if hasattr(value, "local_shards") else []
            state[f"{param_key}/{name}"] = [
                (list(s.metadata.shard_offsets), s.tensor.clone()) for s in shards
            ]
    return state


# ---------------------------------------------------------------- 1. killed mid-save


def _saver(rank: int, root: Path) -> None:
    """Train and save forever (until killed); before each save, record what that save holds."""
    from mtl_rec.checkpoint import save_checkpoint

    cfg = adagrad_config()
    sharded = sharded_model(make_spec(), cfg, seed=0)
    for step in range(1, 10_000):
        _train(sharded, cfg, 0, ROWS, 1, seed=step)
        torch.save(_predict(sharded, 0, ROWS), root / f"expected-{step}.pt")
        save_checkpoint(sharded, root / "checkpoint", manifest={"step": step})


def _check_published(rank: int, root: Path, result: list) -> None:
    from mtl_rec.checkpoint import load_checkpoint, published_checkpoint

    found = published_checkpoint(root / "checkpoint")
    assert found is not None, "no complete checkpoint left after the kill"
    fresh = sharded_model(make_spec(), adagrad_config(), seed=99)
    step = load_checkpoint(fresh, found).manifest["step"]
    expected = torch.load(root / f"expected-{step}.pt")
    # exact: the same world size (1), rows, plan, thread count (1) and CPU: the same kernels, same order
    assert torch.equal(_predict(fresh, 0, ROWS), expected), f"checkpoint of step {step} has other weights"
    (root / "checked.json").write_text(json.dumps({"step": step, "path": found.name}))


def test_killed_mid_save_leaves_the_previous_checkpoint_usable(tmp_path):
    for attempt in range(5):  # the kill must land inside a save (a staging directory exists)
        root = tmp_path / f"attempt{attempt}"
        root.mkdir()
        context = start_ranks(_saver, root, world_size=1)
        process = context.processes[0]
        deadline = time.monotonic() + 60
        while not (root / "checkpoint" / "MANIFEST.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.is_alive(), "the saver died before its first checkpoint"
        while time.monotonic() < deadline:
            staging = [p for p in root.iterdir() if ".tmp-" in p.name and (p / "model").exists()]
            if staging:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        process.join()
        if staging and [p for p in root.iterdir() if ".tmp-" in p.name]:
            break  # killed while a save was half-written
    else:
        pytest.fail("could not kill the saver in the middle of a save in 5 attempts")
    run_on_ranks(_check_published, root, [], world_size=1, timeout_s=60)
    checked = json.loads((root / "checked.json").read_text())
    assert checked["step"] >= 1


# ---------------------------------------------------------------- 2. and 3. another world size


def _save_on_two(rank: int, root: Path) -> None:
    from mtl_rec.checkpoint import save_checkpoint
    from mtl_rec.distributed import gather_concat
    from mtl_rec.sharding import plan_to_json

    cfg = adagrad_config()
    sharded = sharded_model(make_spec(), cfg, seed=0)
    start, end = TWO_RANKS[rank]
    _train(sharded, cfg, start, end, steps=3)
    predictions = _predict(sharded, start, end)  # [T, b] this rank's rows
    full = [gather_concat(row.numpy()) for row in predictions]  # T x [B], rank order = row order
    save_checkpoint(
        sharded,
        root / "checkpoint",
        files={"plan.json": plan_to_json(sharded.plan)},
        manifest={"world_size": 2},
    )
    if rank == 0:
        torch.save(torch.stack([torch.from_numpy(r) for r in full]), root / "predictions.pt")
        torch.save(sharded.dense_optimizer.state_dict(), root / "dense_optimizer.pt")
    torch.save(_fused_state(sharded), root / f"fused-rank{rank}.pt")
    dist.barrier()


def _load_on_one(rank: int, root: Path) -> None:
    from mtl_rec.checkpoint import CheckpointMismatch, load_checkpoint
    from mtl_rec.sharding import plan_to_json

    fresh = sharded_model(make_spec(), adagrad_config(), seed=7)
    load_checkpoint(fresh, root / "checkpoint", current_plan_json=plan_to_json(fresh.plan))
    predictions = torch.load(root / "predictions.pt")  # [T, B] from 2 ranks over half batches
    assert_float32_close(_predict(fresh, 0, ROWS), predictions, ulps=PREDICTION_ULPS)
    # The optimizer states below are stored tensors loaded back (resharded, never recomputed): exact.
    saved = {}
    for r in (0, 1):
        for key, shards in torch.load(root / f"fused-rank{r}.pt").items():
            saved.setdefault(key, []).extend(shards)
    for key, shards in _fused_state(fresh).items():  # 1 rank holds every shard of every table
        for offsets, tensor in shards:
            matches = [t for o, t in saved[key] if o == offsets and t.shape == tensor.shape]
            if matches:  # the same shard layout: equal state
                assert torch.equal(tensor, matches[0]), key
            else:  # column shards merged on one rank: compare against the saved pieces
                pieces = sorted(saved[key], key=lambda item: item[0])
                assert torch.equal(
                    tensor, torch.cat([t for _, t in pieces], dim=-1 if tensor.dim() > 1 else 0)
                ), key
    expected = torch.load(root / "dense_optimizer.pt")
    for index, state in fresh.dense_optimizer.state_dict()["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(expected["state"][index][name])), name

    changed = sharded_model(make_spec(), adagrad_config(dev=["table_wise"]), seed=7)
    with pytest.raises(CheckpointMismatch, match=r"dev: data_parallel -> table_wise"):
        load_checkpoint(changed, root / "checkpoint", current_plan_json=plan_to_json(changed.plan))
    load_checkpoint(
        changed, root / "checkpoint", weights_only=True, current_plan_json=plan_to_json(changed.plan)
    )
    assert_float32_close(_predict(changed, 0, ROWS), predictions, ulps=PREDICTION_ULPS)

    # Another network (wider experts): under a process group DCP raises its CheckpointException, a
    # BaseException, not an Exception; it must still surface as the clear CheckpointMismatch.
    wider = copy.deepcopy(CONFIG)
    wider["optim"]["sparse"] = {"name": "rowwise_adagrad", "lr": 0.1}
    wider["model"]["params"]["expert"]["hidden"] = [16]
    other = sharded_model(make_spec(), from_dict(RunConfig, wider), seed=7)
    with pytest.raises(CheckpointMismatch, match=r"cannot be loaded into this model"):
        load_checkpoint(other, root / "checkpoint", current_plan_json=plan_to_json(other.plan))


def test_checkpoint_from_two_ranks_loads_on_one_and_a_changed_plan_is_refused(tmp_path):
    run_on_ranks(_save_on_two, tmp_path, world_size=2, timeout_s=90)
    run_on_ranks(_load_on_one, tmp_path, world_size=1, timeout_s=90)


# ---------------------------------------------------------------- optimizers' kernels across checkpoints


def _loop_then_fused(rank: int, root: Path) -> None:
    """A checkpoint whose dense Adam ran torch's per-tensor loop (as every run did before the fused
    kernels) loads into a fused Adam: same moments and steps, and the kernel stays fused."""
    from mtl_rec.checkpoint import load_checkpoint, save_checkpoint

    cfg = from_dict(RunConfig, CONFIG)
    old = sharded_model(make_spec(), cfg, seed=0)
    assert all(group["fused"] for group in old.dense_optimizer.param_groups), "the build is not fused"
    params = [p for group in old.dense_optimizer.param_groups for p in group["params"]]
    old.dense_optimizer = torch.optim.Adam(params, lr=0.01)  # fused=None: the loop
    _train(old, cfg, 0, ROWS, 3)
    save_checkpoint(old, root / "checkpoint", manifest={"step": 3})

    fresh = sharded_model(make_spec(), cfg, seed=99)
    load_checkpoint(fresh, root / "checkpoint")
    assert all(group["fused"] for group in fresh.dense_optimizer.param_groups)
    saved, loaded = old.dense_optimizer.state_dict(), fresh.dense_optimizer.state_dict()
    assert saved["state"].keys() == loaded["state"].keys() and len(saved["state"]) == len(params)
    for key, state in saved["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[name], loaded["state"][key][name]), f"{key}/{name} not loaded"
    # one more step each: the fused kernel continues the loop's run to float rounding (not bit for bit)
    _train(old, cfg, 0, ROWS, 1, seed=50)
    _train(fresh, cfg, 0, ROWS, 1, seed=50)
    resumed = [p for group in fresh.dense_optimizer.param_groups for p in group["params"]]
    for a, b in zip(params, resumed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_checkpoint_of_the_loop_optimizer_loads_into_the_fused_one(tmp_path):
    run_on_ranks(_loop_then_fused, tmp_path, world_size=1, timeout_s=90)
