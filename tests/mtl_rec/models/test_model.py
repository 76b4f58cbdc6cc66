"""The full model: TorchRec embeddings + dense MLP -> every backbone -> heads, and the YAML presets."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchrec import KeyedJaggedTensor

from mtl_rec.batch import Batch
from mtl_rec.config import FeatureSpec, from_dict, load_feature_spec, load_yaml
from mtl_rec.config.loader import ConfigError
from mtl_rec.config.model import ModelConfig, parse_tasks
from mtl_rec.models import MODELS, TaskOutputs
from mtl_rec.models.model import MultiTaskModel
from tests.pipelines.tables import TINY_SPEC, tiny_spec

CONFIGS = Path(__file__).parents[3] / "jobs" / "configs"
BATCH = 32
THREE_TASKS = [
    {"name": "ctr", "label": "click", "tower": {"hidden": [8]}},
    {"name": "cvr", "label": "conversion", "space": "click == 1", "tower": {"hidden": [8]}},
    {"name": "cart", "label": "cart", "space": "click == 1", "tower": {"hidden": [8]}},
]
CHAIN = [  # impression -> click -> cart -> conversion, all over the entire space
    {"name": "click", "label": "click"},
    {"name": "cart", "label": "cart", "parent": "click"},
    {"name": "conversion", "label": "conversion", "parent": "cart"},
]


def small_model(arch: str, tasks: list[dict]) -> MultiTaskModel:
    torch.manual_seed(0)
    model_cfg = from_dict(ModelConfig, {"arch": arch, "dense_arch": {"hidden": [8]}})
    spec = tiny_spec()
    return MultiTaskModel(spec, model_cfg, parse_tasks(tasks, spec.labels), device="cpu")


def random_batch(spec: FeatureSpec, batch_size: int = BATCH, seed: int = 0) -> Batch:
    """Valid ids for every table, multi-hot lists of 0-3 ids (some empty), labels that obey the funnel."""
    g = torch.Generator().manual_seed(seed)
    values, lengths = [], []
    for feature in spec.sparse:
        rows = spec.tables[feature.table].num_embeddings
        if feature.multi_hot:
            key_lengths = torch.randint(0, 4, (batch_size,), generator=g)  # [B]
        else:
            key_lengths = torch.ones(batch_size, dtype=torch.int64)  # [B]
        values.append(torch.randint(0, rows, (int(key_lengths.sum()),), generator=g))
        lengths.append(key_lengths)
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=list(spec.sparse_names), values=torch.cat(values), lengths=torch.cat(lengths)
    )
    click = (torch.rand(batch_size, generator=g) < 0.5).float()
    cart = click * (torch.rand(batch_size, generator=g) < 0.5).float()
    conversion = cart * (torch.rand(batch_size, generator=g) < 0.5).float()
    return Batch(
        sparse=sparse,
        dense=torch.randn(batch_size, spec.num_dense, generator=g),
        labels={"click": click, "cart": cart, "conversion": conversion},
        masks={"all": torch.ones(batch_size, dtype=torch.bool), "click == 1": click.bool()},
        ids=torch.arange(batch_size),
    )


def bce(outputs: TaskOutputs, batch: Batch, labels: dict[str, str]) -> torch.Tensor:
    return sum(
        -(
            batch.labels[label] * outputs.log_p[task] + (1 - batch.labels[label]) * outputs.log_1mp[task]
        ).mean()
        for task, label in labels.items()
    )


@pytest.mark.parametrize("arch", list(MODELS))
def test_forward_shapes_and_gradients_reach_every_parameter(arch):
    model = small_model(arch, THREE_TASKS)
    batch = random_batch(tiny_spec())
    outputs = model(batch)
    assert outputs.tasks == ("ctr", "cvr", "cart")
    for field in (outputs.logit, outputs.log_p, outputs.log_1mp):
        assert all(t.shape == (BATCH,) and torch.isfinite(t).all() for t in field.values())
    bce(outputs, batch, {"ctr": "click", "cvr": "conversion", "cart": "cart"}).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{arch}: no gradient reaches {name}"
    tables = [name for name, _ in model.named_parameters() if name.startswith("sparse_arch.ebc.")]
    assert len(tables) == len(tiny_spec().tables)  # the embedding weights are among those checked


@pytest.mark.parametrize("arch", list(MODELS))
def test_entire_space_chain_over_every_backbone(arch):
    model = small_model(arch, CHAIN)
    batch = random_batch(tiny_spec())
    out = model(batch)
    expected = sum(F.logsigmoid(out.logit[task]) for task in ("click", "cart", "conversion"))  # [B]
    torch.testing.assert_close(out.log_p["conversion"], expected)
    torch.testing.assert_close(
        out.log_p["cart"], F.logsigmoid(out.logit["click"]) + F.logsigmoid(out.logit["cart"])
    )
    assert (out.prob("cart") <= out.prob("click")).all() and (
        out.prob("conversion") <= out.prob("cart")
    ).all()
    torch.testing.assert_close(out.log_1mp["conversion"], torch.log1p(-out.prob("conversion")))
    bce(out, batch, {"click": "click", "cart": "cart", "conversion": "conversion"}).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_pooled_embeddings_follow_spec_order_through_shared_tables():
    spec = tiny_spec()  # user_id (user), category (cat), device (dev), recent_categories (cat, mean)
    model = small_model("mmoe", THREE_TASKS)
    batch = random_batch(spec, batch_size=4)
    pooled = model.sparse_arch(batch.sparse)  # [B, 4 features x dim 4]
    assert pooled.shape == (4, 16)
    weights = {name: bag.weight for name, bag in model.sparse_arch.ebc.embedding_bags.items()}
    features = batch.sparse.to_dict()
    torch.testing.assert_close(pooled[:, 8:12], weights["dev"][features["device"].values()])
    recent = features["recent_categories"]
    for row, ids in enumerate(torch.split(recent.values(), recent.lengths().tolist())):
        expected = weights["cat"][ids].mean(0) if len(ids) else torch.zeros(4)  # mean pooling, empty -> 0
        torch.testing.assert_close(pooled[row, 12:16], expected)


def test_dense_parameters_are_everything_but_the_tables():
    model = small_model("ple", THREE_TASKS)
    dense = {id(p) for p in model.dense_parameters()}
    tables = {id(p) for p in model.sparse_arch.parameters()}
    assert dense and not dense & tables
    assert dense | tables == {id(p) for p in model.parameters()}


def test_default_device_is_meta_for_sharding():
    spec = tiny_spec()
    model = MultiTaskModel(spec, ModelConfig(), parse_tasks(THREE_TASKS))
    assert all(p.is_meta for p in model.sparse_arch.parameters())
    assert not any(p.is_meta for p in model.dense_parameters())  # DMP moves the dense part itself


PRESETS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "features.yaml")


def test_the_reference_presets_exist():
    assert {"shared_bottom.yaml", "mmoe.yaml", "ple.yaml", "esmm.yaml"} <= {p.name for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_builds_a_model_on_the_real_feature_spec(preset):
    spec = load_feature_spec(CONFIGS / "features.yaml")
    data = load_yaml(preset)
    model_cfg = from_dict(ModelConfig, data["model"], "model")
    tasks = parse_tasks(data["tasks"], spec.labels)
    model = MultiTaskModel(spec, model_cfg, tasks)  # meta: a 1M-row table costs nothing
    assert model.task_names == tuple(task.name for task in tasks)
    assert model.sparse_arch.output_dim == sum(spec.tables[f.table].dim for f in spec.sparse)
    tables = model.sparse_arch.ebc.embedding_bag_configs()
    assert {t.name for t in tables} == set(spec.tables)
    assert sorted(f for t in tables for f in t.feature_names) == sorted(spec.sparse_names)


@pytest.mark.distributed
# FBGEMM's CPU data-parallel lookup has no registered autograd kernel and torch warns; its gradients
# were checked equal to the unsharded model's.
@pytest.mark.filterwarnings("ignore:.*an autograd kernel was not registered:UserWarning")
def test_meta_model_shards_under_distributed_model_parallel():
    """One gloo rank: DMP materialises the meta tables and DDP-wraps the rest; outputs stay TaskOutputs."""
    import socket

    import torch.distributed as dist
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        spec = tiny_spec()
        model = MultiTaskModel(spec, ModelConfig(arch="ple"), parse_tasks(CHAIN, spec.labels))
        dense = model.dense_parameters()
        dmp = DistributedModelParallel(
            model, device=torch.device("cpu"), sharders=[EmbeddingBagCollectionSharder()]
        )
        assert [id(p) for p in model.dense_parameters()] == [id(p) for p in dense]  # unchanged by sharding
        batch = random_batch(spec)
        out = dmp(batch)
        assert isinstance(out, TaskOutputs) and out.log_p["conversion"].shape == (BATCH,)
        bce(out, batch, {"click": "click", "cart": "cart", "conversion": "conversion"}).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dense)
    finally:
        dist.destroy_process_group()


def test_dot_interaction_adds_every_pairwise_inner_product():
    spec = tiny_spec()  # every table has dim 4
    tasks = parse_tasks([{"name": "ctr", "label": "click"}], spec.labels)
    torch.manual_seed(0)
    model = MultiTaskModel(spec, ModelConfig(arch="shared_bottom", interaction="dot"), tasks, device="cpu")
    k = len(spec.sparse)
    batch = random_batch(spec)
    pooled = model.sparse_arch(batch.sparse).view(batch.batch_size, k, -1)  # [B, K, D]
    captured = {}
    model.backbone.register_forward_pre_hook(lambda module, args: captured.setdefault("x", args[0]))
    model(batch)
    assert (
        captured["x"].shape[1]
        == model.sparse_arch.output_dim + k * (k - 1) // 2 + model.dense_arch.output_dim
    )
    pairs = captured["x"][:, model.sparse_arch.output_dim : model.sparse_arch.output_dim + k * (k - 1) // 2]
    i, j = 0, k - 1  # the last pair of row 0 in the upper triangle order
    torch.testing.assert_close(pairs[:, k - 2], (pooled[:, i] * pooled[:, j]).sum(-1))
    with pytest.raises(ConfigError, match="interaction=dot needs one embedding dim"):
        uneven = from_dict(
            FeatureSpec,
            {**TINY_SPEC, "tables": {**TINY_SPEC["tables"], "dev": {"num_embeddings": 3, "dim": 8}}},
        )
        MultiTaskModel(uneven, ModelConfig(interaction="dot"), tasks, device="cpu")


def test_batch_norm_trains_on_one_row_batches_without_moving_its_statistics():
    """A rank's 1-row lockstep padding batch (or a shard's last row) goes through BatchNorm in training
    mode: normalised by the running statistics, exactly as in eval mode, which stay where they were."""
    torch.manual_seed(0)
    spec = tiny_spec()
    model_cfg = from_dict(
        ModelConfig,
        {
            "arch": "mmoe",
            "dense_arch": {"hidden": [8], "batch_norm": True},
            "params": {"num_experts": 2, "expert": {"hidden": [8], "batch_norm": True}},
        },
    )
    model = MultiTaskModel(spec, model_cfg, parse_tasks(THREE_TASKS, spec.labels), device="cpu")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 3  # the dense MLP and the 2 experts
    model.train()
    model(random_batch(spec, batch_size=BATCH, seed=1))  # moves the running statistics off (0, 1)
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms]
    row = random_batch(spec, batch_size=1, seed=2)
    outputs = model(row)
    sum(logit.sum() for logit in outputs.logit.values()).backward()
    assert all(p.grad is not None for p in model.dense_parameters() if p.requires_grad)
    for m, (mean, var, tracked) in zip(norms, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == tracked
    model.eval()
    for task, logit in model(row).logit.items():
        torch.testing.assert_close(logit, outputs.logit[task].detach(), rtol=0, atol=0)
