"""AITM: shapes, gradient flow, the AIT attention (weights sum to 1, the output is their mixture,
information flows forward along the sequence only), the behavioural expectation calibrator against
its formula, and 2 sharded ranks == 1 rank with the calibrator on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl_rec.config import ConfigError, from_dict
from mtl_rec.config.model import MLPConfig, ModelConfig, parse_tasks
from mtl_rec.config.run import RunConfig
from mtl_rec.losses import auxiliary_losses, task_losses
from mtl_rec.models import AITM, AITMConfig, TaskOutputs, arch_config, build_backbone
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.weighting import METHODS
from tests.mtl_rec.models.test_escm2 import (
    assert_ranks_equal_one_rank,
    label_batch,
    run_config,
    trainer_step,
    trainer_step_on_two_ranks,
)
from tests.mtl_rec.models.test_model import random_batch
from tests.pipelines.tables import tiny_spec

FUNNEL = [  # the paper's setting: every step of the funnel over all impressions
    {"name": "ctr", "label": "click", "tower": {"hidden": []}},
    {"name": "cart", "label": "cart", "tower": {"hidden": []}},
    {"name": "conversion", "label": "conversion", "tower": {"hidden": []}},
]
TASKS = ("ctr", "cart", "conversion")
IN_DIM, BATCH, DIM = 12, 16, 6


def aitm(sequence: tuple[str, ...] = (), calibrator_weight: float = 0.6) -> AITM:
    torch.manual_seed(0)
    config = AITMConfig(
        tower=MLPConfig(hidden=(8, DIM)), sequence=sequence, calibrator_weight=calibrator_weight
    )
    return AITM(IN_DIM, TASKS, config)


def test_shapes_and_modules_along_the_sequence():
    backbone = aitm()
    out = backbone(torch.randn(BATCH, IN_DIM))
    assert {task: tuple(z.shape) for task, z in out.items()} == {task: (BATCH, DIM) for task in TASKS}
    assert backbone.output_dims == {task: DIM for task in TASKS}
    assert list(backbone.ait) == list(backbone.transfers) == ["cart", "conversion"]  # receivers only
    short = aitm(sequence=("cart", "ctr"))
    assert short.sequence == ("cart", "ctr") and list(short.ait) == ["ctr"]


def test_every_parameter_gets_a_gradient_from_the_losses_and_the_calibrator():
    torch.manual_seed(0)
    params = {"tower": {"hidden": [8, DIM]}}
    model_cfg = from_dict(ModelConfig, {"arch": "aitm", "params": params, "dense_arch": {"hidden": [8]}})
    spec = tiny_spec()
    tasks = parse_tasks(FUNNEL, spec.labels)
    model = MultiTaskModel(spec, model_cfg, tasks, device="cpu")
    batch = random_batch(spec)
    outputs = model(batch)
    assert outputs.aux["aitm_calibrator"].shape == (32,) and model.auxiliary_spaces() == {
        "aitm_calibrator": "all"
    }
    aux = auxiliary_losses(outputs.aux, model.auxiliary_spaces(), batch)
    assert aux["aitm_calibrator"] > 0  # untrained: some later step above the one before
    (sum(task_losses(outputs, batch, tasks).losses.values()) + aux["aitm_calibrator"]).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_ait_weights_sum_to_one_and_mix_the_value_projections():
    ait = aitm().ait["cart"]
    transferred, own = torch.randn(BATCH, DIM), torch.randn(BATCH, DIM)
    mixed, weights = ait(transferred, own)
    assert weights.shape == (BATCH, 2) and (weights > 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(BATCH))
    for row in range(3):  # by hand: w_u = softmax_u(<Q u, K u> / sqrt(D)), z = sum_u w_u V u
        candidates = [transferred[row], own[row]]
        scores = torch.stack([ait.query(u) @ ait.key(u) / math.sqrt(DIM) for u in candidates])
        expected_weights = torch.softmax(scores, dim=0)
        torch.testing.assert_close(weights[row], expected_weights)
        expected = sum(w * ait.value(u) for w, u in zip(expected_weights, candidates, strict=True))
        torch.testing.assert_close(mixed[row], expected)


def test_information_flows_forward_along_the_sequence_only():
    backbone = aitm(sequence=("ctr", "cart"))  # conversion is outside the sequence
    x = torch.randn(BATCH, IN_DIM)
    before = backbone(x)
    torch.testing.assert_close(before["conversion"], backbone.towers["conversion"](x))  # its own tower only
    with torch.no_grad():
        backbone.towers["ctr"].layers[0].weight.add_(0.5)
    after = backbone(x)
    assert not torch.allclose(after["ctr"], before["ctr"]) and not torch.allclose(
        after["cart"], before["cart"]
    )
    assert torch.equal(after["conversion"], before["conversion"])
    with torch.no_grad():
        backbone.towers["cart"].layers[0].weight.add_(0.5)
    later = backbone(x)
    assert torch.equal(later["ctr"], after["ctr"])  # the first step never reads the second
    assert not torch.allclose(later["cart"], after["cart"])


def outputs_with(probs: dict[str, list[float]]) -> TaskOutputs:
    p = {
        task: torch.tensor(values, dtype=torch.float64, requires_grad=True) for task, values in probs.items()
    }
    return TaskOutputs(
        logit={task: torch.logit(v) for task, v in p.items()},
        log_p={task: v.log() for task, v in p.items()},
        log_1mp={task: torch.log1p(-v) for task, v in p.items()},
    ), p


def test_the_calibrator_is_the_mean_excess_of_each_step_over_the_one_before():
    probs = {
        "ctr": [0.5, 0.2, 0.1, 0.3],
        "cart": [0.6, 0.1, 0.1, 0.5],  # above ctr on rows 0 and 3
        "conversion": [0.1, 0.3, 0.05, 0.2],  # above cart on row 1
    }
    outputs, p = outputs_with(probs)
    backbone = aitm(calibrator_weight=0.6)
    batch = label_batch([1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0])
    per_row = backbone.auxiliary_losses(outputs, batch)["aitm_calibrator"]
    loss = auxiliary_losses({"aitm_calibrator": per_row}, backbone.auxiliary_spaces, batch)["aitm_calibrator"]
    values = {task: np.array(v) for task, v in probs.items()}
    expected = 0.6 * sum(
        np.maximum(values[child] - values[parent], 0).mean()
        for parent, child in (("ctr", "cart"), ("cart", "conversion"))
    )
    assert expected == pytest.approx(0.6 * (0.3 / 4 + 0.2 / 4))
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()  # d/dp_child = alpha / B where the child exceeds its parent, 0 elsewhere
    np.testing.assert_allclose(p["conversion"].grad.numpy(), [0, 0.15, 0, 0])
    np.testing.assert_allclose(p["cart"].grad.numpy(), [0.15, -0.15, 0, 0.15])
    np.testing.assert_allclose(p["ctr"].grad.numpy(), [-0.15, 0, 0, -0.15])


def test_the_calibrator_is_zero_when_every_step_is_below_the_one_before():
    outputs, p = outputs_with({"ctr": [0.5, 0.2], "cart": [0.5, 0.1], "conversion": [0.01, 0.1]})
    per_row = aitm().auxiliary_losses(outputs, None)["aitm_calibrator"]
    assert torch.equal(per_row, torch.zeros(2, dtype=torch.float64))
    per_row.sum().backward()
    assert all((v.grad == 0).all() for v in p.values())


def test_an_esmm_chain_satisfies_the_calibrator_by_construction():
    torch.manual_seed(0)
    chain = [FUNNEL[0], {**FUNNEL[1], "parent": "ctr"}, {**FUNNEL[2], "parent": "cart"}]
    model_cfg = from_dict(ModelConfig, {"arch": "aitm", "params": {"tower": {"hidden": [DIM]}}})
    spec = tiny_spec()
    model = MultiTaskModel(spec, model_cfg, parse_tasks(chain, spec.labels), device="cpu")
    assert (model(random_batch(spec)).aux["aitm_calibrator"] == 0).all()


def test_config_errors():
    with pytest.raises(ConfigError, match=r"aitm sequence names tasks \['click'\] that are not tasks"):
        build_backbone(ModelConfig(arch="aitm", params={"sequence": ["click", "cart"]}), IN_DIM, TASKS)
    with pytest.raises(ConfigError, match="sequence names a task twice"):
        arch_config(from_dict(ModelConfig, {"arch": "aitm", "params": {"sequence": ["ctr", "ctr"]}}))
    with pytest.raises(ConfigError, match="calibrator_weight must be >= 0"):
        arch_config(from_dict(ModelConfig, {"arch": "aitm", "params": {"calibrator_weight": -1.0}}))
    with pytest.raises(ConfigError, match="tower.hidden needs at least one layer"):
        arch_config(from_dict(ModelConfig, {"arch": "aitm", "params": {"tower": {"hidden": []}}}))


SMALL = {"arch": "aitm", "params": {"tower": {"hidden": [8, 4]}}, "dense_arch": {"hidden": [4]}}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_weighting_method_trains_a_step_with_the_calibrator(method):
    from tests.mtl_rec.test_sharding import make_batch, make_spec, reference_model

    spec, cfg = make_spec(), from_dict(RunConfig, run_config(SMALL, FUNNEL, {"method": method}))
    model = reference_model(spec, cfg)
    result = trainer_step(model, model, make_batch(spec), cfg)
    assert result["aux"]["aitm_calibrator"] > 0
    for name, param in model.named_parameters():  # the unsharded tables' included
        assert param.grad is not None and torch.isfinite(param.grad).all(), f"{method}: {name}"
        assert param.grad.abs().sum() > 0, f"{method}: no gradient reaches {name}"


@pytest.mark.distributed
def test_two_ranks_equal_one_rank_with_the_calibrator(tmp_path):
    """The per-row calibrator is summed over each rank's rows and divided by the GLOBAL row count."""
    config = run_config(SMALL, FUNNEL)
    ranks = trainer_step_on_two_ranks({"aitm": (config, False)}, tmp_path)["aitm"]
    reference = assert_ranks_equal_one_rank(ranks, config)
    assert reference["aux"]["aitm_calibrator"] > 0
    assert all(result["aux"]["aitm_calibrator"] > 0 for result in ranks)  # both ranks hold violations
