"""AdaTT (mtl_rec/models/adatt.py): its fusion and residual, a 2-rank sharded step equal to 1 rank,
and training under every weighting method. The registry-wide tests (contract, gradients to every
parameter, entire-space chains over every backbone) cover it too: tests/mtl_rec/models/test_backbones.py
and test_model.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl_rec.config import from_dict
from mtl_rec.config.model import MLPConfig, ModelConfig, parse_tasks
from mtl_rec.models.adatt import AdaTT, AdaTTConfig
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.step import TrainPipeline
from mtl_rec.weighting import METHODS, WeightingConfig, build_weighting
from tests.mtl_rec.models.test_model import THREE_TASKS, random_batch
from tests.pipelines.tables import tiny_spec

TASKS = ("ctr", "cvr", "cart")
IN_DIM, BATCH = 24, 16
ADATT = {
    "arch": "adatt",
    "params": {"num_levels": 2, "task_experts": 2, "shared_experts": 1, "expert": {"hidden": [8]}},
}


class ZeroGate(nn.Module):
    """A gate that gives every unit weight 0: [B, In] -> [B, N] of zeros."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.units = units

    def forward(self, x):
        return x.new_zeros(x.shape[0], self.units)


def test_with_the_gate_zeroed_a_task_gets_exactly_its_own_units_linear_combination():
    torch.manual_seed(0)
    config = AdaTTConfig(
        num_levels=1,
        task_experts={"ctr": 3, "cvr": 1, "cart": 2},
        shared_experts=2,
        expert=MLPConfig(hidden=(8,)),
    )
    backbone = AdaTT(IN_DIM, TASKS, config)
    level = backbone.levels[0]
    assert {t: g.logits.out_features for t, g in level.gates.items()} == {t: 3 + 1 + 2 + 2 for t in TASKS}
    assert level.shared_gate is None  # the top level fuses no shared output
    x = torch.randn(BATCH, IN_DIM)
    for task in TASKS:
        level.gates[task] = ZeroGate(8)
    out = backbone(x)
    ctr_units = level.task_units["ctr"](x)  # [B, 3, H]
    expected = torch.einsum("m,bmh->bh", level.residual_weights["ctr"], ctr_units)  # [3] x [B, 3, H]
    torch.testing.assert_close(out["ctr"], expected, rtol=0, atol=0)  # the same ops on the same values
    assert torch.equal(out["cvr"], level.task_units["cvr"](x)[:, 0])  # one unit: the unit itself
    assert "cvr" not in level.residual_weights
    with torch.no_grad():  # another task's units and the shared ones do not reach ctr without the gate
        for p in [*level.task_units["cart"].parameters(), *level.shared_units.parameters()]:
            p.add_(1.0)
    assert torch.equal(backbone(x)["ctr"], out["ctr"])


def test_the_gate_borrows_from_every_task_and_the_shared_units():
    torch.manual_seed(0)
    backbone = AdaTT(
        IN_DIM,
        TASKS,
        AdaTTConfig(
            num_levels=1, task_experts=2, shared_experts=1, expert=MLPConfig(hidden=(8,)), residual=False
        ),
    )
    level, x = backbone.levels[0], torch.randn(BATCH, IN_DIM)
    units = torch.cat([*(level.task_units[t](x) for t in TASKS), level.shared_units(x)], dim=1)  # [B, 7, H]
    weights = level.gates["cvr"](x)  # [B, 7]
    torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH))
    torch.testing.assert_close(backbone(x)["cvr"], torch.einsum("bn,bnh->bh", weights, units))
    assert not level.residual_weights  # residual off: the gate alone


def test_two_levels_pass_each_task_its_own_output_and_the_shared_gate_output():
    torch.manual_seed(0)
    backbone = AdaTT(
        IN_DIM,
        TASKS,
        AdaTTConfig(num_levels=2, task_experts=1, shared_experts=1, expert=MLPConfig(hidden=(8, 4))),
    )
    inner, top = backbone.levels
    assert inner.shared_gate is not None and top.shared_gate is None
    x = torch.randn(BATCH, IN_DIM)
    task_outputs, shared = inner({t: x for t in TASKS}, x)  # {t: [B, 4]}, [B, 4]
    expected, _ = top(task_outputs, shared)
    for task in TASKS:
        torch.testing.assert_close(backbone(x)[task], expected[task])
    assert backbone.output_dims == {t: 4 for t in TASKS}
    sp = AdaTT(IN_DIM, TASKS, AdaTTConfig(shared_experts=0, expert=MLPConfig(hidden=(8,))))  # AdaTT-sp
    assert sp.levels[0].shared_units is None and sp(x)["ctr"].shape == (BATCH, 8)


def test_a_two_rank_sharded_step_equals_the_one_rank_step(tmp_path):
    from tests.mtl_rec.test_sharding import ONE_RANK, ROWS, TWO_RANKS, run_step

    model = {**ADATT, "dense_arch": {"hidden": [4]}}
    one, two = run_step(tmp_path / "one", ONE_RANK, model), run_step(tmp_path / "two", TWO_RANKS, model)
    expected = one[0]
    adatt_names = [
        n for n in expected["dense_names"] if "residual_weights" in n or "levels.1.shared_gate" in n
    ]
    assert adatt_names  # the AdaTT-specific parameters are among those compared
    for rank, result in enumerate(two):
        start, end = TWO_RANKS[rank]
        for task, log_p in result["log_p"].items():  # the same weights on the same rows: float32 noise
            torch.testing.assert_close(log_p, expected["log_p"][task][start:end], rtol=0, atol=1e-5)
        for name in expected["dense_names"]:  # globally normalised losses: the same gradient
            if name in expected["grads"]:
                assert expected["grads"][name].abs().sum() > 0, name
                torch.testing.assert_close(result["grads"][name], expected["grads"][name], rtol=0, atol=1e-5)
            torch.testing.assert_close(
                result["dense_after"][name], expected["dense_after"][name], rtol=0, atol=1e-5
            )
    assert sum(len(r["log_p"]["ctr"]) for r in two) == ROWS


@pytest.mark.parametrize("method", list(METHODS))
def test_adatt_trains_under_every_weighting_method(method):
    spec = tiny_spec()
    tasks = parse_tasks(THREE_TASKS, spec.labels)
    torch.manual_seed(0)
    model = MultiTaskModel(spec, from_dict(ModelConfig, ADATT), tasks, device="cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weighting = build_weighting(WeightingConfig(method), tasks, {"ctr": 0.3, "cvr": 0.1, "cart": 0.2})
    pipeline = TrainPipeline(model, model, optimizer, weighting, tasks)  # the worker's step
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    batches = (random_batch(spec, batch_size=64, seed=step) for step in range(3))
    for _ in range(3):
        result = pipeline.progress(batches)
        assert torch.isfinite(result.total) and set(result.weights) == set(TASKS)
        assert all(torch.isfinite(torch.as_tensor(w)) for w in result.weights.values()), result.weights
    moved = [n for n, p in model.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert any("residual_weights" in n for n in moved) and any("levels.0.gates" in n for n in moved)
