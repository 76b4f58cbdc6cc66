"""Gradient-based weighting: hand-computed references on tiny fixed gradients, one backward through
the embeddings per step, and 2 gloo ranks on different data holding identical weights and shared
gradients at every step."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import parse_tasks
from mtl_rec.weighting import METHODS, WeightingConfig, build_weighting
from mtl_rec.weighting.mgda import min_norm_frank_wolfe
from tests.harness import run_on_two_ranks

TWO = parse_tasks([{"name": "ctr", "label": "click"}, {"name": "cvr", "label": "conversion"}])
THREE = parse_tasks(
    [
        {"name": "ctr", "label": "click"},
        {"name": "cvr", "label": "conversion"},
        {"name": "cart", "label": "cart"},
    ]
)
GRADIENT_METHODS = ["grad_normalization", "gradnorm", "mgda", "pcgrad", "gradvac"]


def build(method: str, tasks=TWO, **params):
    return build_weighting(WeightingConfig(method, params), tasks)


def linear_losses(weighting, grads, values=None) -> tuple[dict[str, Tensor], nn.Parameter]:
    """L_k = g_k . theta + v_k at theta = 0, so d L_k / d theta = g_k exactly; theta attached as shared."""
    grads = torch.tensor(grads, dtype=torch.float64)  # [K, P]
    values = values if values is not None else [1.0] * len(grads)
    theta = nn.Parameter(torch.zeros(grads.shape[1], dtype=torch.float64))  # [P]
    weighting.attach_shared([theta])
    losses = {name: grads[k] @ theta + values[k] for k, name in enumerate(weighting.task_names)}
    return losses, theta


def step(weighting, grads, values=None, step_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """combine -> backward -> after_backward: (weights [K], theta.grad [P]). The weights are those of
    the shared gradient for surgery methods (after_backward's), the loss multipliers otherwise."""
    losses, theta = linear_losses(weighting, grads, values)
    total, weights = weighting.combine(losses, step_index)
    total.backward()
    weights = weighting.after_backward() or weights
    return np.array(list(weights.values())), theta.grad.numpy()


def test_gradient_methods_are_registered_and_need_the_shared_parameters():
    assert set(GRADIENT_METHODS) <= set(METHODS)
    for method in GRADIENT_METHODS:
        weighting = build(method)
        assert weighting.requires_shared
        with pytest.raises(RuntimeError, match="attach_shared"):
            weighting.combine({"ctr": torch.tensor(1.0, requires_grad=True), "cvr": torch.tensor(1.0)}, 0)


# ------------------------------------------------------------------------------------ surgery


def test_pcgrad_projects_two_conflicting_vectors():
    weighting = build("pcgrad")
    weights, grad = step(weighting, [[1.0, 0.0], [-1.0, 1.0]])
    # g1' = g1 - (g1.g2 / |g2|^2) g2 = (1, 0) + 0.5 (-1, 1);  g2' = g2 - (g2.g1 / |g1|^2) g1 = (0, 1)
    np.testing.assert_allclose(grad, [0.5 + 0.0, 0.5 + 1.0], atol=1e-12)
    np.testing.assert_allclose(weights, [1.0 + 1.0, 0.5 + 1.0])  # G = 2 g1 + 1.5 g2
    assert weighting.last_cosines == pytest.approx({"ctr|cvr": -1 / math.sqrt(2)})
    # no conflict: the plain sum
    _, grad = step(build("pcgrad"), [[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(grad, [2.0, 1.0], atol=1e-12)


def test_gradvac_raises_the_cosine_to_its_ema_target():
    weighting = build("gradvac", beta=0.1)
    weighting.targets.fill_(0.5)
    _, grad = step(weighting, [[1.0, 0.0], [0.0, 1.0]])  # cos 0 < 0.5 for both pairs
    # g1' = g1 + |g1| (0.5 sqrt(1 - 0) - 0) / (|g2| sqrt(1 - 0.25)) g2 = (1, 1/sqrt(3)): cos(g1', g2) = 0.5
    c = 0.5 / math.sqrt(0.75)
    np.testing.assert_allclose(grad, [1.0 + c, c + 1.0], atol=1e-12)
    assert c / math.hypot(1.0, c) == pytest.approx(0.5)
    # EMA of the cosine before the change: 0.9 * 0.5 + 0.1 * 0
    np.testing.assert_allclose(
        weighting.targets.numpy(), [[0.5, 0.45], [0.45, 0.5]], atol=1e-12
    )  # diagonal unused
    # above the target: unchanged
    _, grad = step(weighting, [[1.0, 0.0], [1.0, 1.0]], step_index=1)  # cos 0.707 > 0.45
    np.testing.assert_allclose(grad, [2.0, 1.0], atol=1e-12)


@pytest.mark.parametrize(
    ("method", "surgered"),
    [("pcgrad", [0.5, 1.5]), ("gradvac", [1.0 + 0.5 / math.sqrt(0.75), 0.5 / math.sqrt(0.75) + 1.0])],
)
def test_surgery_keeps_the_auxiliary_gradient_of_the_shared_parameters(method, surgered):
    """A backbone's auxiliary loss (SNR's L0 penalty, ESCM2's regulariser) reaches the shared parameters
    in the same backward as the task losses: surgery replaces only the task part of their gradient."""
    weighting = build(method)
    grads = [[1.0, 0.0], [-1.0, 1.0]] if method == "pcgrad" else [[1.0, 0.0], [0.0, 1.0]]
    aux_gradient = torch.tensor([0.25, -2.0], dtype=torch.float64)  # d aux / d theta, no task involved
    for t in range(2):  # the second step too: no task gradient is derived from a backward with aux
        if method == "gradvac":
            weighting.targets.fill_(0.5)
        losses, theta = linear_losses(weighting, grads)
        weighting.attach_shared([theta], auxiliary=True)
        total, _ = weighting.combine(losses, t)
        (total + aux_gradient @ theta).backward()
        weighting.after_backward()
        # the surgered task gradient of the cases above, plus the auxiliary gradient untouched
        expected = np.array(surgered) + aux_gradient.numpy()
        np.testing.assert_allclose(theta.grad.numpy(), expected, atol=1e-12)
        assert weighting.derived is None
        assert weighting.after_backward() is None  # applied once; a second call is a no-op
        np.testing.assert_allclose(theta.grad.numpy(), expected, atol=1e-12)


# --------------------------------------------------------------------------------- MGDA, PE-LTR


@pytest.mark.parametrize(
    ("g1", "g2"), [([1.0, 2.0], [3.0, -1.0]), ([1.0, 0.0], [2.0, 0.0]), ([0.5, 0.1], [-2.0, 0.3])]
)
@pytest.mark.parametrize("bounds", [{}, {"min_weight": 0.0}])  # PE-LTR's relaxed + projected solve too
def test_mgda_is_the_closed_form_min_norm_of_two_vectors(g1, g2, bounds):
    a, b = np.array(g1), np.array(g2)
    gamma = np.clip((b - a) @ b / ((a - b) @ (a - b)), 0.0, 1.0)  # weight of g1
    weights, grad = step(build("mgda", **bounds), [g1, g2])
    np.testing.assert_allclose(weights, 2 * np.array([gamma, 1 - gamma]), atol=1e-9)
    np.testing.assert_allclose(grad, 2 * (gamma * a + (1 - gamma) * b), atol=1e-9)  # the shared gradient


def test_mgda_frank_wolfe_finds_the_min_norm_point_of_three_vectors():
    grads = torch.tensor([[1.0, 0.0, 0.2], [0.0, 1.0, 0.1], [-0.6, -0.5, 1.0]], dtype=torch.float64)
    alpha = min_norm_frank_wolfe(grads @ grads.T, max_iter=5000)
    # brute force over a fine simplex grid
    grid = np.array([(i, j, 400 - i - j) for i in range(401) for j in range(401 - i)]) / 400.0
    norms = np.linalg.norm(grid @ grads.numpy(), axis=1)
    assert float((alpha @ grads).norm()) <= norms.min() + 1e-6
    assert float(alpha.sum()) == pytest.approx(1.0) and (alpha >= 0).all()


def test_pe_ltr_respects_the_weight_bounds():
    grads = [[1.0, 0.0], [0.9, 0.1], [-0.2, 1.0]]
    plain, _ = step(build("mgda", THREE), grads)
    assert plain.min() < 0.2 * 3  # plain MGDA gives some task less than the bound below
    weighting = build("mgda", THREE, min_weight=0.2, max_weight={"cart": 0.3})
    weights, _ = step(weighting, grads)
    alpha = weights / 3
    assert alpha.sum() == pytest.approx(1.0)
    assert (alpha >= 0.2 - 1e-9).all() and alpha[2] <= 0.3 + 1e-9 and (alpha <= 1 + 1e-9).all()
    with pytest.raises(ConfigError, match="bounds admit no weights with sum 1"):
        build("mgda", THREE, min_weight=0.5)
    with pytest.raises(ConfigError, match="unknown tasks"):
        build("mgda", THREE, max_weight={"ctcvr": 0.5})


# --------------------------------------------------------------------- gradient normalisation


def test_grad_normalization_gives_unit_norm_contributions():
    grads = np.array([[3.0, 4.0], [0.0, 0.5], [-1.0, 1.0]])
    weights, grad = step(build("grad_normalization", THREE), grads.tolist())
    norms = np.linalg.norm(grads, axis=1)
    np.testing.assert_allclose(weights * norms, [1.0, 1.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(grad, (grads / norms[:, None]).sum(axis=0), rtol=1e-12)


# ---------------------------------------------------------------------------------- GradNorm


def _gradnorm_reference(w, norms, losses, initial, alpha, lr):
    """One GradNorm update by hand (numpy)."""
    ratios = losses / initial
    r = ratios / ratios.mean()
    weighted = w * norms
    target = weighted.mean() * r**alpha
    w = np.maximum(w - lr * np.sign(weighted - target) * norms, 1e-6)
    return len(w) * w / w.sum()


def test_gradnorm_update_matches_numpy_and_renormalises_to_k():
    alpha, lr = 1.5, 0.1
    weighting = build("gradnorm", THREE, alpha=alpha, lr=lr)
    grads = np.array([[3.0, 4.0], [0.0, 0.5], [-1.0, 1.0]])
    norms = np.linalg.norm(grads, axis=1)
    losses = [np.array([0.7, 0.2, 0.4]), np.array([0.5, 0.19, 0.3]), np.array([0.4, 0.18, 0.35])]
    expected = np.ones(3)
    for t, values in enumerate(losses):
        weights, _ = step(weighting, grads.tolist(), values.tolist(), t)
        np.testing.assert_allclose(
            weights, expected, rtol=1e-12
        )  # this step uses the weights before its update
        expected = _gradnorm_reference(expected, norms, values, losses[0], alpha, lr)
        np.testing.assert_allclose(weighting.task_weights.numpy(), expected, rtol=1e-12)
        assert weighting.task_weights.sum().item() == pytest.approx(3.0)
    assert not np.allclose(expected, 1.0)
    assert set(weighting.state_dict()) == {"task_weights", "initial_losses"}


def test_gradnorm_measures_the_last_shared_layer():
    from mtl_rec.config.model import MLPConfig
    from mtl_rec.models import (
        CGC,
        PLE,
        CGCConfig,
        MMoE,
        MMoEConfig,
        OMoE,
        OMoEConfig,
        PLEConfig,
        SharedBottom,
        SharedBottomConfig,
    )

    bottom = SharedBottom(6, ["ctr", "cvr"], SharedBottomConfig(MLPConfig(hidden=(5, 4))))
    assert build("gradnorm").shared_parameters(bottom) == [bottom.bottom.layers[2].weight]
    mmoe = MMoE(6, ["ctr", "cvr"], MMoEConfig(num_experts=3, expert=MLPConfig(hidden=(5, 4))))
    last_layers = [expert.layers[2].weight for expert in mmoe.experts.experts]
    assert build("gradnorm").shared_parameters(mmoe) == last_layers
    assert all(p.shape == (4, 5) for p in last_layers)
    expert = MLPConfig(hidden=(5, 4))
    omoe = OMoE(6, ["ctr", "cvr"], OMoEConfig(num_experts=2, expert=expert))
    cgc = CGC(6, ["ctr", "cvr"], CGCConfig(shared_experts=2, expert=expert))
    ple = PLE(6, ["ctr", "cvr"], PLEConfig(num_levels=2, shared_experts=3, expert=expert))
    for backbone, shared_experts in [
        (omoe, omoe.experts),
        (cgc, cgc.layer.shared_experts),
        (ple, ple.levels[-1].shared_experts),  # the last level's: every task's mixture reads them
    ]:
        expected = [mlp.layers[2].weight for mlp in shared_experts.experts]
        assert build("gradnorm").shared_parameters(backbone) == expected
    assert build("pcgrad").shared_parameters(bottom) == list(bottom.parameters())


# --------------------------------------------------- K - 1 measured, one derived from the backward

SURGERY_METHODS = ["grad_normalization", "mgda", "pcgrad", "gradvac"]


@pytest.mark.parametrize("method", SURGERY_METHODS)
def test_the_derived_task_gradient_gives_the_same_steps_as_measuring_every_task(method):
    """After step 0 a surgery method measures K - 1 task gradients and derives the last from the
    backward's shared gradient; on a real MMoE that must reproduce, step by step, the run that
    measures all K (auxiliary=True), to float32 rounding."""
    from mtl_rec.config import from_dict
    from mtl_rec.config.model import ModelConfig
    from mtl_rec.losses import task_losses
    from mtl_rec.models.model import MultiTaskModel
    from tests.mtl_rec.models.test_model import THREE_TASKS, random_batch
    from tests.pipelines.tables import tiny_spec

    spec = tiny_spec()
    tasks = parse_tasks(THREE_TASKS, spec.labels)
    runs = {}
    for auxiliary in (False, True):
        torch.manual_seed(0)
        model = MultiTaskModel(spec, from_dict(ModelConfig, {"arch": "mmoe"}), tasks, device="cpu")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        weighting = build_weighting(WeightingConfig(method), tasks)
        weighting.attach_shared(weighting.shared_parameters(model.backbone), auxiliary=auxiliary)
        measured = []

        def counted(losses, which, measured=measured, measure=weighting.local_task_gradients):
            measured.append(len(which))
            return measure(losses, which)

        weighting.local_task_gradients = counted
        steps = []
        for t in range(4):
            batch = random_batch(spec, batch_size=64, seed=t)
            total, _ = weighting.combine(task_losses(model(batch), batch, tasks).losses, t)
            optimizer.zero_grad()
            total.backward()
            weights = weighting.after_backward()
            grads = torch.cat([p.grad.reshape(-1) for p in model.backbone.parameters() if p.grad is not None])
            steps.append((torch.tensor(list(weights.values())), grads.clone()))
            optimizer.step()
        runs[auxiliary] = steps
        assert measured == ([3, 3, 3, 3] if auxiliary else [3, 2, 2, 2])
    for (derived_weights, derived_grads), (exact_weights, exact_grads) in zip(runs[False], runs[True]):
        torch.testing.assert_close(derived_weights, exact_weights, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(derived_grads, exact_grads, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(runs[True][-1][0], runs[True][0][0])  # the weights moved: a real test


# ------------------------------------------------------------- one backward through the embeddings


class ToyModel(nn.Module):
    """EmbeddingBag -> shared Linear (the backbone) -> one Linear head per task."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.EmbeddingBag(10, 4, mode="sum")
        self.backbone = nn.Linear(4, 3)
        self.heads = nn.ModuleList([nn.Linear(3, 1) for _ in range(2)])

    def losses(self, ids: Tensor, offsets: Tensor, labels: Tensor) -> dict[str, Tensor]:
        hidden = torch.tanh(self.backbone(self.embedding(ids, offsets)))  # [B, 3]
        logits = [head(hidden).squeeze(1) for head in self.heads]  # 2 x [B]
        bce = nn.functional.binary_cross_entropy_with_logits
        return {name: bce(logits[k], labels[k]) for k, name in enumerate(("ctr", "cvr"))}


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_a_touched_embedding_row_is_updated_exactly_once_per_step(method):
    model, lr = ToyModel(), 0.5
    ids, offsets = torch.tensor([1, 3, 3, 7]), torch.tensor([0, 2])  # rows 1, 3, 7 touched
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # [K, B]: the two tasks disagree
    weighting = build(method)
    weighting.attach_shared(weighting.shared_parameters(model.backbone))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    backward_passes = []
    model.embedding.weight.register_hook(lambda grad: backward_passes.append(grad.clone()))
    for t in range(3):
        reference = copy.deepcopy(model)
        before = model.embedding.weight.detach().clone()
        total, weights = weighting.combine(model.losses(ids, offsets, labels), t)
        optimizer.zero_grad()
        total.backward()
        weighting.after_backward()
        optimizer.step()
        assert len(backward_passes) == t + 1  # autograd.grad on the backbone never reached the table
        # the update is -lr times the gradient of ONE backward of sum_k w_k L_k
        ref_losses = reference.losses(ids, offsets, labels)
        sum(weights[name] * ref_losses[name] for name in ref_losses).backward()
        expected = before - lr * reference.embedding.weight.grad
        torch.testing.assert_close(model.embedding.weight.detach(), expected, rtol=0, atol=1e-7)
        assert (model.embedding.weight.detach() != before).any(dim=1).tolist() == [
            row in (1, 3, 7) for row in range(10)
        ]


# --------------------------------------------------------------------------------- 2 gloo ranks

STEPS = 5
DISTRIBUTED_CASES = {
    "grad_normalization": {},
    "gradnorm": {"lr": 0.2},
    "mgda": {},
    "pe_ltr": {"min_weight": 0.2},
    "pcgrad": {},
    "gradvac": {"beta": 0.5},
}


def _gradient_worker(rank: int, out_dir) -> None:
    from mtl_rec.config import from_dict
    from mtl_rec.config.model import ModelConfig
    from mtl_rec.distributed import sum_gradients_hook
    from mtl_rec.losses import task_losses
    from mtl_rec.models.model import MultiTaskModel
    from tests.mtl_rec.models.test_model import THREE_TASKS, random_batch
    from tests.pipelines.tables import tiny_spec

    spec = tiny_spec()
    tasks = parse_tasks(THREE_TASKS, spec.labels)
    results = {}
    for case, params in DISTRIBUTED_CASES.items():
        method = "mgda" if case == "pe_ltr" else case
        torch.manual_seed(0)  # the same initial weights on both ranks
        model_cfg = from_dict(ModelConfig, {"arch": "mmoe", "dense_arch": {"hidden": [8]}})
        model = MultiTaskModel(spec, model_cfg, tasks, device="cpu")
        ddp = nn.parallel.DistributedDataParallel(model)
        ddp.register_comm_hook(None, sum_gradients_hook)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        weighting = build_weighting(WeightingConfig(method, params), tasks)
        weighting.attach_shared(weighting.shared_parameters(model.backbone))
        weights, grads, cosines = [], [], []
        for t in range(STEPS):
            batch = random_batch(spec, batch_size=16 + 8 * rank, seed=100 * rank + t)  # different data
            losses = task_losses(ddp(batch), batch, tasks).losses
            total, step_weights = weighting.combine(losses, t)
            optimizer.zero_grad()
            total.backward()
            step_weights = weighting.after_backward() or step_weights
            optimizer.step()
            weights.append(list(step_weights.values()))
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.backbone.parameters()]))
            cosines.append(list(weighting.last_cosines.values()))
        results[case] = {
            "weights": torch.tensor(weights, dtype=torch.float64),  # [S, K]
            "shared_grads": torch.stack(grads).double(),  # [S, P]
            "cosines": torch.tensor(cosines, dtype=torch.float64),  # [S, K(K-1)/2]
            "parameters": torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double(),
        }
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.mark.distributed
def test_two_ranks_on_different_data_hold_identical_weights_and_shared_gradients(tmp_path):
    run_on_two_ranks(_gradient_worker, tmp_path, timeout_s=120)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for case in DISTRIBUTED_CASES:
        first, second = ranks[0][case], ranks[1][case]
        for key in ("weights", "shared_grads", "cosines", "parameters"):
            assert (first[key] - second[key]).abs().max() <= 1e-6, (case, key)
        assert first["cosines"].shape == (STEPS, 3)
        if case == "pe_ltr":
            assert (first["weights"] / 3 >= 0.2 - 1e-9).all()
        if case in ("gradnorm", "grad_normalization", "mgda"):
            assert not torch.allclose(first["weights"][-1], first["weights"][0]), case  # they moved
