"""The real sharded stack (MultiTaskModel + shard_model + task_losses) on gloo ranks.

1. 2 uneven ranks == 1 rank on the concatenated batch: every dense gradient, every dense parameter after
   the Adam step, every table (table_wise, column_wise split across ranks, data_parallel) after an SGD
   step. The batch puts every click on rank 0, so rank 1 holds no row of the `click == 1` space.
2. The fused optimizer updates each touched row exactly once: delta == -lr * (plain-autograd gradient
   of an unsharded copy of the model on the same batch and weights); untouched rows do not move.
3. Checkpoints: save after a step, load into a fresh model sharded from another seed, identical
   predictions; MANIFEST.json published, no staging directory left; no manifest -> FileNotFoundError.

Both runs start from the same weights: an unsharded MultiTaskModel (seed 0) is the source of every
initial weight, copied into each rank's local shards (see `load_full_state`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor
from torchrec import KeyedJaggedTensor

from mtl_rec.batch import Batch
from mtl_rec.config import FeatureSpec, from_dict
from mtl_rec.config.run import RunConfig
from mtl_rec.losses import task_losses, weighted_sum
from mtl_rec.models.model import MultiTaskModel
from tests.harness import run_on_ranks

# ---------------------------------------------------------------- a small spec and the mmoe preset's tasks

SPEC = {
    "labels": ["click", "cart", "conversion"],
    "funnel": ["click", "cart", "conversion"],
    "tables": {
        "user": {"num_embeddings": 40, "dim": 4},
        "item": {"num_embeddings": 30, "dim": 4},
        "cat": {"num_embeddings": 20, "dim": 256},  # 2 column shards of 128 (TorchRec's minimum width)
        "dev": {"num_embeddings": 3, "dim": 4, "id_map": "identity"},
    },
    "sparse": [
        {"name": "user_id", "table": "user"},
        {"name": "item_id", "table": "item"},
        {"name": "category", "table": "cat"},
        {"name": "device", "table": "dev"},
        {"name": "recent_categories", "table": "cat", "multi_hot": True, "pooling": "mean"},
    ],
    "dense": [{"name": "price", "transform": "log1p"}, {"name": "ctr"}],
}
SPARSE_LR = 0.5
CONFIG = {
    "model": {
        "arch": "mmoe",
        "params": {"num_experts": 2, "expert": {"hidden": [8]}},
        "dense_arch": {"hidden": [4]},
    },
    "tasks": [  # the mmoe preset's tasks, smaller towers
        {"name": "ctr", "label": "click", "space": "all", "tower": {"hidden": [4]}},
        {"name": "cvr", "label": "conversion", "space": "click == 1", "tower": {"hidden": [4]}},
        {"name": "cart", "label": "cart", "space": "click == 1", "tower": {"hidden": [4]}, "weight": 0.5},
    ],
    "optim": {"sparse": {"name": "sgd", "lr": SPARSE_LR}, "dense": {"name": "adam", "lr": 0.01}},
    "sharding": {
        "tables": {
            "user": ["table_wise"],
            "item": ["table_wise"],
            "cat": ["column_wise"],
            "dev": ["data_parallel"],
        }
    },
}
EXPECTED_SHARDING = {"user": "table_wise", "item": "table_wise", "cat": "column_wise", "dev": "data_parallel"}

ROWS = 24
CLICK_ROWS = 14  # clicks only in rows [0, 14): rank 0's slice; rank 1 holds no `click == 1` row
TWO_RANKS = ((0, CLICK_ROWS), (CLICK_ROWS, ROWS))  # uneven: 14 and 10 rows
ONE_RANK = ((0, ROWS),)
TIMEOUT_S = 45.0


def make_spec() -> FeatureSpec:
    return from_dict(FeatureSpec, SPEC)


def make_config(model: dict | None = None) -> RunConfig:
    """CONFIG, with another `model` section where given (tests of other backbones)."""
    return from_dict(RunConfig, CONFIG if model is None else {**CONFIG, "model": model})


def make_batch(spec: FeatureSpec, start: int = 0, end: int = ROWS, seed: int = 0) -> Batch:
    """Rows [start, end) of one fixed ROWS-row batch: valid ids, multi-hot lists of 0-3 ids, dense
    features, funnel labels (cart and conversion only on clicked rows) with clicks only before CLICK_ROWS."""
    g = torch.Generator().manual_seed(seed)
    lengths, values = [], []
    for feature in spec.sparse:
        rows = spec.tables[feature.table].num_embeddings
        if feature.multi_hot:
            key_lengths = torch.randint(0, 4, (ROWS,), generator=g)  # [B]
        else:
            key_lengths = torch.ones(ROWS, dtype=torch.int64)  # [B]
        key_values = torch.randint(0, rows, (int(key_lengths.sum()),), generator=g)  # [sum lengths]
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), key_lengths.cumsum(0)])  # [B + 1]
        lengths.append(key_lengths[start:end])
        values.append(key_values[offsets[start] : offsets[end]])
    click = ((torch.rand(ROWS, generator=g) < 0.6) & (torch.arange(ROWS) < CLICK_ROWS)).float()  # [B]
    cart = click * (torch.rand(ROWS, generator=g) < 0.5).float()  # [B]
    conversion = click * (torch.rand(ROWS, generator=g) < 0.5).float()  # [B]
    dense = torch.randn(ROWS, spec.num_dense, generator=g)  # [B, D]
    labels = {"click": click, "cart": cart, "conversion": conversion}
    return Batch(
        sparse=KeyedJaggedTensor.from_lengths_sync(
            keys=list(spec.sparse_names), values=torch.cat(values), lengths=torch.cat(lengths)
        ),
        dense=dense[start:end],
        labels={name: label[start:end] for name, label in labels.items()},
        masks={"all": torch.ones(end - start, dtype=torch.bool), "click == 1": click[start:end].bool()},
        ids=torch.arange(start, end),
    )


def reference_model(spec: FeatureSpec, cfg: RunConfig) -> MultiTaskModel:
    """The unsharded model (tables on CPU): the source of every initial weight, and plain autograd."""
    torch.manual_seed(0)
    return MultiTaskModel(spec, cfg.model, cfg.tasks, device="cpu")


def task_weights(cfg: RunConfig) -> dict[str, float]:
    return {task.name: task.weight for task in cfg.tasks}


def sharded_model(spec: FeatureSpec, cfg: RunConfig, seed: int):
    from mtl_rec.sharding import shard_model

    torch.manual_seed(seed)
    return shard_model(MultiTaskModel(spec, cfg.model, cfg.tasks), cfg, torch.device("cpu"))


def _is_sharded(value) -> bool:
    return hasattr(value, "local_shards")  # ShardedTensor


def load_full_state(dmp, state: dict[str, Tensor]) -> None:
    """Copy an unsharded state dict into a DMP model: each rank writes its local shards' slices."""
    target = dmp.state_dict()
    assert set(target) == set(state), sorted(set(target) ^ set(state))
    with torch.no_grad():
        for key, value in target.items():
            if _is_sharded(value):
                for shard in value.local_shards():
                    (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(state[key][row : row + rows, col : col + cols])
            else:
                value.copy_(state[key])


def local_tables(dmp) -> dict[str, list[tuple[list[int], list[int], Tensor]]]:
    """{table key: [(offsets, sizes, local values)]}: a rank's shards, or the whole replicated table."""
    tables = {}
    for key, value in dmp.state_dict().items():
        if not key.startswith("sparse_arch."):
            continue
        if _is_sharded(value):
            tables[key] = [
                (list(s.metadata.shard_offsets), list(s.metadata.shard_sizes), s.tensor.detach().clone())
                for s in value.local_shards()
            ]
        else:
            tables[key] = [([0, 0], list(value.shape), value.detach().clone())]
    return tables


def assemble(per_rank: list[dict], key: str, shape: torch.Size) -> Tensor:
    """One full table from every rank's shards; replicated copies must agree; every element covered."""
    full, seen = torch.full(shape, float("nan")), torch.zeros(shape, dtype=torch.bool)
    for tables in per_rank:
        for (row, col), (rows, cols), values in tables[key]:
            region = (slice(row, row + rows), slice(col, col + cols))
            if seen[region].any():  # exact: every rank applies the same all-reduced gradient to the same rows
                torch.testing.assert_close(values, full[region], rtol=0, atol=0, msg=f"{key}: replicas")
            full[region], seen[region] = values, True
    assert seen.all(), f"{key}: shards do not cover the table"
    return full


# ---------------------------------------------------------------- one training step, on 1 or 2 ranks


def _train_step_worker(rank: int, out_dir: Path, slices: tuple[tuple[int, int], ...], model=None) -> None:
    """One step of the real stack on rows slices[rank]; everything to compare goes to rank{rank}.pt."""
    from mtl_rec.sharding import plan_summary

    spec, cfg = make_spec(), make_config(model)
    sharded = sharded_model(spec, cfg, seed=0)
    load_full_state(sharded.model, reference_model(spec, cfg).state_dict())
    tables_before = local_tables(sharded.model)
    batch = make_batch(spec, *slices[rank])

    sharded.zero_grad()
    outputs = sharded.model(batch)
    result = task_losses(outputs, batch, cfg.tasks)
    weighted_sum(result.losses, task_weights(cfg)).backward()
    grads = {  # dense parameters and data-parallel tables; fused tables hold no .grad
        name: p.grad.detach().clone() for name, p in sharded.module.named_parameters() if p.grad is not None
    }
    sharded.step()

    module = sharded.module
    dense_names = [name for name, _ in module.named_parameters() if not name.startswith("sparse_arch.")]
    assert len(dense_names) == len(module.dense_parameters())
    torch.save(
        {
            "sharding": {t: s["sharding_type"] for t, s in plan_summary(sharded.plan).items()},
            "log_p": {task: v.detach().clone() for task, v in outputs.log_p.items()},
            "counts": result.counts,
            "dense_names": dense_names,
            "grads": grads,
            "dense_after": {
                name: p.detach().clone() for name, p in module.named_parameters() if name in dense_names
            },
            "tables_before": tables_before,
            "tables_after": local_tables(sharded.model),
        },
        out_dir / f"rank{rank}.pt",
    )


def run_step(out_dir: Path, slices: tuple[tuple[int, int], ...], model: dict | None = None) -> list[dict]:
    """One training step on len(slices) gloo ranks (CONFIG, or CONFIG with `model`): per rank, the
    log_p, counts, gradients, dense parameters and tables before and after."""
    out_dir.mkdir(parents=True)
    run_on_ranks(_train_step_worker, out_dir, slices, model, world_size=len(slices), timeout_s=TIMEOUT_S)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(len(slices))]


@pytest.fixture(scope="module")
def one_step(tmp_path_factory):
    """(1-rank results on the whole batch, 2-rank results on uneven halves), each a list per rank."""
    root = tmp_path_factory.mktemp("sharding")
    return run_step(root / "one", ONE_RANK), run_step(root / "two", TWO_RANKS)


def _tables(per_rank: list[dict], which: str, reference: MultiTaskModel) -> dict[str, Tensor]:
    shapes = {k: v.shape for k, v in reference.state_dict().items() if k.startswith("sparse_arch.")}
    return {key: assemble([r[which] for r in per_rank], key, shape) for key, shape in shapes.items()}


def _close(actual: Tensor, expected: Tensor, what: str, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.distributed
def test_two_uneven_ranks_equal_one_rank_on_the_concatenated_batch(one_step):
    one, two = one_step
    spec, cfg = make_spec(), make_config()
    full = make_batch(spec)
    assert full.labels["click"][CLICK_ROWS:].sum() == 0 < full.labels["click"][:CLICK_ROWS].sum()
    for task, label in (("cvr", "conversion"), ("cart", "cart")):  # both classes in the clicked rows
        assert 0 < full.labels[label][full.masks["click == 1"]].sum() < full.masks["click == 1"].sum(), task
    assert two[0]["sharding"] == EXPECTED_SHARDING == one[0]["sharding"]
    column_shards = [len(r["tables_after"]["sparse_arch.ebc.embedding_bags.cat.weight"]) for r in two]
    assert column_shards == [1, 1]  # cat's two column shards sit on different ranks

    expected = one[0]
    clicks = float(full.labels["click"].sum())
    for rank, result in enumerate(two):  # global counts on every rank, rank 1's click space empty
        assert result["counts"] == expected["counts"] == {"ctr": ROWS, "cvr": clicks, "cart": clicks}
        start, end = TWO_RANKS[rank]
        for task, log_p in result["log_p"].items():  # same weights: same forward on the same rows
            _close(log_p, expected["log_p"][task][start:end], f"rank {rank} log_p[{task}]")

    dense_names = expected["dense_names"]
    assert len(dense_names) == 21 and all(two[r]["dense_names"] == dense_names for r in (0, 1))
    for name in [*dense_names, "sparse_arch.ebc.embedding_bags.dev.weight"]:  # + the data-parallel table
        reference_grad = expected["grads"][name]
        assert reference_grad.abs().sum() > 0, f"{name}: zero gradient, the check would be vacuous"
        for rank, result in enumerate(two):
            _close(result["grads"][name], reference_grad, f"rank {rank} grad {name}")
    for name in dense_names:
        for rank, result in enumerate(two):
            _close(result["dense_after"][name], expected["dense_after"][name], f"rank {rank} {name} after")

    reference = reference_model(spec, cfg)
    before, after_one, after_two = (
        _tables(one, "tables_before", reference),
        _tables(one, "tables_after", reference),
        _tables(two, "tables_after", reference),
    )
    for key, table in after_two.items():
        assert not torch.equal(after_one[key], before[key]), (
            f"{key}: no row moved, the check would be vacuous"
        )
        _close(table, after_one[key], f"table {key} after the step")


@pytest.mark.distributed
def test_fused_optimizer_updates_each_touched_row_exactly_once(one_step):
    spec, cfg = make_spec(), make_config()
    reference = reference_model(spec, cfg)
    initial = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    batch = make_batch(spec)
    weighted_sum(task_losses(reference(batch), batch, cfg.tasks).losses, task_weights(cfg)).backward()
    parameters = dict(reference.named_parameters())

    touched: dict[str, set[int]] = {}
    for feature in spec.sparse:
        key = f"sparse_arch.ebc.embedding_bags.{feature.table}.weight"
        touched.setdefault(key, set()).update(batch.sparse[feature.name].values().tolist())

    for runs, per_rank in zip(("1 rank", "2 ranks"), one_step, strict=True):
        after = _tables(per_rank, "tables_after", reference)
        for key, table in after.items():
            delta = table - initial[key]  # [N, D]
            _close(delta, -SPARSE_LR * parameters[key].grad, f"{runs}: {key} delta", atol=1e-6)
            moved = set(torch.nonzero(delta.abs().sum(dim=1)).flatten().tolist())
            assert moved == touched[key], f"{runs}: {key}: rows moved {sorted(moved)} != touched"
        for rank, result in enumerate(per_rank):  # and the stack's gradients are plain autograd's
            for name, grad in result["grads"].items():
                _close(grad, parameters[name].grad, f"{runs}, rank {rank}: grad {name} vs unsharded")
    assert len(touched["sparse_arch.ebc.embedding_bags.user.weight"]) < 40  # some rows untouched


# ---------------------------------------------------------------- checkpoint round trip


def _predict(sharded, batch: Batch) -> dict[str, Tensor]:
    with torch.no_grad():  # not inference_mode: gloo collectives fail inside it
        return {task: v.clone() for task, v in sharded.model(batch).log_p.items()}


def _checkpoint_worker(rank: int, root: Path) -> None:
    from mtl_rec.checkpoint import MANIFEST, load_checkpoint, save_checkpoint
    from mtl_rec.sharding import plan_summary, plan_to_json

    spec, cfg = make_spec(), make_config()
    start, end = TWO_RANKS[rank]
    sharded = sharded_model(spec, cfg, seed=0)
    path = root / "run" / "checkpoint"
    fixed = make_batch(spec, start, end, seed=1)  # predictions are compared on another batch
    ids = []  # each save's manifest id: scoring keys its cached scores by it (jobs.report.score)
    for step in range(2):  # the 2nd save replaces the 1st checkpoint in place
        batch = make_batch(spec, start, end, seed=10 + step)
        sharded.zero_grad()
        weighted_sum(task_losses(sharded.model(batch), batch, cfg.tasks).losses, task_weights(cfg)).backward()
        sharded.step()
        published = save_checkpoint(
            sharded.model, path, files={"plan.json": plan_to_json(sharded.plan)}, manifest={"steps": step + 1}
        )
        assert published == path
        ids.append(json.loads((path / MANIFEST).read_text())["id"])
    assert ids[0] != ids[1], "two saves at one path must differ in their manifest"
    trained = _predict(sharded, fixed)

    fresh = sharded_model(spec, cfg, seed=1234)
    assert plan_summary(fresh.plan) == plan_summary(sharded.plan)
    before = _predict(fresh, fixed)
    assert not any(torch.equal(before[t], trained[t]) for t in trained), "fresh model already equal"
    manifest = load_checkpoint(fresh.model, path).manifest
    assert manifest.pop("id") == ids[1]
    assert manifest == {"complete": True, "fused_optimizer": False, "steps": 2}  # SGD keeps no state
    loaded = _predict(fresh, fixed)
    for task in trained:  # exact: the same rank, rows, plan and kernels; only the weights were reloaded
        assert torch.equal(loaded[task], trained[task]), f"rank {rank}: {task} predictions differ"

    dist.barrier()
    assert (path / MANIFEST).is_file() and (path / "plan.json").is_file() and (path / "model").is_dir()
    assert sorted(p.name for p in path.parent.iterdir()) == ["checkpoint"]  # no .tmp-, no .previous
    if rank == 0:  # a half-published checkpoint: every shard, no manifest
        shutil.copytree(path, root / "incomplete", ignore=shutil.ignore_patterns(MANIFEST))
    dist.barrier()
    with pytest.raises(FileNotFoundError, match="MANIFEST.json"):
        load_checkpoint(fresh.model, root / "incomplete")
    with pytest.raises(FileNotFoundError, match="MANIFEST.json"):
        load_checkpoint(fresh.model, root / "missing")


@pytest.mark.distributed
def test_checkpoint_round_trip_on_two_ranks(tmp_path):
    run_on_ranks(_checkpoint_worker, tmp_path, world_size=2, timeout_s=TIMEOUT_S)
    assert not [p.name for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]
    assert (tmp_path / "run" / "checkpoint" / "MANIFEST.json").is_file()
