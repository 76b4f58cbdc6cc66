"""Sharded checkpoints with torch.distributed.checkpoint (DCP), published atomically.

    RUN_DIR/checkpoint/            the published checkpoint (never half-written)
      model/                       DCP shards: DMP's state dict and the fused table optimizer's state
                                   (each rank writes its own shards)
      replicated.pt                state identical on every rank, written by rank 0: the dense
                                   optimizer, the data-parallel tables' optimizer, the weighting
      plan.json  config.yaml  features.yaml  feature_stats.json  data_position.json  ...   (`files`;
                                   the worker loop writes the resolved feature spec and statistics
                                   there, so a checkpoint directory describes itself)
      MANIFEST.json                written LAST: its presence means the checkpoint is complete

Every rank writes into RUN_DIR/checkpoint.tmp-<token>/; after a barrier rank 0 writes the manifest,
moves any previous checkpoint aside and renames the new one into place, so a crash mid-save
leaves the previous checkpoint intact (and a crash between the two renames leaves it under
checkpoint.previous, which `published_checkpoint` finds).

World size. DCP reshards on load: a checkpoint saved on 2 ranks loads on 1 (or 4) as long as every
table keeps its sharding TYPE (table-wise tables may move between ranks, column-wise shards may
merge). The fused optimizer's state is keyed by sharding type, so where the plan changed a table's
type (e.g. data_parallel -> table_wise, or the free planner chose differently at another world
size) loading the optimizer state is refused with an error that names the tables; `weights_only`
loads the weights alone.

Example::

    >>> save_checkpoint(sharded, run_dir / "checkpoint", files={"plan.json": plan_to_json(sharded.plan)},
    ...                 replicated={"weighting": weighting.state_dict()})
    >>> state = load_checkpoint(fresh, run_dir / "checkpoint")     # bit-identical weights and optimizers
    >>> weighting.load_state_dict(state.replicated["weighting"])
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from mtl_rec.distributed import barrier, is_distributed, rank

MANIFEST = "MANIFEST.json"
REPLICATED = "replicated.pt"
# Model state that checkpoints written before it existed lack; such a checkpoint loads with the
# model's own value kept: TaskHeads.calibration's identity (mtl_rec.calibration)
OPTIONAL_MODEL_KEYS = ("heads.calibration",)


class CheckpointMismatch(RuntimeError):
    """The checkpoint cannot be loaded into this model as asked (and why)."""


@dataclass
class LoadedCheckpoint:
    manifest: dict
    replicated: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _broadcast_token() -> str:
    token = [f"{time.time_ns():x}"]
    if is_distributed():
        dist.broadcast_object_list(token, src=0)
    return token[0]


def _parts(target) -> tuple[nn.Module, Any]:
    """A ShardedModel or a bare DMP model -> (model, the ShardedModel or None)."""
    return (target.model, target) if hasattr(target, "dense_optimizer") else (target, None)


def _fused_state(model: nn.Module) -> dict | None:
    optimizer = getattr(model, "fused_optimizer", None)
    if optimizer is None:
        return None
    state = optimizer.state_dict()
    return state if state.get("state") and any(state["state"].values()) else None  # SGD has no state


def save_checkpoint(
    target,
    path: str | Path,
    files: dict[str, str] | None = None,
    manifest: dict | None = None,
    replicated: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank calls it. Returns the published path.

    target:     a ShardedModel (weights, fused table optimizer, dense + data-parallel table optimizers)
                or a bare DMP model (weights and fused optimizer only)
    files:      {name: text} written beside the shards by rank 0
    replicated: {name: picklable state identical on every rank} (e.g. the weighting's state_dict)
    """
    model, sharded = _parts(target)
    path = Path(path)
    token = _broadcast_token()  # one per save: the manifest's id tells two saves at one path apart
    staging = path.parent / f"{path.name}.tmp-{token}"
    state: dict[str, Any] = {"model": model.state_dict()}
    fused = _fused_state(model)
    if fused is not None:
        state["fused_optimizer"] = fused
    dcp.save(state, checkpoint_id=str(staging / "model"))
    barrier()
    if rank() == 0:
        objects = dict(replicated or {})
        if sharded is not None:
            objects["dense_optimizer"] = sharded.dense_optimizer.state_dict()
            if sharded.table_optimizer is not None:
                objects["table_optimizer"] = sharded.table_optimizer.state_dict()
        torch.save(objects, staging / REPLICATED)
        for name, text in (files or {}).items():
            (staging / name).write_text(text)
        (staging / MANIFEST).write_text(
            json.dumps(
                {"complete": True, "fused_optimizer": fused is not None, "id": token, **(manifest or {})},
                indent=2,
            )
        )
        previous = path.parent / f"{path.name}.previous"
        if path.exists():
            shutil.rmtree(previous, ignore_errors=True)
            path.rename(previous)
        staging.rename(path)
        shutil.rmtree(previous, ignore_errors=True)
    barrier()
    return path


def published_checkpoint(path: str | Path) -> Path | None:
    """The complete checkpoint at `path`, or the one a crash between publish's two renames left at
    `path`.previous; None where there is none. Half-written staging directories are never returned."""
    path = Path(path)
    for candidate in (path, path.parent / f"{path.name}.previous"):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def check_plan(path: Path, current_plan_json: str | None) -> list[str]:
    """Tables whose sharding type differs between the checkpoint's plan.json and the current plan."""
    from mtl_rec.sharding import plan_types

    saved = path / "plan.json"
    if current_plan_json is None or not saved.is_file():
        return []
    before, now = plan_types(saved.read_text()), plan_types(current_plan_json)
    return [
        f"{table}: {before.get(table, 'absent')} -> {now.get(table, 'absent')}"
        for table in sorted(set(before) | set(now))
        if before.get(table) != now.get(table)
    ]


def saved_model_state(state: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The model state dict less the OPTIONAL_MODEL_KEYS that the DCP checkpoint in `model_dir`
    does not hold (written before they existed); every other key stays, so DCP still refuses a
    checkpoint that lacks a table or a layer."""
    saved = dcp.FileSystemReader(str(model_dir)).read_metadata().state_dict_metadata
    return {
        key: value
        for key, value in state.items()
        if f"model.{key}" in saved or not key.endswith(OPTIONAL_MODEL_KEYS)
    }


def load_model_state(model: nn.Module, state: dict[str, Any]) -> None:
    """model.load_state_dict(state), strict, the keys saved_model_state left out keeping their value."""
    model.load_state_dict({**model.state_dict(), **state})


def load_checkpoint(
    target, path: str | Path, weights_only: bool = False, current_plan_json: str | None = None
) -> LoadedCheckpoint:
    """Collective: load a published checkpoint into `target` (ShardedModel or bare DMP model).

    weights_only:      load the model's weights only (warm start); otherwise the optimizers too
    current_plan_json: mtl_rec.sharding.plan_to_json of the target's plan; with it, a change of any
                       table's sharding type is a CheckpointMismatch when optimizer state is loaded
    Returns the manifest and the replicated objects (the caller restores e.g. the weighting's state).
    FileNotFoundError where the path holds no complete checkpoint.
    """
    model, sharded = _parts(target)
    path = Path(path)
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(f"{path}: no {MANIFEST}; not a complete checkpoint")
    manifest = json.loads((path / MANIFEST).read_text())
    changed = check_plan(path, current_plan_json)
    if changed and not weights_only:
        raise CheckpointMismatch(
            f"{path}: saved on {manifest.get('world_size', '?')} ranks with another sharding plan; tables "
            f"whose sharding type changed: {', '.join(changed)}. Their optimizer state cannot be loaded "
            "into the new layout: keep the sharding types (config sharding.tables) or load weights only."
        )
    state: dict[str, Any] = {"model": saved_model_state(model.state_dict(), path / "model")}
    fused = None if weights_only or not manifest.get("fused_optimizer") else _fused_state(model)
    if fused is not None:
        state["fused_optimizer"] = fused
    try:
        dcp.load(state, checkpoint_id=str(path / "model"))
    # DCP's own message lists keys, not the cause; under a process group it raises CheckpointException,
    # a BaseException that `except Exception` would let through as a bare crash
    except (Exception, CheckpointException) as error:
        detail = f" (sharding type changed: {', '.join(changed)})" if changed else ""
        raise CheckpointMismatch(f"{path}: cannot be loaded into this model{detail}: {error}") from error
    load_model_state(model, state["model"])
    if fused is not None:
        model.fused_optimizer.load_state_dict(state["fused_optimizer"])
    replicated: dict[str, Any] = {}
    if (path / REPLICATED).is_file():
        replicated = torch.load(path / REPLICATED, map_location="cpu", weights_only=False)
    if sharded is not None and not weights_only:
        for name in ("dense_optimizer", "table_optimizer"):
            optimizer = getattr(sharded, name)
            if optimizer is not None and name in replicated:
                _load_optimizer_state(optimizer, replicated[name])
    return LoadedCheckpoint(manifest, replicated, path)


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Moments and steps from the checkpoint; the kernel choice (`fused`, `foreach`) stays this build's.
    load_state_dict takes it from the saved groups, so a checkpoint written before the fused kernels
    would turn them off for every later run warm-started from it; and it places each `step` by the
    saved groups' flags (a fused kernel wants it on the parameter's device, float32), so the current
    flags go into the saved groups before loading, not after."""
    kernels = [{key: group.get(key) for key in ("fused", "foreach")} for group in optimizer.param_groups]
    saved_groups = state["param_groups"]  # a count that differs is load_state_dict's error to raise
    groups = [{**saved, **kernels[i]} if i < len(kernels) else saved for i, saved in enumerate(saved_groups)]
    optimizer.load_state_dict({**state, "param_groups": groups})
