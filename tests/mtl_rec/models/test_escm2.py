"""ESCM2: the IPS and DR risks against their formulas on hand examples, where they carry no gradient,
composition with any inner backbone, and 2 sharded gloo ranks == 1 rank with the regulariser on.

Also home of the 2-rank check test_snr and test_aitm reuse (`trainer_step_on_two_ranks`,
`assert_ranks_equal_one_rank`): the trainer's step (task losses, weighting, auxiliary terms, one
backward, after_backward) on the real sharded stack over 2 uneven ranks (all clicks on rank 0)
against the unsharded model on the whole batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor

from mtl_rec.batch import Batch
from mtl_rec.config import ConfigError, from_dict
from mtl_rec.config.model import ModelConfig, parse_tasks
from mtl_rec.config.run import RunConfig
from mtl_rec.losses import auxiliary_losses, task_losses
from mtl_rec.models import TaskHeads, arch_config, build_backbone
from mtl_rec.models.escm2 import counterfactual_terms
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.step import TrainPipeline
from mtl_rec.weighting import METHODS, build_weighting
from tests.harness import run_on_ranks
from tests.mtl_rec.models.test_model import random_batch
from tests.pipelines.tables import tiny_spec

ESMM_TASKS = [
    {"name": "ctr", "label": "click", "tower": {"hidden": [8]}},
    {
        "name": "ctcvr",
        "label": "conversion",
        "parent": "ctr",
        "tower": {"hidden": [8]},
        "conditional_name": "cvr",
    },
]
IN_DIM, BATCH = 12, 16
SMALL_DR = {
    "arch": "escm2",
    "params": {
        "backbone": "mmoe",
        "backbone_params": {"num_experts": 2, "expert": {"hidden": [8]}},
        "form": "dr",
        "ctr_task": "ctr",
        "cvr_task": "ctcvr",
        "weight": 0.5,
        "imputation": {"hidden": [4]},
    },
    "dense_arch": {"hidden": [4]},
}


def label_batch(click: list[float], conversion: list[float]) -> Batch:
    """A batch carrying only labels and the "all" / "click == 1" masks (what the aux terms read)."""
    n = len(click)
    return Batch(
        sparse=KeyedJaggedTensor.from_lengths_sync(
            keys=["user_id"],
            values=torch.zeros(n, dtype=torch.int64),
            lengths=torch.ones(n, dtype=torch.int32),
        ),
        dense=torch.zeros(n, 0),
        labels={"click": torch.tensor(click), "conversion": torch.tensor(conversion)},
        masks={"all": torch.ones(n, dtype=torch.bool), "click == 1": torch.tensor(click) > 0},
        ids=torch.arange(n),
    )


def small_escm2(form: str = "ips", backbone: str = "mmoe", **params) -> MultiTaskModel:
    torch.manual_seed(0)
    model_params = {"backbone": backbone, "form": form, "ctr_task": "ctr", "cvr_task": "ctcvr", **params}
    model_cfg = from_dict(
        ModelConfig, {"arch": "escm2", "params": model_params, "dense_arch": {"hidden": [8]}}
    )
    spec = tiny_spec()
    return MultiTaskModel(spec, model_cfg, parse_tasks(ESMM_TASKS, spec.labels), device="cpu")


# ---------------------------------------------------------------------------- shapes, gradients


@pytest.mark.parametrize("backbone", ["mmoe", "ple", "snr", "aitm"])
def test_output_is_the_inner_backbone_s_and_every_parameter_gets_a_gradient(backbone):
    model = small_escm2("dr", backbone)
    assert model.backbone.output_dims == model.backbone.backbone.output_dims  # the inner backbone's
    batch = random_batch(tiny_spec())
    outputs = model(batch)
    for field in (outputs.logit, outputs.log_p, outputs.log_1mp):
        assert {task: tuple(t.shape) for task, t in field.items()} == {"ctr": (32,), "ctcvr": (32,)}
    inner_terms = {"snr": {"snr_l0"}, "aitm": {"aitm_calibrator"}}.get(backbone, set())
    assert set(outputs.aux) == {"escm2_dr", "escm2_imputation", *inner_terms}  # the inner terms are kept
    assert set(model.auxiliary_spaces()) == set(outputs.aux) - {"snr_l0"}  # per-row terms, all over "all"
    losses = task_losses(outputs, batch, model_tasks()).losses
    aux = auxiliary_losses(outputs.aux, model.auxiliary_spaces(), batch)
    (sum(losses.values()) + sum(aux.values())).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, (
            f"{backbone}: no gradient reaches {name}"
        )
    assert any(name.startswith("backbone.imputation.") for name, _ in model.named_parameters())


def model_tasks():
    return parse_tasks(ESMM_TASKS, tiny_spec().labels)


def test_ips_has_no_extra_parameters_and_defaults_to_the_first_two_tasks():
    backbone = build_backbone(ModelConfig(arch="escm2"), IN_DIM, ["click", "cart", "conversion"])
    inner = build_backbone(ModelConfig(arch="mmoe"), IN_DIM, ["click", "cart", "conversion"])
    assert (backbone.ctr_task, backbone.cvr_task) == ("click", "cart")
    assert backbone.imputation is None
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in inner.parameters())


# ------------------------------------------------------------------------------ the risks themselves


def reference_terms(cvr_logit, ctr_logit, click, conversion, clip, imputed=None):
    """numpy, probability space: e = BCE(r, sigmoid(l)), o_hat = max(sigmoid(ctr), clip)."""
    cvr = 1 / (1 + np.exp(-np.asarray(cvr_logit, dtype=np.float64)))
    propensity = np.maximum(1 / (1 + np.exp(-np.asarray(ctr_logit, dtype=np.float64))), clip)
    o, r = np.asarray(click, dtype=np.float64), np.asarray(conversion, dtype=np.float64)
    e = -(r * np.log(cvr) + (1 - r) * np.log(1 - cvr))
    if imputed is None:
        return {"ips": o * e / propensity}
    imputed = np.asarray(imputed, dtype=np.float64)
    return {"dr": imputed + o * (e - imputed) / propensity, "imputation": o * (e - imputed) ** 2 / propensity}


CVR_LOGITS = [0.3, -1.2, 2.0, 0.0, -0.4]
CTR_LOGITS = [0.5, -6.0, -1.0, 1.5, -0.2]  # sigmoid(-6) = 0.0025 < the clip 0.01
CLICK = [1.0, 1.0, 0.0, 1.0, 0.0]
CONVERSION = [1.0, 0.0, 0.0, 1.0, 0.0]
IMPUTED = [0.2, 0.9, 0.4, 0.05, 1.3]


def test_ips_and_dr_match_their_formulas_on_a_hand_example():
    args = (torch.tensor(CVR_LOGITS), torch.nn.functional.logsigmoid(torch.tensor(CTR_LOGITS)))
    labels = (torch.tensor(CLICK), torch.tensor(CONVERSION))
    ips = counterfactual_terms(*args, *labels, 0.01)
    expected = reference_terms(CVR_LOGITS, CTR_LOGITS, CLICK, CONVERSION, 0.01)
    np.testing.assert_allclose(ips["ips"].numpy(), expected["ips"], rtol=1e-6)
    # row 1: clicked, no conversion, propensity clipped at 0.01: e / 0.01 = 100 * log(1 + e^-1.2)... exactly
    assert ips["ips"][1].item() == pytest.approx(100 * math.log1p(math.exp(-1.2)), rel=1e-6)
    assert ips["ips"][2].item() == 0.0 and ips["ips"][4].item() == 0.0  # unclicked rows
    dr = counterfactual_terms(*args, *labels, 0.01, torch.tensor(IMPUTED))
    expected = reference_terms(CVR_LOGITS, CTR_LOGITS, CLICK, CONVERSION, 0.01, IMPUTED)
    for name in ("dr", "imputation"):
        np.testing.assert_allclose(dr[name].numpy(), expected[name], rtol=1e-6)
    assert dr["dr"][2].item() == pytest.approx(IMPUTED[2]) and dr["imputation"][2].item() == 0.0


def test_the_model_averages_the_weighted_risk_over_all_impressions():
    """Through ESCM2.auxiliary_losses and mtl_rec.losses: weight * sum over rows / |D|, from the model's
    own CTR log_p and CVR logit."""
    backbone = build_backbone(
        ModelConfig(arch="escm2", params={"weight": 0.3, "min_propensity": 0.05}), IN_DIM, ["ctr", "ctcvr"]
    )
    heads = TaskHeads(backbone.output_dims, parse_tasks(ESMM_TASKS))
    outputs = heads(backbone(torch.randn(5, IN_DIM)))
    batch = label_batch(CLICK, CONVERSION)
    aux = auxiliary_losses(backbone.auxiliary_losses(outputs, batch), backbone.auxiliary_spaces, batch)
    expected = reference_terms(
        outputs.logit["ctcvr"].detach().numpy(),
        outputs.logit["ctr"].detach().numpy(),
        CLICK,
        CONVERSION,
        0.05,
    )
    assert aux["escm2_ips"].item() == pytest.approx(0.3 * expected["ips"].mean(), rel=1e-6)


def test_gradients_reach_only_where_the_estimators_put_them():
    cvr_logit = torch.tensor(CVR_LOGITS, requires_grad=True)
    log_propensity = torch.nn.functional.logsigmoid(torch.tensor(CTR_LOGITS, requires_grad=True))
    imputed = torch.tensor(IMPUTED, requires_grad=True)
    labels = (torch.tensor(CLICK), torch.tensor(CONVERSION))
    unclicked = torch.tensor(CLICK) == 0

    ips = counterfactual_terms(cvr_logit, log_propensity, *labels, 0.01)["ips"]
    (grad,) = torch.autograd.grad(ips.sum(), cvr_logit, retain_graph=True)
    assert (grad[unclicked] == 0).all() and (grad[~unclicked] != 0).all()
    assert log_propensity.requires_grad  # the CTR logits are trainable, yet:
    assert torch.autograd.grad(ips.sum(), log_propensity, allow_unused=True)[0] is None  # detached o_hat

    dr = counterfactual_terms(cvr_logit, log_propensity, *labels, 0.01, imputed)
    (grad,) = torch.autograd.grad(dr["dr"].sum(), cvr_logit, retain_graph=True)
    assert (grad[unclicked] == 0).all() and (grad[~unclicked] != 0).all()
    (grad,) = torch.autograd.grad(dr["dr"].sum(), imputed)
    expected = 1 - torch.tensor(CLICK) / torch.sigmoid(torch.tensor(CTR_LOGITS)).clamp(min=0.01)
    torch.testing.assert_close(grad, expected)  # d/d e_hat [e_hat + o (e - e_hat) / o_hat]
    e_constant = torch.autograd.grad(dr["imputation"].sum(), cvr_logit, allow_unused=True, retain_graph=True)
    assert e_constant[0] is None  # e is a constant of the imputation part
    (grad,) = torch.autograd.grad(dr["imputation"].sum(), imputed)
    assert (grad[unclicked] == 0).all() and (grad[~unclicked] != 0).all()


def test_extreme_logits_stay_finite():
    cvr_logit = torch.tensor([60.0, -60.0, 60.0, -60.0], requires_grad=True)
    log_propensity = torch.nn.functional.logsigmoid(torch.tensor([-200.0, 40.0, 0.0, -30.0]))
    click, conversion = torch.ones(4), torch.tensor([0.0, 1.0, 1.0, 0.0])
    terms = counterfactual_terms(cvr_logit, log_propensity, click, conversion, 0.01, torch.full((4,), 0.5))
    total = terms["dr"].sum() + terms["imputation"].sum()
    (grad,) = torch.autograd.grad(total, cvr_logit)
    assert torch.isfinite(total) and torch.isfinite(grad).all()
    assert terms["dr"][0].item() == pytest.approx(
        0.5 + (60.0 - 0.5) / 0.01, rel=1e-5
    )  # BCE of a wrong 60 logit


# ---------------------------------------------------------------------------------- config errors


def test_config_errors_name_the_key_and_the_choices():
    with pytest.raises(ConfigError, match="escm2 backbone 'escm2' is not a registered backbone"):
        arch_config(from_dict(ModelConfig, {"arch": "escm2", "params": {"backbone": "escm2"}}))
    with pytest.raises(ConfigError, match="unknown key 'experts' in model.params.backbone_params"):
        arch_config(from_dict(ModelConfig, {"arch": "escm2", "params": {"backbone_params": {"experts": 2}}}))
    with pytest.raises(ConfigError, match="model.params.form: 'snips' is not one of 'ips', 'dr'"):
        arch_config(from_dict(ModelConfig, {"arch": "escm2", "params": {"form": "snips"}}))
    with pytest.raises(ConfigError, match=r"min_propensity must be in \(0, 1\]"):
        arch_config(from_dict(ModelConfig, {"arch": "escm2", "params": {"min_propensity": 0.0}}))
    with pytest.raises(ConfigError, match="escm2 cvr_task 'cvr' is not a task \\(ctr, ctcvr\\)"):
        build_backbone(ModelConfig(arch="escm2", params={"cvr_task": "cvr"}), IN_DIM, ["ctr", "ctcvr"])
    with pytest.raises(ConfigError, match="needs a CTR and a CVR task"):
        build_backbone(ModelConfig(arch="escm2"), IN_DIM, ["ctr"])
    backbone = build_backbone(
        ModelConfig(arch="escm2", params={"click_label": "clk"}), IN_DIM, ["ctr", "ctcvr"]
    )
    heads = TaskHeads(backbone.output_dims, parse_tasks(ESMM_TASKS))
    with pytest.raises(KeyError, match=r"no label \['clk'\]"):
        backbone.auxiliary_losses(heads(backbone(torch.randn(5, IN_DIM))), label_batch(CLICK, CONVERSION))


# ------------------------------------------------------------------- every weighting method


@pytest.mark.parametrize("method", list(METHODS))
def test_every_weighting_method_trains_the_imputation_tower_alike(method):
    """The regulariser is added unweighted: the imputation tower, which no task loss reaches, gets the
    same gradient whatever the weighting method (gradient surgery included)."""
    from tests.mtl_rec.test_sharding import make_batch, make_spec, reference_model

    spec, batch = make_spec(), make_batch(make_spec())
    results = {}
    for name in dict.fromkeys(["fixed", method]):
        cfg = from_dict(RunConfig, run_config(SMALL_DR, ESMM_TASKS, {"method": name}))
        model = reference_model(spec, cfg)
        results[name] = trainer_step(model, model, batch, cfg)
    grads = results[method]["grads"]
    assert all(torch.isfinite(grad).all() for grad in grads.values())
    imputation = [name for name in grads if name.startswith("backbone.imputation.")]
    assert imputation and all(grads[name].abs().sum() > 0 for name in imputation)
    for name in imputation:
        torch.testing.assert_close(grads[name], results["fixed"]["grads"][name], rtol=1e-6, atol=0)


# ------------------------------------------------------------------- 2 sharded ranks == 1 rank

TWO_RANK_TIMEOUT_S = 90.0


def trainer_step(model, module, batch: Batch, cfg: RunConfig, optimizer=None) -> dict:
    """One step of the worker's TrainPipeline (mtl_rec.step): losses, weighting, auxiliary terms added,
    one backward, after_backward, optimizer step. optimizer: a ShardedModel; default SGD at rate 0
    (the gradients are compared, the weights stay). -> {"aux": {name: [] this rank's share},
    "grads": {dense parameter: grad}}."""
    weighting = build_weighting(
        cfg.weighting, cfg.tasks, {task.name: 0.3 for task in cfg.tasks}
    )  # priors: prior_loss
    optimizer = optimizer or torch.optim.SGD(module.parameters(), lr=0.0)
    result = TrainPipeline(model, module, optimizer, weighting, cfg.tasks).progress(iter([batch]))
    return {
        "aux": {name: value.detach().clone() for name, value in result.aux.items()},
        "grads": {
            name: param.grad.detach().clone()
            for name, param in module.named_parameters()
            if not name.startswith("sparse_arch.") and param.grad is not None
        },
    }


def _trainer_step_worker(rank: int, out_dir: Path, cases: dict[str, tuple[dict, bool]]) -> None:
    """Every case {name: (run config, eval mode)} on this rank's rows, one sharded model each."""
    from tests.mtl_rec.test_sharding import (
        TWO_RANKS,
        load_full_state,
        make_batch,
        make_spec,
        reference_model,
        sharded_model,
    )

    spec, results = make_spec(), {}
    for case, (config, eval_mode) in cases.items():
        cfg = from_dict(RunConfig, config)
        sharded = sharded_model(spec, cfg, seed=0)
        load_full_state(sharded.model, reference_model(spec, cfg).state_dict())
        sharded.model.train(not eval_mode)
        sharded.zero_grad()
        results[case] = trainer_step(
            sharded.model, sharded.module, make_batch(spec, *TWO_RANKS[rank]), cfg, sharded
        )
    torch.save(results, out_dir / f"rank{rank}.pt")


def trainer_step_on_two_ranks(cases: dict[str, tuple[dict, bool]], out_dir: Path) -> dict[str, list[dict]]:
    """{case: (run config dict, eval mode)} -> {case: [rank 0 result, rank 1 result]}, one 2-rank launch
    for all cases (starting the ranks costs more than a step). Ranks hold uneven rows, clicks on rank 0."""
    run_on_ranks(_trainer_step_worker, out_dir, cases, world_size=2, timeout_s=TWO_RANK_TIMEOUT_S)
    per_rank = [torch.load(out_dir / f"rank{rank}.pt") for rank in (0, 1)]
    return {case: [per_rank[0][case], per_rank[1][case]] for case in cases}


def assert_ranks_equal_one_rank(ranks: list[dict], config: dict, eval_mode: bool = False) -> dict:
    """The unsharded model's trainer_step on the whole batch against both ranks' results: every dense
    gradient equal, each auxiliary term's rank shares summing to its 1-rank value. -> the 1-rank result."""
    from tests.mtl_rec.test_sharding import CLICK_ROWS, make_batch, make_spec, reference_model

    spec, cfg = make_spec(), from_dict(RunConfig, config)
    batch = make_batch(spec)
    assert batch.labels["click"][CLICK_ROWS:].sum() == 0  # rank 1 holds no clicked row
    model = reference_model(spec, cfg)
    model.train(not eval_mode)
    reference = trainer_step(model, model, batch, cfg)
    assert set(ranks[0]["aux"]) == set(ranks[1]["aux"]) == set(reference["aux"])
    for name, value in reference["aux"].items():  # each rank holds its share of the global term
        torch.testing.assert_close(ranks[0]["aux"][name] + ranks[1]["aux"][name], value, rtol=1e-5, atol=1e-7)
    assert set(ranks[0]["grads"]) == set(reference["grads"])
    for name, grad in reference["grads"].items():
        for rank, result in enumerate(ranks):
            where = f"rank {rank} {name}"
            torch.testing.assert_close(
                result["grads"][name], grad, rtol=0, atol=1e-5, msg=lambda m, where=where: f"{where}: {m}"
            )
    return reference


def run_config(model: dict, tasks: list[dict], weighting: dict | None = None) -> dict:
    from tests.mtl_rec.test_sharding import CONFIG

    config = {**CONFIG, "model": model, "tasks": tasks}
    return {**config, "weighting": weighting} if weighting else config


@pytest.mark.distributed
def test_two_ranks_equal_one_rank_with_the_dr_regulariser(tmp_path):
    """Rank 1 holds no click: its IPS part is 0, yet the global averages match one rank's."""
    config = run_config(SMALL_DR, ESMM_TASKS)
    ranks = trainer_step_on_two_ranks({"escm2": (config, False)}, tmp_path)["escm2"]
    reference = assert_ranks_equal_one_rank(ranks, config)
    assert reference["aux"]["escm2_dr"] > 0 and reference["aux"]["escm2_imputation"] > 0
    imputation = [name for name in reference["grads"] if name.startswith("backbone.imputation.")]
    assert imputation and all(reference["grads"][name].abs().sum() > 0 for name in imputation)
