"""Asymmetric sharing: B reads A's representation, detached; gradients never cross against the arrow."""

import pytest
import torch

from mtl_rec.config import ConfigError, from_dict
from mtl_rec.config.model import ModelConfig
from mtl_rec.models import arch_config, build_backbone
from mtl_rec.models.asymmetric import Asymmetric

TASKS = ("ctr", "cvr", "cart")
IN_DIM, BATCH, H = 12, 16, 8


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def asymmetric(reads=None) -> Asymmetric:
    params = {"column": {"hidden": [16, H]}, **({"reads": reads} if reads is not None else {})}
    return build_backbone(ModelConfig(arch="asymmetric", params=params), IN_DIM, TASKS)


def untouched(module: torch.nn.Module) -> bool:
    return all(p.grad is None or torch.equal(p.grad, torch.zeros_like(p)) for p in module.parameters())


def trained(module: torch.nn.Module) -> bool:
    return all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_default_reads_the_first_task_and_shapes():
    backbone = asymmetric()
    assert backbone.reads == {"ctr": (), "cvr": ("ctr",), "cart": ("ctr",)}
    assert backbone.output_dims == {"ctr": H, "cvr": 2 * H, "cart": 2 * H}
    x = torch.randn(BATCH, IN_DIM)
    out = backbone(x)
    assert {task: h.shape for task, h in out.items()} == {
        "ctr": (BATCH, H),
        "cvr": (BATCH, 2 * H),
        "cart": (BATCH, 2 * H),
    }
    own = {task: backbone.columns[task](x) for task in TASKS}
    torch.testing.assert_close(out["cvr"], torch.cat([own["cvr"], own["ctr"]], dim=1))


def test_explicit_reads_chain_in_config_order():
    backbone = asymmetric({"cart": ["ctr", "cvr"], "cvr": ["ctr"]})
    assert backbone.output_dims == {"ctr": H, "cvr": 2 * H, "cart": 3 * H}
    x = torch.randn(BATCH, IN_DIM)
    out = backbone(x)
    torch.testing.assert_close(out["cart"][:, 2 * H :], backbone.columns["cvr"](x))  # own | ctr | cvr


def test_every_parameter_gets_a_gradient_from_the_summed_losses():
    backbone = asymmetric()
    sum(h.square().sum() for h in backbone(torch.randn(BATCH, IN_DIM)).values()).backward()
    assert trained(backbone)


def test_the_reader_loss_stops_at_the_source_representation():
    backbone = asymmetric()
    backbone(torch.randn(BATCH, IN_DIM))["cvr"].square().sum().backward()
    assert trained(backbone.columns["cvr"])
    assert untouched(backbone.columns["ctr"])  # detached: cvr uses ctr's features but cannot move them
    assert untouched(backbone.columns["cart"])


def test_the_source_loss_never_reaches_the_reader():
    backbone = asymmetric()
    backbone(torch.randn(BATCH, IN_DIM))["ctr"].square().sum().backward()
    assert trained(backbone.columns["ctr"])
    assert untouched(backbone.columns["cvr"]) and untouched(backbone.columns["cart"])


def test_the_reader_output_follows_the_source_representation():
    backbone = asymmetric()
    x = torch.randn(BATCH, IN_DIM)
    before = backbone(x)
    with torch.no_grad():
        for param in backbone.columns["ctr"].parameters():
            param.add_(0.5 * torch.randn_like(param))  # A's representation changes ...
    after = backbone(x)
    assert not torch.allclose(after["cvr"][:, H:], before["cvr"][:, H:])  # ... and B sees the change
    torch.testing.assert_close(after["cvr"][:, :H], before["cvr"][:, :H])  # its own column is the same
    with torch.no_grad():
        for param in backbone.columns["cvr"].parameters():
            param.add_(0.5 * torch.randn_like(param))
    torch.testing.assert_close(backbone(x)["ctr"], after["ctr"])  # B's column never feeds A


def test_reads_must_name_tasks_and_go_one_way():
    with pytest.raises(ConfigError, match=r"unknown tasks \['nope'\]; tasks: ctr, cvr, cart"):
        asymmetric({"cvr": ["nope"]})
    with pytest.raises(ConfigError, match="cycle .ctr -> cvr -> ctr.: sharing must go one way"):
        asymmetric({"ctr": ["cvr"], "cvr": ["ctr"]})
    with pytest.raises(ConfigError, match="cycle"):
        asymmetric({"cart": ["cart"]})
    with pytest.raises(ConfigError, match=r"model.params.reads.cvr: expected a list"):
        arch_config(from_dict(ModelConfig, {"arch": "asymmetric", "params": {"reads": {"cvr": "ctr"}}}))
