"""Task weighting: each method against a hand-computed reference, config errors, and 2 gloo ranks on
different data holding identical weights (and identical learnable parameters) at every step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from mtl_rec.config.loader import ConfigError, from_dict
from mtl_rec.config.model import parse_tasks
from mtl_rec.weighting import METHODS, WeightingConfig, bernoulli_entropy, build_weighting, method_config
from tests.harness import run_on_two_ranks

TASKS = parse_tasks(
    [
        {"name": "ctr", "label": "click"},
        {"name": "cvr", "label": "conversion", "space": "click == 1", "weight": 0.5},
        {"name": "cart", "label": "cart", "weight": 2.0},
    ]
)
NAMES = [task.name for task in TASKS]
STATIC = np.array([task.weight for task in TASKS])  # [K] c_k
PRIORS = {"ctr": 0.2, "cvr": 0.03, "cart": 0.05}


def build(method: str, **params):
    return build_weighting(WeightingConfig(method, params), TASKS, PRIORS)


def leaf_losses(values) -> dict[str, Tensor]:
    """{task: [] float64 leaf} so that d total / d L_k can be read off .grad."""
    return {
        name: torch.tensor(float(v), dtype=torch.float64, requires_grad=True)
        for name, v in zip(NAMES, values)
    }


def grads_of_total(weighting, values, step: int = 0) -> tuple[np.ndarray, dict[str, float], Tensor]:
    """d total / d L_k (by autograd), the reported weights, and the total."""
    losses = leaf_losses(values)
    total, weights = weighting.combine(losses, step)
    total.backward()
    return np.array([losses[n].grad.item() for n in NAMES]), weights, total


def as_array(weights: dict[str, float]) -> np.ndarray:
    assert list(weights) == NAMES and all(isinstance(w, float) for w in weights.values())
    return np.array([weights[n] for n in NAMES])


# ---------------------------------------------------------------------------------- fixed, PLE


def test_fixed_weights_are_the_static_weights():
    grads, weights, total = grads_of_total(build("fixed"), [0.4, 0.1, 0.3])
    np.testing.assert_allclose(as_array(weights), [1.0, 0.5, 2.0])
    np.testing.assert_allclose(grads, [1.0, 0.5, 2.0])
    assert total.item() == pytest.approx(0.4 + 0.05 + 0.6)


def test_ple_schedule_is_w0_times_gamma_to_the_t():
    weighting = build("ple_schedule", gamma={"ctr": 0.9, "cart": 1.01}, period=10)
    for step in (0, 9, 10, 137):
        t = step // 10  # the step's unit of time
        expected = STATIC * np.array([0.9**t, 1.0, 1.01**t])
        grads, weights, _ = grads_of_total(weighting, [0.4, 0.1, 0.3], step)
        np.testing.assert_allclose(as_array(weights), expected, rtol=1e-12)
        np.testing.assert_allclose(grads, expected, rtol=1e-12)
    with pytest.raises(ConfigError, match=r"gamma for unknown tasks \['ctcvr'\]; tasks: ctr, cvr, cart"):
        build("ple_schedule", gamma={"ctcvr": 0.9})


# ------------------------------------------------------------------------------------ uncertainty


def _uncertainty_reference(log_vars, losses, factors, regularizer: str, floor: float = 0.0):
    """total and d total / d s by hand: sum_k c_k (a_k exp(-s_k) L_k + reg(s_k))."""
    s, loss, a = map(np.asarray, (log_vars, losses, factors))
    if regularizer == "log1p":
        reg, dreg = np.log1p(np.exp(s)), 1.0 / (1.0 + np.exp(-s))  # softplus and its derivative
    else:
        reg, dreg = 0.5 * np.maximum(s, floor), np.where(s > floor, 0.5, 0.0)
    total = float((STATIC * (a * np.exp(-s) * loss + reg)).sum())
    return total, STATIC * (-a * np.exp(-s) * loss + dreg)


@pytest.mark.parametrize("regularizer", ["log1p", "log"])
def test_uncertainty_total_and_gradient_match_the_hand_computed_values(regularizer):
    weighting = build("uncertainty", forms={"cart": "regression"}, regularizer=regularizer)
    log_vars = [0.3, -0.7, 1.2]  # cvr below the "log" floor 0: its regulariser is flat there
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor(log_vars))
    values = [0.4, 0.1, 2.5]
    grads, weights, total = grads_of_total(weighting, values)
    factors = [1.0, 1.0, 0.5]  # classification, classification, regression
    expected_total, expected_ds = _uncertainty_reference(log_vars, values, factors, regularizer)
    expected_weights = STATIC * np.array(factors) * np.exp(-np.array(log_vars))
    assert total.item() == pytest.approx(expected_total, rel=1e-6)
    np.testing.assert_allclose(weighting.log_vars.grad.numpy(), expected_ds, rtol=1e-5)
    np.testing.assert_allclose(as_array(weights), expected_weights, rtol=1e-6)
    np.testing.assert_allclose(grads, expected_weights, rtol=1e-6)  # weights = d total / d L_k
    assert [p.shape for p in weighting.parameters()] == [torch.Size([3])]
    assert set(weighting.state_dict()) == {"log_vars"}


@pytest.mark.parametrize("regularizer", ["log1p", "log"])
def test_uncertainty_total_stays_non_negative(regularizer):
    """The guard: for any s and any losses >= 0 (including 0 and tiny CVR-like losses) the total is
    >= 0, where Kendall's plain log sigma goes negative (checked by hand below)."""
    weighting = build("uncertainty", regularizer=regularizer, forms={"cvr": "regression"})
    for s in (-30.0, -5.0, -1.0, -0.1, 0.0, 0.5, 3.0, 20.0):
        with torch.no_grad():
            weighting.log_vars.fill_(s)
        for values in ([0.0, 0.0, 0.0], [1e-6, 0.01, 0.05], [0.7, 3.0, 1e-3]):
            total, _ = weighting.combine(leaf_losses(values), 0)
            assert total.item() >= 0.0, (s, values)
    # Unguarded Kendall at its optimum s = log(2 L): (1 + log(2 L)) / 2 < 0 for L = 0.05.
    assert (1 + math.log(2 * 0.05)) / 2 < 0


def test_uncertainty_log_floor_pushes_s_back_up():
    weighting = build("uncertainty", regularizer="log")
    with torch.no_grad():
        weighting.log_vars.fill_(-2.0)  # below the floor 0
    weighting.combine(leaf_losses([0.1, 0.1, 0.1]), 0)[0].backward()
    assert (weighting.log_vars.grad < 0).all()  # gradient descent raises s


# -------------------------------------------------------------------------------------------- DWA


def _dwa_reference(history: np.ndarray, window: int, temperature: float) -> np.ndarray:
    """Liu et al. eq. (7) on step windows: the weights for the step after `history` [t, K]."""
    if len(history) < 2 * window:
        return np.ones(history.shape[1])
    older, newer = history[-2 * window : -window].mean(0), history[-window:].mean(0)
    r = newer / older
    return history.shape[1] * np.exp(r / temperature) / np.exp(r / temperature).sum()


def test_dwa_weights_follow_the_loss_ratios_of_two_step_windows():
    sequence = np.array(
        [[0.9, 0.5, 1.0], [0.8, 0.5, 0.9], [0.6, 0.5, 0.9], [0.5, 0.4, 0.9], [0.3, 0.4, 0.8], [0.2, 0.1, 0.1]]
    )
    weighting = build("dwa", window=2, temperature=2.0)
    for step, values in enumerate(sequence):
        grads, weights, _ = grads_of_total(weighting, values, step)
        expected = STATIC * _dwa_reference(sequence[:step], window=2, temperature=2.0)
        np.testing.assert_allclose(as_array(weights), expected, rtol=1e-12)
        np.testing.assert_allclose(grads, expected, rtol=1e-12)
        if step < 4:
            np.testing.assert_array_equal(as_array(weights), STATIC)  # until two windows are full
    # Step 4 by hand: r = mean(steps 2, 3) / mean(steps 0, 1) = [0.55/0.85, 0.45/0.5, 0.9/0.95].
    r = np.array([0.55 / 0.85, 0.45 / 0.5, 0.9 / 0.95])
    step4 = 3 * np.exp(r / 2) / np.exp(r / 2).sum()
    weighting = build("dwa", window=2, temperature=2.0)
    for step in range(5):
        _, weights, _ = grads_of_total(weighting, sequence[step], step)
    np.testing.assert_allclose(as_array(weights), STATIC * step4, rtol=1e-12)
    assert step4[2] > step4[1] > step4[0]  # the slowest-falling loss (cart) gets the most weight


def test_dwa_state_dict_resumes_the_same_weights():
    sequence = np.random.default_rng(0).uniform(0.1, 1.0, size=(9, 3))
    first, resumed = build("dwa", window=2), build("dwa", window=2)
    for step in range(5):
        first.combine(leaf_losses(sequence[step]), step)
    resumed.load_state_dict(first.state_dict())
    for step in range(5, 9):
        assert (
            first.combine(leaf_losses(sequence[step]), step)[1]
            == resumed.combine(leaf_losses(sequence[step]), step)[1]
        )


# ---------------------------------------------------------------------------- loss normalisations


def test_initial_loss_divides_by_the_first_present_loss():
    weighting = build("initial_loss")
    _, weights, _ = grads_of_total(weighting, [0.8, 0.0, 0.5], 0)  # cvr: no row anywhere yet
    np.testing.assert_allclose(as_array(weights), STATIC * [1 / 0.8, 0.0, 1 / 0.5])
    grads, weights, total = grads_of_total(weighting, [0.4, 0.2, 0.25], 1)
    expected = STATIC * [1 / 0.8, 1 / 0.2, 1 / 0.5]  # cvr's L(0) is its first present loss
    np.testing.assert_allclose(as_array(weights), expected)
    np.testing.assert_allclose(grads, expected)
    assert total.item() == pytest.approx(0.5 * 1 + 0.5 * 1 + 2.0 * 0.5)
    resumed = build("initial_loss")
    resumed.load_state_dict(weighting.state_dict())
    np.testing.assert_allclose(as_array(resumed.combine(leaf_losses([1.0, 1.0, 1.0]), 2)[1]), expected)


def test_prior_loss_divides_by_the_entropy_of_the_label_prior():
    assert bernoulli_entropy(0.5) == pytest.approx(math.log(2))
    assert bernoulli_entropy(0.03) == pytest.approx(-(0.03 * math.log(0.03) + 0.97 * math.log(0.97)))
    grads, weights, _ = grads_of_total(build("prior_loss"), [0.5, 0.1, 0.2])
    entropy = np.array([-(p * math.log(p) + (1 - p) * math.log(1 - p)) for p in PRIORS.values()])
    np.testing.assert_allclose(as_array(weights), STATIC / entropy)
    np.testing.assert_allclose(grads, STATIC / entropy)
    overridden = build_weighting(WeightingConfig("prior_loss", {"priors": {"cvr": 0.5}}), TASKS, PRIORS)
    assert overridden.combine(leaf_losses([1, 1, 1]), 0)[1]["cvr"] == pytest.approx(0.5 / math.log(2))
    with pytest.raises(ConfigError, match=r"none for tasks \['cart'\]"):
        build_weighting(WeightingConfig("prior_loss"), TASKS, {"ctr": 0.1, "cvr": 0.1})
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        build_weighting(WeightingConfig("prior_loss"), TASKS, {**PRIORS, "ctr": 0.0})


def test_realtime_loss_gradient_is_one_over_the_loss():
    values = [0.4, 0.05, 0.0]  # cart absent this step: weight 0, not inf
    grads, weights, total = grads_of_total(build("realtime_loss"), values)
    expected = STATIC * np.array([1 / 0.4, 1 / 0.05, 0.0])
    np.testing.assert_allclose(grads, expected)
    np.testing.assert_allclose(as_array(weights), expected)
    assert total.item() == pytest.approx(1.0 + 0.5)  # c_k L_k / L_k over present tasks
    # = the gradient of sum_k c_k log L_k w.r.t. a parameter, through the losses
    theta = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    make = lambda: {"ctr": (theta**2).sum() + 0.1, "cvr": theta.exp().sum(), "cart": theta.sigmoid().prod()}
    build("realtime_loss").combine(make(), 0)[0].backward()
    reference = sum(c * loss.log() for c, loss in zip(STATIC, make().values()))
    np.testing.assert_allclose(theta.grad.numpy(), torch.autograd.grad(reference, theta)[0].numpy())


def _power_mean(values: Tensor, gamma: float) -> Tensor:
    """((1/K) sum L^gamma)^(1/gamma), or exp(mean log L) for gamma 0: the reference by autograd."""
    if gamma == 0.0:
        return values.log().mean().exp()
    return (values**gamma).mean() ** (1.0 / gamma)


@pytest.mark.parametrize("gamma", [-1.0, 0.0, 0.5, 1.0, 2.0])
def test_generalized_mean_weights_are_the_gradient_of_the_power_mean(gamma):
    values = [0.4, 0.1, 0.25]
    grads, weights, _ = grads_of_total(build("generalized_mean", gamma=gamma), values)
    leaf = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    expected = STATIC * torch.autograd.grad(_power_mean(leaf, gamma), leaf)[0].numpy()
    np.testing.assert_allclose(as_array(weights), expected, rtol=1e-12)
    np.testing.assert_allclose(grads, expected, rtol=1e-12)


def test_generalized_mean_special_cases():
    values = np.array([0.4, 0.1, 0.25])
    arithmetic = build("generalized_mean", gamma=1.0).combine(leaf_losses(values), 0)[1]
    np.testing.assert_allclose(as_array(arithmetic), STATIC / 3)  # d mean / d L_k = 1/K
    geometric = as_array(build("generalized_mean", gamma=0.0).combine(leaf_losses(values), 0)[1])
    g = np.prod(values) ** (1 / 3)  # 0.2154...
    np.testing.assert_allclose(geometric, STATIC * g / (3 * values), rtol=1e-12)
    near_zero = as_array(build("generalized_mean", gamma=1e-7).combine(leaf_losses(values), 0)[1])
    np.testing.assert_allclose(near_zero, geometric, rtol=1e-6)  # gamma -> 0 is the geometric mean
    # an absent task leaves the mean: geometric mean of the two present losses
    absent = as_array(build("generalized_mean", gamma=0.0).combine(leaf_losses([0.4, 0.1, 0.0]), 0)[1])
    np.testing.assert_allclose(absent, STATIC * [0.2 / (2 * 0.4), 0.2 / (2 * 0.1), 0.0], rtol=1e-12)


# -------------------------------------------------------------------------------------- config


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(
        ConfigError, match="unknown weighting method 'gradnom'; valid: fixed, ple_schedule"
    ) as e:
        method_config(WeightingConfig("gradnom"))
    assert all(name in str(e.value) for name in METHODS)


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("dwa", {"temperature": 0}, "temperature must be a finite number > 0"),
        ("dwa", {"window": 2.5}, "weighting.params.window: expected an integer"),
        ("dwa", {"temp": 2.0}, "unknown key 'temp' in weighting.params; valid keys: window, temperature"),
        ("ple_schedule", {"gamma": {"ctr": -1.0}}, "every gamma must be a finite number > 0"),
        ("uncertainty", {"form": "ordinal"}, "is not one of 'classification', 'regression'"),
        ("uncertainty", {"regularizer": "none"}, "is not one of 'log1p', 'log'"),
        ("generalized_mean", {"gamma": "geometric"}, "expected a number"),
        ("prior_loss", {"priors": {"ctr": 1.0}}, "strictly between 0 and 1"),
        ("realtime_loss", {"eps": 1e-8}, "'realtime_loss' takes no params, got 'eps'"),
    ],
)
def test_bad_params_are_config_errors(method, params, message):
    with pytest.raises(ConfigError, match=message):
        method_config(WeightingConfig(method, params))


def test_weighting_config_loads_from_yaml_data_and_builds_every_method():
    cfg = from_dict(WeightingConfig, {"method": "dwa", "params": {"window": 3}}, "weighting")
    assert method_config(cfg).window == 3
    assert from_dict(WeightingConfig, {}).method == "fixed"
    with pytest.raises(ConfigError, match="unknown key 'alpha' in weighting; valid keys: method, params"):
        from_dict(WeightingConfig, {"method": "dwa", "alpha": 1.5}, "weighting")
    with pytest.raises(ConfigError, match="forms for unknown tasks"):
        build("uncertainty", forms={"ctcvr": "regression"})
    for method in METHODS:
        weighting = build(method)
        if weighting.requires_shared:  # gradient methods (test_gradient_weighting): unused shared params
            weighting.attach_shared([torch.nn.Parameter(torch.zeros(2))])
        total, weights = weighting.combine(leaf_losses([0.4, 0.1, 0.3]), 0)
        assert total.ndim == 0 and list(weights) == NAMES
        with pytest.raises(KeyError, match="losses for"):
            weighting.combine(leaf_losses([0.4, 0.1, 0.3]) | {"extra": torch.tensor(1.0)}, 0)


# ---------------------------------------------------------------------------- 2 gloo ranks

STEPS = 20
DIM = 4
# Every registered method, with params that make it move within 20 steps; a few extra variants.
DISTRIBUTED_CASES = {
    "fixed": ("fixed", {}),
    "ple_schedule": ("ple_schedule", {"gamma": {"ctr": 0.9, "cart": 1.05}}),
    "uncertainty": ("uncertainty", {"forms": {"cart": "regression"}}),
    "uncertainty_log": ("uncertainty", {"regularizer": "log", "min_log_var": -3.0}),
    "dwa": ("dwa", {"window": 2, "temperature": 1.0}),
    "initial_loss": ("initial_loss", {}),
    "prior_loss": ("prior_loss", {}),
    "realtime_loss": ("realtime_loss", {}),
    "generalized_mean": ("generalized_mean", {"gamma": 0.5}),
    "geometric_mean": ("generalized_mean", {"gamma": 0.0}),
}


def _theta() -> Tensor:
    return torch.randn(len(NAMES), DIM, generator=torch.Generator().manual_seed(7))  # [K, D]


def rank_losses(theta: Tensor, rank: int, step: int) -> dict[str, Tensor]:
    """Rank `rank`'s share of each task loss at `step`: different data per rank and step. cvr has
    no row anywhere at step 0 (and on rank 0 at step 9): its share is 0 * (...), still in the graph."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    x = torch.randn(len(NAMES), 6 + 3 * rank, DIM, generator=generator)  # [K, N_r, D]
    per_row = torch.nn.functional.softplus(torch.einsum("knd,kd->kn", x, theta))  # [K, N_r]
    shares = per_row.sum(dim=1) / 30.0  # [K]: in-space sum / a global count
    absent = (step == 0) or (step == 9 and rank == 0)
    return {name: shares[k] * (0.0 if name == "cvr" and absent else 1.0) for k, name in enumerate(NAMES)}


def _run_method(method: str, params: dict, losses_at) -> dict[str, Tensor]:
    """20 steps of combine -> backward -> sync_gradients -> SGD on the weighting's parameters.

    losses_at(theta, step) -> {task: [] loss}: a rank's shares, or (reference) the global losses.
    Returns the weights [S, K], d total / d theta [S, K, D] (summed over ranks) and the parameters."""
    from mtl_rec.distributed import all_reduce_sum

    weighting = build(method, **params)
    learnable = list(weighting.parameters())
    optimizer = torch.optim.SGD(learnable, lr=0.5) if learnable else None
    theta = _theta().requires_grad_()
    weights, theta_grads, parameters = [], [], []
    for step in range(STEPS):
        total, step_weights = weighting.combine(losses_at(theta, step), step)
        theta.grad = None
        if optimizer:
            optimizer.zero_grad()
        total.backward()
        weighting.sync_gradients()
        if optimizer:
            optimizer.step()
        weights.append([step_weights[n] for n in NAMES])
        theta_grads.append(all_reduce_sum(theta.grad))  # as the DDP hook sums the dense gradients
        parameters.append(torch.cat([p.detach().reshape(-1) for p in learnable]) if learnable else None)
    return {
        "weights": torch.tensor(weights, dtype=torch.float64),  # [S, K]
        "theta_grads": torch.stack(theta_grads),  # [S, K, D]
        "parameters": torch.stack(parameters) if learnable else torch.zeros(STEPS, 1),  # [S, P]
    }


def _weights_worker(rank: int, out_dir) -> None:
    from mtl_rec.distributed import is_distributed

    assert is_distributed()
    results = {
        case: _run_method(method, params, lambda theta, step: rank_losses(theta, rank, step))
        for case, (method, params) in DISTRIBUTED_CASES.items()
    }
    torch.save(results, out_dir / f"rank{rank}.pt")


def _global_losses(theta: Tensor, step: int) -> dict[str, Tensor]:
    shares = [rank_losses(theta, rank, step) for rank in (0, 1)]
    return {name: shares[0][name] + shares[1][name] for name in NAMES}


@pytest.mark.distributed
def test_two_ranks_on_different_data_hold_identical_weights_at_every_step(tmp_path):
    loss_based = {name for name, (method_class, _) in METHODS.items() if not method_class.requires_shared}
    assert {method for method, _ in DISTRIBUTED_CASES.values()} == loss_based  # gradient methods: own file
    run_on_two_ranks(_weights_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    theta = _theta()
    assert not torch.allclose(rank_losses(theta, 0, 3)["ctr"], rank_losses(theta, 1, 3)["ctr"])
    for case, (method, params) in DISTRIBUTED_CASES.items():
        first, second = ranks[0][case], ranks[1][case]
        # identical on both ranks, at every step
        assert (first["weights"] - second["weights"]).abs().max() <= 1e-6, case
        assert all((first[key] - second[key]).abs().max() <= 1e-6 for key in ("parameters", "theta_grads")), (
            case
        )
        # and equal to one process that sees the global losses (weights, summed gradients, parameters)
        reference = _run_method(method, params, _global_losses)
        for key in ("weights", "theta_grads", "parameters"):
            torch.testing.assert_close(
                first[key].double(), reference[key].double(), rtol=1e-5, atol=1e-6, msg=f"{case}: {key}"
            )
        if method not in ("fixed", "prior_loss"):  # the dynamic methods did move
            assert first["weights"].std(dim=0).max() > 1e-3, case
    # uncertainty's log-variances were trained (not left at init) and stayed identical
    assert ranks[0]["uncertainty"]["parameters"][-1].abs().min() > 1e-3
