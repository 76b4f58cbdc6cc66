"""SNR: shapes of both variants, gradient flow, the hard concrete gates (samples, the deterministic
estimator, a closed route is exactly 0), the L0 penalty's closed form, and 2 sharded ranks == 1 rank
with the penalty on; the penalty's gradient survives gradient surgery (PCGrad)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl_rec.config import ConfigError, from_dict
from mtl_rec.config.model import MLPConfig, ModelConfig, parse_tasks
from mtl_rec.config.run import RunConfig
from mtl_rec.losses import auxiliary_losses, task_losses
from mtl_rec.models import SNR, SNRConfig, arch_config, build_backbone
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.models.snr import HardConcreteGates
from mtl_rec.weighting import METHODS
from tests.mtl_rec.models.test_escm2 import assert_ranks_equal_one_rank, run_config, trainer_step_on_two_ranks
from tests.mtl_rec.models.test_model import THREE_TASKS, random_batch
from tests.pipelines.tables import tiny_spec

TASKS = ("ctr", "cvr", "cart")
IN_DIM, BATCH = 12, 16


def snr(variant: str = "trans", num_levels: int = 2, **params) -> SNR:
    torch.manual_seed(0)
    config = SNRConfig(
        variant=variant, num_levels=num_levels, subnetworks=3, subnetwork=MLPConfig(hidden=(6,)), **params
    )
    return SNR(IN_DIM, TASKS, config)


def open_probability(log_alpha, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1):
    """P(z > 0) of a hard concrete gate, numpy: sigmoid(log alpha - beta log(-gamma / zeta))."""
    return 1 / (1 + np.exp(-(np.asarray(log_alpha, dtype=np.float64) - beta * math.log(-gamma / zeta))))


@pytest.mark.parametrize("variant", ["trans", "avg"])
@pytest.mark.parametrize("num_levels", [1, 2])
def test_shapes_and_routes_of_both_variants(variant, num_levels):
    backbone = snr(variant, num_levels)
    out = backbone(torch.randn(BATCH, IN_DIM))
    assert {task: tuple(h.shape) for task, h in out.items()} == {task: (BATCH, 6) for task in TASKS}
    assert backbone.output_dims == {task: 6 for task in TASKS}
    shapes = [tuple(routing.gates.log_alpha.shape) for routing in backbone.routes]
    assert shapes == [(3, 3)] * (num_levels - 1) + [(3, 3)]  # 3 sub-networks -> 3 sub-networks / 3 tasks
    for routing in backbone.routes:  # SNR-Trans: one 6 x 6 matrix per route; SNR-Avg: none
        assert (routing.transforms is None) == (variant == "avg")
        if variant == "trans":
            assert tuple(routing.transforms.shape) == (3, 3, 6, 6)


@pytest.mark.parametrize("variant", ["trans", "avg"])
def test_every_parameter_gets_a_gradient_from_the_losses_and_the_penalty(variant):
    torch.manual_seed(0)
    params = {"variant": variant, "subnetworks": 2, "subnetwork": {"hidden": [6]}}
    model_cfg = from_dict(ModelConfig, {"arch": "snr", "params": params, "dense_arch": {"hidden": [8]}})
    spec = tiny_spec()
    tasks = parse_tasks(THREE_TASKS, spec.labels)
    model = MultiTaskModel(spec, model_cfg, tasks, device="cpu")
    batch = random_batch(spec)
    outputs = model(batch)
    assert set(outputs.aux) == {"snr_l0"} and outputs.aux["snr_l0"].shape == ()
    aux = auxiliary_losses(outputs.aux, model.auxiliary_spaces(), batch)
    (sum(task_losses(outputs, batch, tasks).losses.values()) + aux["snr_l0"]).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{variant}: no gradient reaches {name}"


def test_the_deterministic_gates_are_the_clipped_stretched_sigmoid():
    backbone = snr(num_levels=1).eval()
    log_alpha = torch.tensor([[-3.0, 0.0, 2.0], [0.5, -0.2, 8.0], [-30.0, 1.0, -1.0]])
    with torch.no_grad():
        backbone.routes[0].gates.log_alpha.copy_(log_alpha)
    expected = np.clip(1 / (1 + np.exp(-log_alpha.numpy().astype(np.float64))) * 1.2 - 0.1, 0, 1)
    np.testing.assert_allclose(backbone.eval_gates()[0].detach().numpy(), expected, rtol=1e-6, atol=1e-7)
    gates = backbone.routes[0].gates(4)  # the same gates for every row at evaluation
    assert gates.shape == (4, 3, 3) and torch.equal(gates[0], gates[3])


def test_a_route_with_very_negative_log_alpha_is_exactly_zero_and_its_subnetwork_is_cut_off():
    backbone = snr(num_levels=2)
    with torch.no_grad():  # sub-network 0 of the last level routes to no task
        backbone.routes[-1].gates.log_alpha[0].fill_(-30.0)
    x = torch.randn(BATCH, IN_DIM)
    assert (backbone.eval().eval_gates()[-1][0] == 0).all()
    for mode in ("eval", "train"):
        backbone.train(mode == "train")
        torch.manual_seed(1)
        before = backbone(x)
        assert (backbone.routes[-1].gates(1000)[:, 0] == 0).all(), mode  # every sample, even in training
        last_level = backbone.levels[-1].experts
        with torch.no_grad():
            for param in last_level[0].parameters():
                param.add_(1.0)
        torch.manual_seed(1)
        after = backbone(x)
        assert all(torch.equal(before[t], after[t]) for t in TASKS), f"{mode}: the closed sub-network leaks"
        with torch.no_grad():  # sub-network 1 is still routed: changing it changes the outputs
            for param in last_level[1].parameters():
                param.add_(1.0)
        torch.manual_seed(1)
        assert not torch.allclose(backbone(x)["ctr"], before["ctr"]), mode


def test_the_l0_penalty_equals_its_closed_form():
    backbone = snr(num_levels=2, l0_weight=0.03, beta=0.5, gamma=-0.2, zeta=1.3)
    torch.manual_seed(3)
    with torch.no_grad():
        for routing in backbone.routes:
            routing.gates.log_alpha.copy_(torch.randn(3, 3) * 3)
    log_alphas = np.concatenate([r.gates.log_alpha.detach().numpy().ravel() for r in backbone.routes])
    expected = 0.03 * open_probability(log_alphas, beta=0.5, gamma=-0.2, zeta=1.3).sum()
    penalty = backbone.auxiliary_losses(None, None)["snr_l0"]
    assert penalty.shape == () and penalty.item() == pytest.approx(expected, rel=1e-6)
    backbone.auxiliary_losses(None, None)["snr_l0"].backward()
    grad = backbone.routes[0].gates.log_alpha.grad.numpy()
    p = open_probability(backbone.routes[0].gates.log_alpha.detach().numpy(), beta=0.5, gamma=-0.2, zeta=1.3)
    np.testing.assert_allclose(grad, 0.03 * p * (1 - p), rtol=1e-5)


def test_training_samples_follow_the_hard_concrete_distribution():
    config = SNRConfig()
    gates = HardConcreteGates((3,), config)
    log_alpha = np.array([-1.0, 0.0, 2.0])
    with torch.no_grad():
        gates.log_alpha.copy_(torch.tensor(log_alpha))
    torch.manual_seed(0)
    samples = gates(200_000).detach().numpy()  # [N, 3]
    assert samples.min() == 0.0 and samples.max() == 1.0  # exact zeros and ones occur
    # P(z > 0) = sigmoid(log alpha - beta log(-gamma / zeta));  P(z = 1) = sigmoid(log alpha - beta logit(t)),
    # t = (1 - gamma) / (zeta - gamma);  standard error of a fraction over 200k samples <= 0.0012
    np.testing.assert_allclose((samples > 0).mean(axis=0), open_probability(log_alpha), atol=0.005)
    t = 1.1 / 1.2
    closed = 1 / (1 + np.exp(-(log_alpha - 2 / 3 * math.log(t / (1 - t)))))
    np.testing.assert_allclose((samples == 1).mean(axis=0), closed, atol=0.005)


@pytest.mark.parametrize("variant", ["trans", "avg"])
def test_a_task_input_is_the_gated_sum_over_subnetworks(variant):
    backbone = snr(variant, num_levels=1).eval()
    with torch.no_grad():
        backbone.routes[0].gates.log_alpha.copy_(
            torch.tensor([[-1.0, 0.3, 9.0], [0.0, -30.0, 1.0], [2.0, 0.5, -0.5]])
        )
    x = torch.randn(BATCH, IN_DIM)
    u = backbone.levels[0](x)  # [B, M, H]
    z = backbone.eval_gates()[0]  # [M, T]
    for t, task in enumerate(TASKS):
        if variant == "avg":
            expected = sum(z[i, t] * u[:, i] for i in range(3))  # v_t = sum_i z_it u_i
        else:
            expected = sum(
                z[i, t] * u[:, i] @ backbone.routes[0].transforms[i, t] for i in range(3)
            )  # sum z W u
        torch.testing.assert_close(backbone(x)[task], expected)


def test_config_errors():
    with pytest.raises(ConfigError, match="model.params.variant: 'sum' is not one of 'trans', 'avg'"):
        arch_config(from_dict(ModelConfig, {"arch": "snr", "params": {"variant": "sum"}}))
    with pytest.raises(ConfigError, match="hard concrete needs beta > 0, gamma < 0, zeta > 1"):
        arch_config(from_dict(ModelConfig, {"arch": "snr", "params": {"gamma": 0.1}}))
    with pytest.raises(ConfigError, match="num_levels and subnetworks must be >= 1"):
        arch_config(from_dict(ModelConfig, {"arch": "snr", "params": {"subnetworks": 0}}))
    with pytest.raises(ConfigError, match="subnetwork.hidden needs at least one layer"):
        build_backbone(ModelConfig(arch="snr", params={"subnetwork": {"hidden": []}}), IN_DIM, TASKS)


# Evaluation gates (the training noise differs by rank) and log alpha = 5: every route is fully open,
# min(1, sigmoid(5) * 1.2 - 0.1) = 1 with a zero clip gradient, so log alpha's whole gradient is the L0
# penalty's, l0_weight * P(open) (1 - P(open)) per route. The first routing's log alpha is shared by all
# tasks: gradient surgery (PCGrad) must keep that gradient.
OPEN_PARAMS = {"subnetworks": 2, "subnetwork": {"hidden": [8]}, "log_alpha_init": 5.0, "l0_weight": 0.1}
ROUTES = 2 * 2 + 2 * 3  # 2 sub-networks -> 2 sub-networks -> 3 tasks


def open_routes_config(weighting: dict | None = None) -> dict:
    tasks = [{**task, "tower": {"hidden": [4]}} for task in THREE_TASKS]
    return run_config({"arch": "snr", "params": OPEN_PARAMS, "dense_arch": {"hidden": [4]}}, tasks, weighting)


def assert_the_log_alpha_gradient_is_the_penalty_s(result: dict) -> None:
    p = open_probability(5.0)
    for level in (0, 1):
        grad = result["grads"][f"backbone.routes.{level}.gates.log_alpha"]
        expected = np.full(grad.shape, 0.1 * p * (1 - p))
        np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-3)  # float32 sigmoid(5): 1 - p to ~1e-4
    assert result["aux"]["snr_l0"].item() == pytest.approx(0.1 * p * ROUTES, rel=1e-6)


@pytest.mark.parametrize("method", list(METHODS))
def test_the_penalty_gradient_is_kept_by_every_weighting_method(method):
    """One process, the real model: the penalty is added unweighted, and gradient surgery (PCGrad,
    GradVac) keeps it on the shared log alphas; dropping it would leave them a zero gradient."""
    from tests.mtl_rec.models.test_escm2 import trainer_step
    from tests.mtl_rec.test_sharding import make_batch, make_spec, reference_model

    spec, cfg = make_spec(), from_dict(RunConfig, open_routes_config({"method": method}))
    model = reference_model(spec, cfg).eval()
    result = trainer_step(model, model, make_batch(spec), cfg)
    assert_the_log_alpha_gradient_is_the_penalty_s(result)


@pytest.fixture(scope="module")
def two_rank_steps(tmp_path_factory):
    cases = {
        "fixed": (open_routes_config(), True),
        "pcgrad": (open_routes_config({"method": "pcgrad"}), True),
    }
    return trainer_step_on_two_ranks(cases, tmp_path_factory.mktemp("snr"))


@pytest.mark.distributed
def test_two_ranks_equal_one_rank_with_the_l0_penalty(two_rank_steps):
    """The [] penalty is divided by the world size on each rank and summed by DDP: counted once."""
    reference = assert_ranks_equal_one_rank(two_rank_steps["fixed"], open_routes_config(), eval_mode=True)
    assert_the_log_alpha_gradient_is_the_penalty_s(reference)


@pytest.mark.distributed
def test_two_ranks_equal_one_rank_with_the_l0_penalty_under_pcgrad(two_rank_steps):
    config = open_routes_config({"method": "pcgrad"})
    reference = assert_ranks_equal_one_rank(two_rank_steps["pcgrad"], config, eval_mode=True)
    assert_the_log_alpha_gradient_is_the_penalty_s(reference)
