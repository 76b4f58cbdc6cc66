"""Masked task losses: hand-computed values, empty spaces, and 2 gloo ranks == 1 process (gradients)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pytest
import torch
from torch import Tensor, nn

from mtl_rec.batch import Batch
from mtl_rec.config.model import MLPConfig, parse_tasks
from mtl_rec.config.spaces import SampleSpace, space_key
from mtl_rec.distributed import sum_gradients_hook
from mtl_rec.losses import row_bce, task_losses, weighted_sum
from mtl_rec.models.heads import TaskHeads, TaskOutputs, entire_space
from mtl_rec.models.layers import MLP
from tests.harness import run_on_two_ranks

# ---------------------------------------------------------------- helpers (test_metrics imports them)


def make_batch(
    labels: Mapping[str, Tensor], spaces: Iterable[str], meta: Mapping[str, Tensor] | None = None
) -> Batch:
    """A Batch with the given [B] labels, a mask per space (computed as the pipeline does) and a
    one-key placeholder KJT: losses and metrics read only labels, masks and meta."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    size = len(next(iter(labels.values())))
    as_numpy = {name: values.numpy() for name, values in labels.items()}
    masks = {space_key(s): torch.from_numpy(SampleSpace.parse(s).mask(as_numpy)) for s in spaces}
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=["unused"],
        values=torch.zeros(size, dtype=torch.int64),
        lengths=torch.ones(size, dtype=torch.int32),
    )
    return Batch(
        sparse=sparse,
        dense=torch.zeros(size, 1),
        labels={name: values.float() for name, values in labels.items()},
        masks=masks,
        ids=torch.arange(size),
        meta=dict(meta or {}),
    )


def outputs_from_logits(logits: Mapping[str, Tensor], parent_of: Mapping[str, str | None]) -> TaskOutputs:
    """TaskOutputs from raw [B] logits, chains composed as TaskHeads does."""
    log_p, log_1mp = entire_space(logits, parent_of)
    return TaskOutputs(logit=dict(logits), log_p=log_p, log_1mp=log_1mp)


# ---------------------------------------------------------------- unit tests

TASKS = parse_tasks(
    [
        {"name": "ctr", "label": "click", "tower": {"hidden": [4]}},
        {"name": "ctcvr", "label": "conversion", "parent": "ctr", "tower": {"hidden": [4]}, "weight": 0.7},
        {"name": "cart", "label": "cart", "space": "click == 1", "tower": {"hidden": [4]}, "weight": 0.3},
    ]
)
SPACES = ("all", "click == 1")
WEIGHTS = {task.name: task.weight for task in TASKS}


def test_row_bce_equals_torch_bce_with_logits():
    logits, labels = torch.randn(50, dtype=torch.float64), torch.randint(0, 2, (50,)).double()
    outputs = outputs_from_logits({"ctr": logits}, {"ctr": None})
    expected = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    torch.testing.assert_close(row_bce(outputs.log_p["ctr"], outputs.log_1mp["ctr"], labels), expected)


def test_masked_loss_equals_hand_computed_value():
    # 4 rows, 2 clicked; ctr over all 4 rows, cart over the 2 clicked rows only.
    labels = {"click": torch.tensor([1, 0, 1, 0]), "cart": torch.tensor([1, 1, 0, 1])}  # rows 1, 3 off-space
    batch = make_batch(labels, SPACES)
    ctr_logits = torch.tensor([math.log(3.0), 0.0, -math.log(3.0), math.log(4.0)], requires_grad=True)
    cart_logits = torch.tensor([0.0, 50.0, math.log(9.0), -50.0], requires_grad=True)
    outputs = outputs_from_logits({"ctr": ctr_logits, "cart": cart_logits}, {"ctr": None, "cart": None})
    tasks = parse_tasks(
        [{"name": "ctr", "label": "click"}, {"name": "cart", "label": "cart", "space": "click == 1"}]
    )
    result = task_losses(outputs, batch, tasks)
    # p(click) = 3/4, 1/2, 1/4, 4/5 with labels 1, 0, 1, 0
    ctr = -(math.log(3 / 4) + math.log(1 / 2) + math.log(1 / 4) + math.log(1 / 5)) / 4
    # clicked rows 0 and 2: p(cart) = 1/2 (label 1), 9/10 (label 0); rows 1, 3 (extreme logits) ignored
    cart = -(math.log(1 / 2) + math.log(1 / 10)) / 2
    assert result.counts == {"ctr": 4.0, "cart": 2.0}
    assert result.losses["ctr"].item() == pytest.approx(ctr, rel=1e-6)
    assert result.losses["cart"].item() == pytest.approx(cart, rel=1e-6)
    assert weighted_sum(result.losses, {"ctr": 2.0, "cart": 0.5}).item() == pytest.approx(2 * ctr + cart / 2)
    weighted_sum(result.losses, {"ctr": 1.0, "cart": 1.0}).backward()
    assert cart_logits.grad[[1, 3]].tolist() == [0.0, 0.0]  # off-space rows get no gradient
    assert cart_logits.grad[0].item() == pytest.approx(-(1 - 0.5) / 2)  # (p - y) / N


def _tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return TinyMultiTask(TASKS).to(dtype)


class TinyMultiTask(nn.Module):
    """[B, 5] dense -> shared MLP -> TaskHeads (ctr, ctcvr = ctr x cvr, cart): a plain dense MTL model."""

    def __init__(self, tasks, in_dim: int = 5) -> None:
        super().__init__()
        self.bottom = MLP(in_dim, MLPConfig(hidden=(8,)))
        self.heads = TaskHeads({task.name: self.bottom.output_dim for task in tasks}, tasks)

    def forward(self, dense: Tensor) -> TaskOutputs:
        shared = self.bottom(dense)  # [B, 5] -> [B, 8]
        return self.heads({name: shared for name in self.heads.task_names})


def test_empty_space_gives_zero_loss_and_finite_gradients():
    labels = {"click": torch.zeros(6), "cart": torch.zeros(6), "conversion": torch.zeros(6)}
    model = _tiny_model()
    result = task_losses(model(torch.randn(6, 5, dtype=torch.float64)), make_batch(labels, SPACES), TASKS)
    assert result.counts["cart"] == 0.0
    assert result.losses["cart"].item() == 0.0 and result.losses["cart"].requires_grad
    weighted_sum(result.losses, WEIGHTS).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert all(p.grad.abs().sum() == 0 for p in model.heads.towers["cart"].parameters())


def test_missing_mask_and_missing_weight_are_clear_errors():
    batch = make_batch({"click": torch.ones(2), "cart": torch.ones(2), "conversion": torch.ones(2)}, ["all"])
    outputs = _tiny_model()(torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(KeyError, match="no mask for sample space 'click == 1'"):
        task_losses(outputs, batch, TASKS)
    with pytest.raises(KeyError, match="no weight for tasks"):
        weighted_sum({"ctr": torch.tensor(1.0)}, {"cvr": 1.0})


# ---------------------------------------------------------------- 2 gloo ranks == 1 process

RANK_ROWS = ((0, 7), (7, 20))  # uneven: 7 and 13 rows


def funnel_labels(rows: int = 20, seed: int = 0) -> dict[str, Tensor]:
    """click -> cart -> conversion labels (each implies the one before), clicks only in rows >= 7,
    so rank 0 holds no row of the `click == 1` space."""
    generator = torch.Generator().manual_seed(seed)
    click = (torch.rand(rows, generator=generator) < 0.6) & (torch.arange(rows) >= 7)  # [B]
    cart = click & (torch.rand(rows, generator=generator) < 0.6)  # [B]
    conversion = cart & (torch.rand(rows, generator=generator) < 0.6)  # [B]
    return {"click": click.float(), "cart": cart.float(), "conversion": conversion.float()}


def _dense_input(rows: int = 20) -> Tensor:
    return torch.randn(rows, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # [B, 5]


def _gradients_of_one_process() -> dict[str, Tensor]:
    model = _tiny_model()
    losses = task_losses(model(_dense_input()), make_batch(funnel_labels(), SPACES), TASKS)
    weighted_sum(losses.losses, WEIGHTS).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _ddp_gradients_worker(rank: int, expected: dict[str, Tensor]) -> None:
    start, end = RANK_ROWS[rank]
    labels = {name: values[start:end] for name, values in funnel_labels().items()}
    model = nn.parallel.DistributedDataParallel(_tiny_model())
    model.register_comm_hook(None, sum_gradients_hook)
    losses = task_losses(model(_dense_input()[start:end]), make_batch(labels, SPACES), TASKS)
    assert losses.counts["cart"] == float(funnel_labels()["click"].sum())  # global, on both ranks
    weighted_sum(losses.losses, WEIGHTS).backward()
    for name, parameter in model.module.named_parameters():
        torch.testing.assert_close(
            parameter.grad, expected[name], rtol=0, atol=1e-6, msg=f"rank {rank}: {name}"
        )


@pytest.mark.distributed
def test_two_uneven_ranks_give_the_gradient_of_one_process():
    labels = funnel_labels()
    assert labels["click"][:7].sum() == 0 and labels["cart"].sum() > 0  # rank 0: no cart rows
    expected = _gradients_of_one_process()
    assert all(g.abs().sum() > 0 for g in expected.values())
    run_on_two_ranks(_ddp_gradients_worker, expected)
