"""STAR: star-topology weights, partitioned normalisation, the auxiliary logit, and the domain column
from the feature spec through the pipeline into the model."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from mtl_rec.batch import Batch
from mtl_rec.config import ConfigError, FeatureSpec, SampleSpace, from_dict
from mtl_rec.config.model import ModelConfig, parse_tasks
from mtl_rec.models import arch_config, build_backbone
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.models.star import STAR, PartitionedNorm, StarLinear
from mtl_rec.step import TrainPipeline
from mtl_rec.weighting import METHODS, WeightingConfig, build_weighting
from pipelines.collate import BatchLayout, collate
from pipelines.errors import BadRowsError
from pipelines.transform import block_moments, reduce_moments, transform_block
from pipelines.validate import validate_block
from tests.mtl_rec.models.test_model import random_batch
from tests.pipelines.tables import TINY_SPEC, tiny_table

TASKS = ("ctr", "cvr")
IN_DIM, BATCH, DOMAINS = 6, 12, 3


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def meta_batch(domain: torch.Tensor) -> Batch:
    """Only batch.meta matters to the backbone."""
    n = domain.shape[0]
    return Batch(
        sparse=None,
        dense=torch.zeros(n, 0),
        labels={},
        masks={},
        ids=torch.arange(n),
        meta={"domain": domain},
    )


def star(num_domains: int = DOMAINS, **params) -> STAR:
    params = {"num_domains": num_domains, "hidden": [8, 4], "auxiliary": {"hidden": [4]}, **params}
    return build_backbone(ModelConfig(arch="star", params=params), IN_DIM, TASKS)


def zero(param: torch.Tensor) -> bool:
    return param.grad is None or torch.equal(param.grad, torch.zeros_like(param))


def test_star_weight_is_shared_times_domain_and_each_row_uses_its_own():
    layer = StarLinear(IN_DIM, 5, DOMAINS)
    with torch.no_grad():  # off their initial ones / zeros, so the composition is visible
        layer.domain_weight.copy_(torch.randn(DOMAINS, 5, IN_DIM))
        layer.domain_bias.copy_(torch.randn(DOMAINS, 5))
    for p in range(DOMAINS):
        # exact: one correctly rounded multiply (add) per element, whatever the shape it is broadcast to
        assert torch.equal(layer.weight()[p], layer.shared_weight * layer.domain_weight[p])
        assert torch.equal(layer.bias()[p], layer.shared_bias + layer.domain_bias[p])
    x, domain = torch.randn(BATCH, IN_DIM), torch.tensor([0, 1, 2, 2, 1, 0, 0, 0, 1, 2, 0, 1])
    out = layer(x, domain)
    for row, p in enumerate(domain.tolist()):
        weight = layer.shared_weight * layer.domain_weight[p]  # [Out, In]
        expected = x[row] @ weight.T + layer.shared_bias + layer.domain_bias[p]
        torch.testing.assert_close(out[row], expected)


def test_star_layer_domain_weights_learn_only_from_their_rows():
    layer = StarLinear(IN_DIM, 5, DOMAINS)
    domain = torch.tensor([0, 1, 0, 1, 0, 1])  # domain 2 absent
    out = layer(torch.randn(6, IN_DIM), domain)
    out[domain == 0].square().sum().backward()
    assert layer.domain_weight.grad[0].abs().sum() > 0 and layer.domain_bias.grad[0].abs().sum() > 0
    for p in (1, 2):
        assert torch.equal(layer.domain_weight.grad[p], torch.zeros(5, IN_DIM))
        assert torch.equal(layer.domain_bias.grad[p], torch.zeros(5))


def randomised_norm(standardize: bool) -> PartitionedNorm:
    norm = PartitionedNorm(4, DOMAINS, standardize=standardize)
    with torch.no_grad():  # off their initial ones / zeros, so each part is visible
        norm.gamma.copy_(torch.rand(4) + 0.5)
        norm.beta.copy_(torch.randn(4))
        norm.domain_gamma.copy_(torch.rand(DOMAINS, 4) + 0.5)
        norm.domain_beta.copy_(torch.randn(DOMAINS, 4))
    return norm


def test_partitioned_norm_scales_and_shifts_each_row_by_its_domain():
    norm = randomised_norm(standardize=False)
    z, domain = torch.randn(10, 4), torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 2, 0])
    out = norm(z, domain)
    for row, p in enumerate(domain.tolist()):
        expected = norm.gamma * norm.domain_gamma[p] * z[row] + norm.beta + norm.domain_beta[p]
        torch.testing.assert_close(out[row], expected)
    torch.testing.assert_close(norm.eval()(z, domain), out)  # no statistics: the same in evaluation
    assert not list(norm.buffers())


def test_partitioned_norm_standardizes_with_running_statistics_of_every_row_seen():
    norm = randomised_norm(standardize=True)
    affine = lambda n, domain: (
        norm.gamma * norm.domain_gamma[domain] * n + norm.beta + norm.domain_beta[domain]
    )  # noqa: E731
    first, second = torch.randn(10, 4) * 3 + 1, torch.randn(10, 4) - 2
    first[:, 3], second[:, 3] = 5.0, 7.0  # a feature constant within each batch (like the weekday)
    domain = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 2, 0])
    out = norm(first, domain)  # the first batch sets the statistics to its own ...
    biased_var = first.var(0, unbiased=False)
    torch.testing.assert_close(
        out, affine((first - first.mean(0)) / torch.sqrt(biased_var + norm.eps), domain)
    )
    norm(second, domain)  # ... and the next batches (up to 1 / momentum) are averaged in cumulatively
    both = torch.cat([first, second])
    torch.testing.assert_close(norm.running_mean, both.mean(0))
    torch.testing.assert_close(norm.running_var, both.var(0, unbiased=False))
    assert norm.running_var[3] > 0.9  # the between-batch variance of the constant feature survives
    running = (norm.running_mean.clone(), norm.running_var.clone())
    single = norm(first[:1], domain[:1])  # the trainer's one-row padding batch leaves them as they are
    assert torch.equal(norm.running_mean, running[0]) and torch.equal(norm.running_var, running[1])
    expected = affine((first - running[0]) / torch.sqrt(running[1] + norm.eps), domain)
    torch.testing.assert_close(single, expected[:1])
    torch.testing.assert_close(norm.eval()(first, domain), expected)  # evaluation: the same statistics
    assert torch.equal(norm.running_mean, running[0])
    for _ in range(40):  # past 1 / momentum batches: an exponential average with weight momentum
        norm.train()(second, domain)
    torch.testing.assert_close(norm.running_mean, second.mean(0), atol=0.05, rtol=0)


@pytest.mark.parametrize("standardize", [False, True])
def test_partitioned_norm_parameters_get_gradient_only_from_their_own_rows(standardize):
    norm = PartitionedNorm(4, DOMAINS, standardize=standardize)
    z, domain = torch.randn(8, 4), torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])  # no row of domain 2
    weights = torch.randn(8, 4)
    (norm(z, domain) * weights)[domain == 0].sum().backward()  # a loss over domain 0's rows alone
    for param in (norm.domain_gamma, norm.domain_beta):
        assert param.grad[0].abs().sum() > 0
        assert torch.equal(param.grad[1], torch.zeros(4)) and torch.equal(param.grad[2], torch.zeros(4))
    assert norm.gamma.grad.abs().sum() > 0 and norm.beta.grad.abs().sum() > 0  # shared: every domain
    norm.zero_grad()
    (norm(z, domain) * weights).sum().backward()  # every row: domains 0 and 1 learn, absent 2 does not
    for param in (norm.domain_gamma, norm.domain_beta):
        assert param.grad[0].abs().sum() > 0 and param.grad[1].abs().sum() > 0
        assert torch.equal(param.grad[2], torch.zeros(4))


def test_output_is_star_logit_plus_auxiliary_logit():
    backbone = star()
    x, domain = torch.randn(BATCH, IN_DIM), torch.arange(BATCH) % DOMAINS
    out = backbone(x, meta_batch(domain))
    assert backbone.output_dims == {"ctr": 1, "cvr": 1}
    assert {task: h.shape for task, h in out.items()} == {"ctr": (BATCH, 1), "cvr": (BATCH, 1)}
    backbone.eval()  # the same normalisation for the hand computation below and the forward
    z = backbone.norm(x, domain)
    hidden = z
    for layer in backbone.layers:
        hidden = torch.relu(layer(hidden, domain))
    star_logits = backbone.star_logits(hidden, domain)  # [B, T]
    aux_input = torch.cat([backbone.domain_embedding(domain), z], dim=1)
    aux_logits = backbone.auxiliary_logits(backbone.auxiliary(aux_input))  # [B, T]
    out = backbone(x, meta_batch(domain))
    for t, task in enumerate(TASKS):
        torch.testing.assert_close(out[task][:, 0], star_logits[:, t] + aux_logits[:, t])
    with torch.no_grad():
        backbone.auxiliary_logits.bias[1] += 2.5  # the auxiliary logit is added, unscaled
    shifted = backbone(x, meta_batch(domain))
    torch.testing.assert_close(shifted["cvr"], out["cvr"] + 2.5)
    torch.testing.assert_close(shifted["ctr"], out["ctr"])


@pytest.mark.parametrize("norm_statistics", ["none", "running"])
def test_every_parameter_gets_a_gradient_when_every_domain_is_present(norm_statistics):
    backbone = star(norm_statistics=norm_statistics)
    assert backbone.norm.standardize == (norm_statistics == "running")
    out = backbone(torch.randn(BATCH, IN_DIM), meta_batch(torch.arange(BATCH) % DOMAINS))
    sum(h.square().sum() for h in out.values()).backward()
    for name, param in backbone.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_domains_change_the_prediction_of_the_same_row():
    backbone = star()
    with torch.no_grad():
        backbone.star_logits.domain_bias.copy_(torch.randn(DOMAINS, len(TASKS)))
    backbone.eval()
    x = torch.randn(1, IN_DIM).expand(DOMAINS, IN_DIM)  # one row, seen in each domain
    out = backbone(x, meta_batch(torch.arange(DOMAINS)))["ctr"][:, 0]
    assert len(set(out.tolist())) == DOMAINS


def test_domain_ids_are_checked():
    backbone = star()
    x = torch.randn(4, IN_DIM)
    with pytest.raises(
        ValueError, match=r"2 of 4 rows have a domain id outside the integers \[0, 3\).*e.g. \[3, -1\]"
    ):
        backbone(x, meta_batch(torch.tensor([0, 3, -1, 2])))
    with pytest.raises(ValueError, match="outside the integers"):
        backbone(x, meta_batch(torch.tensor([0.0, 1.5, 2.0, 1.0])))
    with pytest.raises(ValueError, match=r"batch.meta\['domain'\], which this batch lacks \(meta: \[\]\)"):
        backbone(x, None)
    backbone(x, meta_batch(torch.tensor([0.0, 1.0, 2.0, 1.0])))  # float meta (the padding batch) is fine
    single = star(num_domains=1)  # one domain: no column needed
    assert single(x)["ctr"].shape == (4, 1)
    with pytest.raises(ConfigError, match="num_domains and domain_embedding_dim must be >= 1"):
        arch_config(from_dict(ModelConfig, {"arch": "star", "params": {"num_domains": 0}}))


# The tiny pipeline spec plus a `scene` column naming one of two domains.
SCENE_SPEC = {**TINY_SPEC, "domain_column": "scene", "num_domains": 2}


def scene_table(scenes) -> pa.Table:
    return tiny_table(len(scenes)).append_column("scene", pa.array(np.asarray(scenes), pa.int64()))


def test_spec_domain_column_is_carried_into_batch_meta_and_read_by_star():
    spec = from_dict(FeatureSpec, SCENE_SPEC)
    assert spec.meta_columns == ("scene",) and "scene" in spec.input_columns()
    table = scene_table([0, 1, 1, 0, 1, 0])
    spaces = {"all": SampleSpace(), "click == 1": SampleSpace.parse("click == 1")}
    stats = reduce_moments([block_moments(table, spec).to_pylist()[0]], spec)
    out = transform_block(validate_block(table, spec, "error", None), spec, stats, spaces)
    batch = collate(out, BatchLayout.from_table(out))
    assert batch.meta["scene"].dtype == torch.int64 and batch.meta["scene"].tolist() == [0, 1, 1, 0, 1, 0]

    tasks = parse_tasks(
        [{"name": "ctr", "label": "click"}, {"name": "ctcvr", "label": "conversion", "parent": "ctr"}]
    )
    params = {"num_domains": 2, "domain_column": "scene", "hidden": [8]}
    model = MultiTaskModel(spec, ModelConfig(arch="star", params=params), tasks, device="cpu")
    outputs = model(batch)
    assert outputs.log_p["ctcvr"].shape == (6,) and (outputs.log_p["ctcvr"] <= outputs.log_p["ctr"]).all()
    with pytest.raises(ValueError, match=r"batch.meta\['scene'\], which this batch lacks"):
        model(random_batch(spec, 4))  # a batch without the column


def test_rows_outside_the_domains_are_bad_rows():
    spec = from_dict(FeatureSpec, SCENE_SPEC)
    with pytest.raises(BadRowsError, match=r"scene: domain null or not in \[0, 2\): 2 rows"):
        validate_block(scene_table([0, 1, 2, 0, -1, 1]), spec, "error", None, source="day.parquet")
    with pytest.raises(ConfigError, match="domain_column 'scene' needs num_domains >= 1"):
        from_dict(FeatureSpec, {**SCENE_SPEC, "num_domains": 0})
    with pytest.raises(ConfigError, match="domain_column 'click' is a label"):
        from_dict(FeatureSpec, {**SCENE_SPEC, "domain_column": "click"})
    with pytest.raises(ConfigError, match="num_domains=2 without a domain_column"):
        from_dict(FeatureSpec, {**TINY_SPEC, "num_domains": 2})


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("arch", ["star", "cross_stitch", "asymmetric"])
def test_new_archs_train_under_every_weighting_method_with_chains_and_spaces(arch, method):
    """ctr over impressions, ctcvr chained to it (ESMM), cart over clicks: two steps of the real loss path."""
    from mtl_rec.models.model import MultiTaskModel

    spec = from_dict(FeatureSpec, SCENE_SPEC)
    tasks = parse_tasks(
        [
            {"name": "ctr", "label": "click", "tower": {"hidden": [4]}},
            {"name": "ctcvr", "label": "conversion", "parent": "ctr", "conditional_name": "cvr"},
            {"name": "cart", "label": "cart", "space": "click == 1", "tower": {"hidden": [4]}},
        ],
        spec.labels,
    )
    params = {
        "star": {"num_domains": 2, "domain_column": "scene", "hidden": [8]},
        "cross_stitch": {"column": {"hidden": [8, 4]}},
        "asymmetric": {"column": {"hidden": [8]}, "reads": {"ctcvr": ["ctr"], "cart": ["ctr", "ctcvr"]}},
    }[arch]
    model = MultiTaskModel(
        spec,
        from_dict(ModelConfig, {"arch": arch, "params": params, "dense_arch": {"hidden": [4]}}),
        tasks,
        "cpu",
    )
    weighting = build_weighting(WeightingConfig(method), tasks, {"ctr": 0.5, "ctcvr": 0.1, "cart": 0.3})
    optimizer = torch.optim.Adam(model.dense_parameters(), lr=1e-2)
    pipeline = TrainPipeline(model, model, optimizer, weighting, tasks)  # the worker's step
    for step in range(2):
        batch = random_batch(spec, 32, seed=step)
        batch.meta["scene"] = torch.arange(32) % 2
        result = pipeline.progress(iter([batch]))
        total, weights = result.total, result.weights
        assert torch.isfinite(total) and all(math.isfinite(w) for w in weights.values()), (total, weights)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.dense_parameters())
