"""Cross-Stitch: per-task columns, the stitch matrices that mix them, and column independence at alpha = I."""

import pytest
import torch

from mtl_rec.config import ConfigError, from_dict
from mtl_rec.config.model import ModelConfig
from mtl_rec.models import arch_config, build_backbone
from mtl_rec.models.cross_stitch import CrossStitch, stitch_init

TASKS = ("ctr", "cvr", "cart")
IN_DIM, BATCH = 12, 16
PARAMS = {"column": {"hidden": [16, 8]}}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def cross_stitch(params=PARAMS, tasks=TASKS) -> CrossStitch:
    return build_backbone(ModelConfig(arch="cross_stitch", params=params), IN_DIM, tasks)


def column_parameters(backbone: CrossStitch, task: str) -> list[torch.nn.Parameter]:
    return [p for layer in backbone.layers for p in layer[task].parameters()]


def test_shapes_and_initial_stitches():
    backbone = cross_stitch()
    out = backbone(torch.randn(BATCH, IN_DIM))
    assert {task: h.shape for task, h in out.items()} == {task: (BATCH, 8) for task in TASKS}
    assert backbone.output_dims == {task: 8 for task in TASKS}
    assert len(backbone.layers) == len(backbone.stitches) == 2
    expected = torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    for stitch in backbone.stitches:
        torch.testing.assert_close(stitch.data, expected)
    torch.testing.assert_close(stitch_init(2, 0.9), torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    assert stitch_init(1, 0.9).tolist() == [[1.0]]  # one task: the stitch passes the column through


def test_every_parameter_gets_a_gradient():
    backbone = cross_stitch()
    sum(h.square().sum() for h in backbone(torch.randn(BATCH, IN_DIM)).values()).backward()
    for name, param in backbone.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_stitch_mixes_the_columns_after_each_layer():
    backbone = cross_stitch({"column": {"hidden": [8]}})  # one layer, one stitch
    with torch.no_grad():
        backbone.stitches[0].copy_(torch.randn(3, 3))
    x = torch.randn(BATCH, IN_DIM)
    columns = torch.stack([backbone.layers[0][task](x) for task in TASKS])  # [T, B, H]
    out = backbone(x)
    for t, task in enumerate(TASKS):
        expected = sum(backbone.stitches[0][t, s] * columns[s] for s in range(3))  # sum_s alpha[t, s] h_s
        torch.testing.assert_close(out[task], expected)


def test_identity_stitches_make_the_tasks_independent():
    backbone = cross_stitch()
    with torch.no_grad():
        for stitch in backbone.stitches:
            stitch.copy_(torch.eye(3))
    x = torch.randn(BATCH, IN_DIM)
    out = backbone(x)
    # each task's output is its own column alone ...
    for task in TASKS:
        torch.testing.assert_close(out[task], backbone.layers[1][task](backbone.layers[0][task](x)))
    # ... so ctr's loss leaves the other columns exactly untouched, and trains its own
    out["ctr"].square().sum().backward()
    for task in ("cvr", "cart"):
        for param in column_parameters(backbone, task):
            assert param.grad is None or torch.equal(param.grad, torch.zeros_like(param)), task
    assert all(p.grad.abs().sum() > 0 for p in column_parameters(backbone, "ctr"))


def test_learned_stitches_share_between_the_columns():
    """The contrast to the identity case: with the initial 0.9 / 0.05 stitches ctr's loss reaches cvr."""
    backbone = cross_stitch()
    backbone(torch.randn(BATCH, IN_DIM))["ctr"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in column_parameters(backbone, "cvr"))


def test_config_errors():
    with pytest.raises(ConfigError, match="at least one column layer"):
        arch_config(from_dict(ModelConfig, {"arch": "cross_stitch", "params": {"column": {"hidden": []}}}))
    with pytest.raises(ConfigError, match=r"stitch_self_init must be in \[0, 1\], got 1.5"):
        arch_config(from_dict(ModelConfig, {"arch": "cross_stitch", "params": {"stitch_self_init": 1.5}}))
