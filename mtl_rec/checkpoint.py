"""Sharded checkpoints with torch.distributed.checkpoint (DCP), published atomically.

    RUN_DIR/checkpoint/            the published checkpoint (never half-written)
      model/                       DCP shards of DMP's state dict (each rank writes its own shards)
      plan.json  config.yaml  feature_stats.json
      MANIFEST.json                written LAST: its presence means the checkpoint is complete

Every rank writes into RUN_DIR/checkpoint.tmp-<token>/; after a barrier rank 0 writes the manifest,
moves any previous checkpoint aside and renames the new one into place, so a crash mid-save
leaves the previous checkpoint intact.

Example::

    >>> save_checkpoint(sharded.model, run_dir / "checkpoint", files={"plan.json": plan_to_json(plan)})
    >>> load_checkpoint(fresh.model, run_dir / "checkpoint")    # same plan: bit-identical weights
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from mtl_rec.distributed import is_distributed, rank

MANIFEST = "MANIFEST.json"


def _barrier() -> None:
    if is_distributed():
        dist.barrier()


def _broadcast_token() -> str:
    token = [f"{time.time_ns():x}"]
    if is_distributed():
        dist.broadcast_object_list(token, src=0)
    return token[0]


def save_checkpoint(
    model: nn.Module, path: str | Path, files: dict[str, str] | None = None, manifest: dict | None = None
) -> Path:
    """Collective: every rank calls it. Returns the published path."""
    path = Path(path)
    staging = path.parent / f"{path.name}.tmp-{_broadcast_token()}"
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(staging / "model"))
    _barrier()
    if rank() == 0:
        for name, text in (files or {}).items():
            (staging / name).write_text(text)
        (staging / MANIFEST).write_text(json.dumps({"complete": True, **(manifest or {})}, indent=2))
        previous = path.parent / f"{path.name}.previous"
        if path.exists():
            shutil.rmtree(previous, ignore_errors=True)
            path.rename(previous)
        staging.rename(path)
        shutil.rmtree(previous, ignore_errors=True)
    _barrier()
    return path


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Collective: load a published checkpoint into `model`, sharded as when saved. Returns the manifest."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(f"{path}: no {MANIFEST}; not a complete checkpoint")
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(path / "model"))
    model.load_state_dict(state["model"])
    return json.loads((path / MANIFEST).read_text())
