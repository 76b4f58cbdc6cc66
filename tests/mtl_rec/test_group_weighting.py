"""Task weights per row group (mtl_rec.weighting.groups): each group's losses, its own method state,
one group = global weights exactly, absent groups keep their weights, and 2 real gloo ranks hold the
same [G, K] weights as one rank on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl_rec.config import ConfigError, FeatureSpec, from_dict
from mtl_rec.config.run import RunConfig, read_run_config
from mtl_rec.config.spaces import space_key
from mtl_rec.config.weighting import WeightGroupsConfig, WeightingConfig, weight_group_count
from mtl_rec.losses import GroupLosses, group_task_losses, task_losses
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.sharding import shard_model
from mtl_rec.step import TrainPipeline
from mtl_rec.weighting import METHODS, GroupedWeighting, build_weighting
from tests.harness import run_on_ranks
from tests.mtl_rec.test_sharding import (
    CONFIG,
    ONE_RANK,
    SPEC,
    TWO_RANKS,
    load_full_state,
    make_batch,
    make_spec,
    reference_model,
)

COLUMN = "segment"
PRIORS = {"ctr": 0.3, "cvr": 0.2, "cart": 0.2}


def grouped_batch(spec: FeatureSpec, start: int, end: int, seed: int, num_groups: int = 2):
    """make_batch's rows [start, end) with meta[segment] = request id % num_groups (the same row keeps
    its group whichever rank holds it)."""
    batch = make_batch(spec, start, end, seed=seed)
    batch.meta[COLUMN] = batch.ids % num_groups  # [B] int64
    return batch


def config(method: str, groups: bool = True, params: dict | None = None) -> RunConfig:
    weighting = {
        "method": method,
        "params": params or {},
        **({"groups": {"column": COLUMN}} if groups else {}),
    }
    return from_dict(RunConfig, {**CONFIG, "weighting": weighting})


def test_group_losses_split_each_task_loss_by_group():
    spec, cfg = make_spec(), config("fixed")
    model, batch = reference_model(spec, cfg), grouped_batch(make_spec(), 0, 24, seed=3, num_groups=3)
    outputs = model(batch)
    whole = task_losses(outputs, batch, cfg.tasks)
    split = group_task_losses(outputs, batch, cfg.tasks, batch.meta[COLUMN], 3)
    groups = batch.meta[COLUMN]
    for k, task in enumerate(cfg.tasks):
        mask = batch.masks[space_key(task.space)]
        expected_counts = [float((mask & (groups == g)).sum()) for g in range(3)]
        assert split.counts[:, k].tolist() == expected_counts  # [G, T] column t
        torch.testing.assert_close(split.losses[task.name].sum(), whole.losses[task.name], rtol=1e-6, atol=0)
        label = batch.labels[task.label]
        rows = mask & (groups == 1)  # group 1's part, by hand: its BCE sum over ALL groups' in-space count
        p = outputs.log_p[task.name].exp()
        by_hand = -(label * p.log() + (1 - label) * (1 - p).log())[rows].sum() / mask.sum()
        torch.testing.assert_close(split.losses[task.name][1], by_hand, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"group ids must lie in \[0, 2\)"):
        group_task_losses(outputs, batch, cfg.tasks, batch.meta[COLUMN], 2)


def _train(
    cfg: RunConfig, num_groups: int, steps: int = 3, groups_of=None
) -> tuple[list, torch.Tensor, object]:
    """`steps` TrainPipeline steps of the unsharded reference model -> (weights per step, final
    parameters, the weighting)."""
    spec = make_spec()
    model = reference_model(spec, cfg)
    weighting = build_weighting(cfg.weighting, cfg.tasks, PRIORS, num_groups)
    optimizer = torch.optim.Adam([*model.parameters(), *weighting.parameters()], lr=0.01)
    pipeline = TrainPipeline(model, model, optimizer, weighting, cfg.tasks)
    weights = []
    for step in range(steps):
        batch = grouped_batch(spec, 0, 24, seed=step, num_groups=max(num_groups, 1))
        if groups_of is not None:
            batch.meta[COLUMN] = groups_of(step, batch)
        weights.append(pipeline.progress(iter([batch])).weights)
    return weights, torch.cat([p.detach().reshape(-1) for p in model.parameters()]), weighting


@pytest.mark.parametrize("method", list(METHODS))
def test_one_group_trains_like_global_weights(method):
    """G = 1: the same objective, weights and updates as ungrouped training, for every method. (Gradient
    methods measure all K task gradients grouped, K - 1 ungrouped: equal up to float32 rounding.)"""
    global_weights, global_params, _ = _train(config(method, groups=False), 0)
    group_weights, group_params, weighting = _train(config(method), 1)
    assert isinstance(weighting, GroupedWeighting) and weighting.weights.shape == (1, 3)
    for step, (one, grouped) in enumerate(zip(global_weights, group_weights, strict=True)):
        assert grouped == pytest.approx(one, rel=1e-5, abs=1e-7), (method, step)
    torch.testing.assert_close(group_params, global_params, rtol=0, atol=1e-5)


def test_each_group_is_weighted_from_its_own_losses():
    """realtime_loss: w_gt = c_t / S_gt, S_gt each group's part of task t's loss (module doc)."""
    cfg = config("realtime_loss")
    spec = make_spec()
    model = reference_model(spec, cfg)
    weighting = build_weighting(cfg.weighting, cfg.tasks, None, 2)
    batch = grouped_batch(spec, 0, 24, seed=1)
    outputs = model(batch)
    split = group_task_losses(outputs, batch, cfg.tasks, batch.meta[COLUMN], 2)
    _, mean_weights = weighting.combine_groups(split, step=0)
    for g in range(2):
        for k, task in enumerate(cfg.tasks):
            expected = task.weight / float(split.losses[task.name][g].detach())
            assert float(weighting.weights[g, k]) == pytest.approx(expected, rel=1e-6), (g, task.name)
    assert weighting.weights[0].tolist() != pytest.approx(weighting.weights[1].tolist(), rel=1e-3)
    shares = split.counts / split.counts.sum(dim=0)  # [G, T]
    expected_mean = (shares * weighting.weights).sum(dim=0).tolist()
    assert list(mean_weights.values()) == pytest.approx(expected_mean, rel=1e-12)


def test_a_group_absent_from_a_step_keeps_its_weights_and_state():
    """Step 0 sees both groups, step 1 group 0 only: group 1's DWA history and weights stay."""
    cfg = from_dict(RunConfig, {**CONFIG, "weighting": {"method": "dwa", "params": {"window": 1},
                                                         "groups": {"column": COLUMN}}})  # fmt: skip
    weights_by_step = []
    _, _, weighting = _train(cfg, 2, steps=2)  # both groups in both steps
    before = {k: v.clone() for k, v in weighting.methods[1].state_dict().items()}
    weights_before = weighting.weights.clone()
    spec = make_spec()
    model = reference_model(spec, cfg)
    pipeline = TrainPipeline(
        model, model, torch.optim.SGD(model.parameters(), lr=0.1), weighting, cfg.tasks, step=2
    )
    for step in (2, 3):
        batch = grouped_batch(spec, 0, 24, seed=step)
        batch.meta[COLUMN] = torch.zeros_like(batch.ids)
        weights_by_step.append(pipeline.progress(iter([batch])).group_weights)
    after = weighting.methods[1].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "group 1's state moved without rows"
    assert torch.equal(weighting.weights[1], weights_before[1])
    assert weights_by_step[-1]["1"] == dict(
        zip(["ctr", "cvr", "cart"], weights_before[1].tolist(), strict=True)
    )
    assert not torch.equal(weighting.weights[0], weights_before[0])  # DWA over window 1 moved group 0's


def test_weight_groups_need_the_specs_domain_column(tmp_path):
    spec = make_spec()
    grouped = WeightingConfig("dwa", groups=WeightGroupsConfig(COLUMN))
    assert weight_group_count(WeightingConfig("dwa"), spec) == 0
    with pytest.raises(ConfigError, match="the feature spec has no domain_column; set it"):
        weight_group_count(grouped, spec)
    with_domain = from_dict(FeatureSpec, {**SPEC, "domain_column": "dev", "num_domains": 4})
    with pytest.raises(ConfigError, match=r"must be the feature spec's domain_column \('dev'\)"):
        weight_group_count(grouped, with_domain)
    assert weight_group_count(WeightingConfig("dwa", groups=WeightGroupsConfig("dev")), with_domain) == 4
    # the flat form `weighting: {method, <params>, groups}` keeps groups beside the params
    cfg = read_run_config(
        "jobs/configs/mmoe.yaml", ["weighting={method: dwa, window: 3, groups: {column: domain}}"]
    )
    assert cfg.weighting.params == {"window": 3} and cfg.weighting.groups == WeightGroupsConfig("domain")


# ------------------------------------------------------------------------------- 2 gloo ranks

DISTRIBUTED_METHODS = {
    "dwa": {"window": 1},
    "uncertainty": {},
    "mgda": {},
    "grad_normalization": {},
    "pcgrad": {},
}
SURGERY_WITHOUT_WEIGHTS = {"pcgrad"}  # projects the gradients: its weights are the static ones
STEPS = 3


def _group_worker(rank: int, out_dir: Path, slices: tuple) -> None:
    spec, results = make_spec(), {}
    for method, params in DISTRIBUTED_METHODS.items():
        cfg = config(method, params=params)
        weighting = build_weighting(cfg.weighting, cfg.tasks, PRIORS, 2)
        torch.manual_seed(0)
        model = MultiTaskModel(spec, cfg.model, cfg.tasks)
        sharded = shard_model(model, cfg, torch.device("cpu"), list(weighting.parameters()))
        load_full_state(sharded.model, reference_model(spec, cfg).state_dict())
        pipeline = TrainPipeline(sharded.model, sharded.module, sharded, weighting, cfg.tasks)
        per_step = []
        for step in range(STEPS):
            pipeline.progress(iter([grouped_batch(spec, *slices[rank], seed=step)]))
            per_step.append(weighting.weights.clone())  # [G, K]
        dense = torch.cat([p.detach().reshape(-1) for p in sharded.module.backbone.parameters()])  # [P]
        results[method] = {"weights": torch.stack(per_step), "backbone": dense}  # [S, G, K], [P]
    torch.save(results, out_dir / f"rank{rank}.pt")


def _run(out_dir: Path, slices: tuple) -> list[dict]:
    out_dir.mkdir()
    run_on_ranks(_group_worker, out_dir, slices, world_size=len(slices), timeout_s=120)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(len(slices))]


@pytest.mark.distributed
def test_two_ranks_hold_the_same_group_weights_as_one_rank(tmp_path):
    one = _run(tmp_path / "one", ONE_RANK)[0]
    first, second = _run(tmp_path / "two", TWO_RANKS)
    for method in DISTRIBUTED_METHODS:
        weights = first[method]["weights"]
        assert weights.shape == (STEPS, 2, 3)
        assert torch.equal(weights, second[method]["weights"]), method  # all-reduced inputs: the same bits
        # 1 rank on the whole batch: the same sums in another order (float32 rounding only)
        torch.testing.assert_close(weights, one[method]["weights"], rtol=1e-5, atol=1e-7, msg=method)
        torch.testing.assert_close(first[method]["backbone"], second[method]["backbone"], rtol=0, atol=1e-6)
        torch.testing.assert_close(first[method]["backbone"], one[method]["backbone"], rtol=0, atol=1e-5)
        if method not in SURGERY_WITHOUT_WEIGHTS:
            assert not torch.equal(weights[-1, 0], weights[-1, 1]), f"{method}: both groups got one vector"


def test_grouped_surgery_gives_each_groups_own_combination_of_its_gradients():
    """grad_normalization with 2 groups on losses linear in theta (S_gt = G_gt . theta): the shared
    gradient is sum_g sum_t c_t G_gt / ||G_gt||, each group normalising its own task gradients."""
    cfg = config("grad_normalization")
    weighting = build_weighting(cfg.weighting, cfg.tasks, None, 2)
    grads = torch.tensor(  # [G, K, P] G_gt
        [[[3.0, 0.0, 0.0, 4.0], [0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]],
         [[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [2.0, 0.0, 0.0, 0.0]]],
        dtype=torch.float64,
    )  # fmt: skip
    theta = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))  # [P]
    weighting.attach_shared([theta])
    losses = {
        task.name: grads[:, k] @ theta + 0.5 for k, task in enumerate(cfg.tasks)
    }  # {t: [G, P] x [P] -> [G]}
    counts = torch.ones(2, 3, dtype=torch.float64)  # [G, T]: both groups present
    total, _ = weighting.combine_groups(GroupLosses(losses, counts), step=0)
    total.backward()
    weighting.after_backward()
    static = torch.tensor([task.weight for task in cfg.tasks], dtype=torch.float64)  # [K]
    norms = grads.norm(dim=2)  # [G, K]
    expected = ((static / norms)[:, :, None] * grads).sum(dim=(0, 1))  # [G, K, 1] * [G, K, P] -> [P]
    torch.testing.assert_close(theta.grad, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weighting.weights, static / norms, rtol=1e-12, atol=0)
