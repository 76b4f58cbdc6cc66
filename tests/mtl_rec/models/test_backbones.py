"""Backbones on their own: the registry contract, gates, and the per-architecture structure."""

import pytest
import torch

from mtl_rec.config import ConfigError, from_dict
from mtl_rec.config.model import ModelConfig, parse_tasks
from mtl_rec.models import MODELS, TaskHeads, arch_config, build_backbone
from mtl_rec.models.layers import Gate
from mtl_rec.models.omoe import OMoE
from mtl_rec.models.ple import PLE

TASKS = ("ctr", "cvr", "cart")
IN_DIM, BATCH = 24, 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_backbone_keeps_the_contract(arch):
    backbone = build_backbone(ModelConfig(arch=arch), IN_DIM, TASKS)  # each arch's default params
    out = backbone(torch.randn(BATCH, IN_DIM))
    assert list(out) == list(TASKS)
    assert set(backbone.output_dims) == set(TASKS)
    for task, features in out.items():
        assert features.shape == (BATCH, backbone.output_dims[task])
        assert torch.isfinite(features).all()


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_backbone_parameter_gets_a_gradient(arch):
    backbone = build_backbone(ModelConfig(arch=arch), IN_DIM, TASKS)
    out = backbone(torch.randn(BATCH, IN_DIM))
    sum(features.pow(2).sum() for features in out.values()).backward()
    for name, param in backbone.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{arch}: no gradient reaches {name}"


def test_mmoe_has_one_gate_per_task_each_summing_to_one():
    backbone = build_backbone(ModelConfig(arch="mmoe", params={"num_experts": 3}), IN_DIM, TASKS)
    assert list(backbone.gates) == list(TASKS)
    x = torch.randn(BATCH, IN_DIM)
    weights = {task: backbone.gates[task](x) for task in TASKS}
    for w in weights.values():
        assert w.shape == (BATCH, 3) and (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(BATCH))
    assert not torch.allclose(weights["ctr"], weights["cvr"])  # separate gates, separate mixtures
    expected = torch.einsum("be,beh->bh", weights["cvr"], backbone.experts(x))
    torch.testing.assert_close(backbone(x)["cvr"], expected)


def test_omoe_shares_one_gate_so_tasks_differ_only_by_tower():
    backbone = build_backbone(ModelConfig(arch="omoe", params={"num_experts": 3}), IN_DIM, TASKS)
    assert isinstance(backbone, OMoE)
    assert sum(isinstance(m, Gate) for m in backbone.modules()) == 1
    out = backbone(torch.randn(BATCH, IN_DIM))
    assert torch.equal(out["ctr"], out["cvr"]) and torch.equal(out["ctr"], out["cart"])
    heads = TaskHeads(backbone.output_dims, parse_tasks([{"name": t, "label": t} for t in TASKS]))
    heads.towers["cvr"].load_state_dict(heads.towers["ctr"].state_dict())
    logits = heads(out).logit
    torch.testing.assert_close(logits["ctr"], logits["cvr"])  # same tower weights -> same prediction
    assert not torch.allclose(logits["ctr"], logits["cart"])


def test_ple_with_per_task_expert_counts_and_two_levels():
    params = {
        "num_levels": 2,
        "shared_experts": 2,
        "specific_experts": {"ctr": 3, "cvr": 1, "cart": 2},
        "expert": {"hidden": [16, 8]},
    }
    backbone = build_backbone(ModelConfig(arch="ple", params=params), IN_DIM, TASKS)
    assert isinstance(backbone, PLE) and len(backbone.levels) == 2
    inner, top = backbone.levels
    assert inner.shared_gate is not None and top.shared_gate is None  # only inner levels feed shared experts
    assert inner.shared_gate.logits.out_features == 3 + 1 + 2 + 2  # every expert of the level
    for task, count in params["specific_experts"].items():
        assert inner.specific_experts[task].num_experts == count
        assert top.task_gates[task].logits.out_features == count + 2  # own + shared
    assert top.shared_experts.experts[0].layers[0].in_features == 8  # level 2 reads level 1's outputs
    out = backbone(torch.randn(BATCH, IN_DIM))
    assert {task: h.shape for task, h in out.items()} == {task: (BATCH, 8) for task in TASKS}
    sum(h.sum() for h in out.values()).backward()
    assert inner.shared_gate.logits.weight.grad.abs().sum() > 0


def test_unknown_arch_and_params_list_the_valid_choices():
    with pytest.raises(
        ConfigError, match="unknown model arch 'mmmoe'; registered: shared_bottom, omoe, mmoe, cgc, ple"
    ):
        arch_config(from_dict(ModelConfig, {"arch": "mmmoe"}))
    with pytest.raises(
        ConfigError, match="unknown key 'experts' in model.params; valid keys: num_experts, expert"
    ):
        arch_config(from_dict(ModelConfig, {"arch": "mmoe", "params": {"experts": 4}}))
    with pytest.raises(ConfigError, match=r"model.params.expert.hidden\[0\]: expected an integer"):
        arch_config(from_dict(ModelConfig, {"arch": "mmoe", "params": {"expert": {"hidden": ["wide"]}}}))
    with pytest.raises(ConfigError, match="num_experts must be >= 1"):
        arch_config(from_dict(ModelConfig, {"arch": "omoe", "params": {"num_experts": 0}}))
    cfg = from_dict(ModelConfig, {"arch": "cgc", "params": {"specific_experts": {"ctr": 2, "nope": 1}}})
    with pytest.raises(ConfigError, match=r"count for each task \(ctr, cvr, cart\).*unknown: \['nope'\]"):
        build_backbone(cfg, IN_DIM, TASKS)
