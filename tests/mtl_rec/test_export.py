"""Export and the Predictor (mtl_rec.export, mtl_rec.serve), without Ray:

1. A checkpoint written by 2 gloo ranks (table-wise, column-wise and data-parallel tables) exports on
   one process with no process group, and the exported program predicts what the sharded model did.
2. Predictor on raw rows equals the training path (pipelines.validate -> transform -> collate ->
   MultiTaskModel) on the same rows, an ESMM chain's conditional target included; bad input is an
   InvalidRowsError naming the column, the reason and the counts; a changed file is refused.
3. float16 / int8 tables stay within their documented per-value error bounds; a bfloat16 backbone
   within its rounding of float32.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from mtl_rec.checkpoint import save_checkpoint
from mtl_rec.config import SampleSpace, from_dict
from mtl_rec.config.features import ROW_ID_COLUMN, SparseFeature, TableSpec, spec_yaml
from mtl_rec.config.loader import ConfigError, to_dict
from mtl_rec.config.run import RunConfig
from mtl_rec.export import COMPILED, PROGRAM, TableLookup, export_run
from mtl_rec.losses import task_losses, weighted_sum
from mtl_rec.metrics import eval_targets
from mtl_rec.models import MODELS
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.serve import ExportError, InvalidRowsError, Predictor
from mtl_rec.transform import bucket_ids
from pipelines.collate import BatchLayout, collate
from pipelines.transform import block_moments, reduce_moments, transform_block
from pipelines.validate import validate_block
from tests.harness import assert_float32_close, run_on_two_ranks
from tests.mtl_rec.test_sharding import ROWS, TWO_RANKS, make_batch, make_config, make_spec, sharded_model
from tests.pipelines.tables import tiny_spec, tiny_table

# Predictions of the same weights over other batch shapes (halves on 2 ranks against all rows, the
# exported graph against the eager module): kernels chosen by shape sum in another order. About 5
# layers of a few float32 ulps each; a table that failed to load moves predictions by >1e-2.
PREDICTION_ULPS = 64
# The run directories here are saved by one process without a process group, as no real run is:
# DCP says it assumes a single process, which is the point.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def _stats(spec, table: pa.Table):
    return reduce_moments([block_moments(table, spec).to_pylist()[0]], spec)


def _run_files(cfg: RunConfig, spec, stats) -> dict[str, str]:
    return {
        "config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
        "features.yaml": spec_yaml(spec),
        "feature_stats.json": json.dumps(asdict(stats)),
    }


def _saved_run(run_dir: Path, model, cfg: RunConfig, spec):
    """RUN_DIR/checkpoint of an unsharded `model`, as one process writes it, with the files export
    reads (statistics from 200 rows of tiny_table); returns those statistics."""
    stats = _stats(spec, tiny_table(200, seed=1))
    files = _run_files(cfg, spec, stats)
    save_checkpoint(model, run_dir / "checkpoint", files=files, manifest={"world_size": 1})
    return stats


def _program_inputs(batch, spec) -> tuple[torch.Tensor, ...]:
    """A Batch's KJT and dense -> the exported program's inputs (ServingModel.forward)."""
    features = batch.sparse.to_dict()
    single = torch.stack([features[f.name].values() for f in spec.sparse if not f.multi_hot], dim=1)  # [B, S]
    multi = []
    for feature in (f for f in spec.sparse if f.multi_hot):
        jagged = features[feature.name]
        multi += [jagged.values(), jagged.offsets().to(torch.int64)]  # [N], [B + 1]
    return (single, batch.dense, *multi)


def _probabilities(outputs, targets) -> torch.Tensor:
    return torch.stack([t.predictions(outputs).float() for t in targets], dim=1)  # [B, T]


# ---------------------------------------------------------------- 1. a 2-rank checkpoint


def _train_and_save(rank: int, root: Path) -> None:
    spec, cfg = make_spec(), make_config()
    sharded = sharded_model(spec, cfg, seed=0)
    start, end = TWO_RANKS[rank]
    for step in range(3):
        batch = make_batch(spec, start, end, seed=step)
        sharded.zero_grad()
        weighted_sum(
            task_losses(sharded.model(batch), batch, cfg.tasks).losses, {"ctr": 1.0, "cvr": 1.0, "cart": 0.5}
        ).backward()
        sharded.step()
    stats = _stats(spec, pa.table({"price": [1.0, 9.0], "ctr": [0.1, 0.3]}))
    save_checkpoint(
        sharded,
        root / "run" / "checkpoint",
        files=_run_files(cfg, spec, stats),
        manifest={"world_size": 2, "step": 3},
    )
    with torch.no_grad():
        outputs = sharded.model(make_batch(spec, start, end, seed=100))
    torch.save(_probabilities(outputs, eval_targets(cfg.tasks, spec)), root / f"rank{rank}.pt")


@pytest.mark.distributed
def test_a_two_rank_checkpoint_exports_whole_and_predicts_as_the_sharded_model(tmp_path):
    run_on_two_ranks(_train_and_save, tmp_path)
    manifest = export_run(tmp_path / "run", tmp_path / "model")
    assert manifest["checkpoint"]["world_size"] == 2 and manifest["inputs"]["multi"] == ["recent_categories"]
    spec = make_spec()
    program = torch.export.load(str(tmp_path / "model" / PROGRAM)).module()  # torch alone: no model code
    with torch.no_grad():
        exported = program(*_program_inputs(make_batch(spec, 0, ROWS, seed=100), spec))  # [B, T]
    sharded = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)])  # [B, T]
    assert exported.shape == (ROWS, 3)
    assert_float32_close(exported, sharded, PREDICTION_ULPS)
    untrained = MultiTaskModel(spec, make_config().model, make_config().tasks, device="cpu").eval()
    with torch.no_grad():
        before = _probabilities(
            untrained(make_batch(spec, 0, ROWS, seed=100)), eval_targets(make_config().tasks, spec)
        )
    assert (exported - before).abs().max() > 1e-3  # the comparison can fail: trained weights differ


# ---------------------------------------------------------------- 2. Predictor on raw rows

CHAIN_TASKS = [
    {"name": "ctr", "label": "click", "tower": {"hidden": [4]}},
    {
        "name": "ctcvr",
        "label": "conversion",
        "parent": "ctr",
        "conditional_name": "cvr",
        "tower": {"hidden": [4]},
    },
]

ESMM_CONFIG = {
    "model": {
        "arch": "mmoe",
        "params": {"num_experts": 2, "expert": {"hidden": [8]}},
        "dense_arch": {"hidden": []},
    },
    "tasks": CHAIN_TASKS,
    "sharding": {"tables": {}},
}


def star_chain() -> tuple:
    """(tiny_spec with a `scene` domain column of 3 domains, STAR under the ESMM chain reading it)."""
    spec = replace(tiny_spec(), domain_column="scene", num_domains=3)
    star = {"arch": "star", "params": {"num_domains": 3, "domain_column": "scene"}}
    return spec, from_dict(RunConfig, {"model": star, "tasks": CHAIN_TASKS, "sharding": {"tables": {}}})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(export dir, the unsharded model it came from, spec, stats, config) on tiny_spec: an ESMM chain."""
    root = tmp_path_factory.mktemp("export")
    spec, cfg = tiny_spec(), from_dict(RunConfig, ESMM_CONFIG)
    torch.manual_seed(0)
    model = MultiTaskModel(spec, cfg.model, cfg.tasks, device="cpu")
    with torch.no_grad():  # rows of visible size (the init is near 0): a lookup bug must show
        for bag in model.sparse_arch.ebc.embedding_bags.values():
            bag.weight.normal_(0, 0.5)
    stats = _saved_run(root / "run", model, cfg, spec)
    export_run(root / "run", root / "model")
    return root / "model", model.eval(), spec, stats, cfg


def _training_path(table: pa.Table, model, spec, stats, cfg) -> dict[str, np.ndarray]:
    spaces = {"all": SampleSpace()}
    transformed = transform_block(validate_block(table, spec, "error", None), spec, stats, spaces)
    with torch.no_grad():
        outputs = model(collate(transformed, BatchLayout.from_table(transformed)))
    return {t.name: t.predictions(outputs).numpy() for t in eval_targets(cfg.tasks, spec)}


def test_predictor_on_raw_rows_equals_the_training_path(exported):
    model_dir, model, spec, stats, cfg = exported
    predictor = Predictor(model_dir)
    assert predictor.targets == ("ctr", "ctcvr", "cvr")
    rows = tiny_table(64, seed=5)
    served, trained = predictor.predict(rows), _training_path(rows, model, spec, stats, cfg)
    for name in predictor.targets:
        assert_float32_close(served[name], trained[name], PREDICTION_ULPS, msg=name)
    assert np.all(served["ctcvr"] <= served["ctr"])  # the chain: p(click and conversion) <= p(click)
    np.testing.assert_allclose(served["ctcvr"], served["ctr"] * served["cvr"], rtol=1e-5)
    # The same rows as a list of objects and as columns: the same inputs, shape and program: exact.
    for form in (rows.to_pylist(), rows.to_pydict()):
        again = predictor.predict(form)
        assert all(np.array_equal(again[n], served[n]) for n in predictor.targets)
    single = predictor.predict(rows.slice(3, 1).to_pylist())  # one row: a batch of 1 runs too
    assert_float32_close(single["ctr"], served["ctr"][3:4], PREDICTION_ULPS)
    assert predictor.predict([])["ctr"].shape == (0,)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r[1].update(user_id=None), "request: 1 bad of 3 rows (user_id: null id: 1 rows)"),
        (
            lambda r: r[0].update(device=7),
            "device: id >= num_embeddings (3) of an identity-mapped table: 1 rows",
        ),
        (lambda r: [x.update(price=float("nan")) for x in r[:2]], "price: null, NaN or inf: 2 rows"),
        (lambda r: r[2].update(price=-1.0), "price: negative value (log1p transform needs >= 0): 1 rows"),
        (lambda r: r[0].update(recent_categories=[1, -2]), "recent_categories: negative id in list: 1 rows"),
        (lambda r: r[1].pop("ctr"), "request: missing field(s) ctr (3 rows)"),
        (lambda r: r[0].update(user_id="u-17"), "request: user_id: values of mixed or unusable types"),
        (
            lambda r: [x.update(category=1.5) for x in r],
            "request: category: expected integer ids, got double (3 rows)",
        ),
    ],
)
def test_bad_rows_are_refused_naming_column_reason_and_count(exported, change, message):
    rows = tiny_table(3, seed=2).to_pylist()
    change(rows)
    with pytest.raises(InvalidRowsError) as raised:
        Predictor(exported[0]).predict(rows)
    assert message in str(raised.value)


def test_an_export_whose_files_changed_is_refused(exported, tmp_path):
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(exported[0], copy)
    (copy / "feature_stats.json").write_text((copy / "feature_stats.json").read_text().replace("1", "2", 1))
    with pytest.raises(ExportError, match="feature_stats.json: missing or changed since export"):
        Predictor(copy)


# ---------------------------------------------------------------- 3. quantised tables


def test_quantised_tables_stay_within_their_error_bounds():
    weight = torch.randn(500, 16) * torch.rand(500, 1) * 3  # rows of very different ranges
    weight[7] = 0.25  # a constant row
    half = TableLookup(weight, "float16").dequantized()
    assert ((half - weight).abs() <= weight.abs() * 2**-11 + 2**-24).all()
    int8 = TableLookup(weight, "int8").dequantized()
    bound = (weight.max(1).values - weight.min(1).values)[:, None] / 510  # half a step per row
    assert ((int8 - weight).abs() <= bound * (1 + 1e-4) + 1e-7).all() and torch.equal(int8[7], weight[7])
    assert TableLookup(weight, "int8").weight.dtype == torch.uint8


def test_the_aoti_build_predicts_what_the_exported_program_does(exported, tmp_path):
    model_dir, model, spec, stats, cfg = exported
    export_run(model_dir.parent / "run", tmp_path / "compiled", compile=True)
    compiled, plain = Predictor(tmp_path / "compiled"), Predictor(tmp_path / "compiled", compiled=False)
    assert (compiled.runs, plain.runs) == (COMPILED, PROGRAM)
    rows = tiny_table(64, seed=9)
    for chosen in (rows, rows.slice(5, 1)):  # a batch, and a single row (the build's dynamic batch)
        fast, reference = compiled.predict(chosen), plain.predict(chosen)
        for name in plain.targets:  # other kernels (fused C++), the same math: float32 ulps
            assert_float32_close(fast[name], reference[name], PREDICTION_ULPS, msg=name)


CLICK_SPACE_TASKS = [  # for backbones whose params name tasks of their own (AITM's sequence)
    {"name": "ctr", "label": "click"},
    {"name": "cvr", "label": "conversion", "space": "click == 1"},
]


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_backbone_exports_and_serves_what_it_computes_in_training(arch, tmp_path):
    """Each registered backbone with its default params (an ESMM chain on top where the backbone
    allows one): the export's scores on raw rows equal the training path's, one row included. STAR
    runs on 3 domains (the spec's `scene` column), with its per-domain weights moved off their equal
    start, so a program that ignored or mixed up the rows' domains would score differently."""
    spec, model_cfg, rows = tiny_spec(), {"arch": arch}, tiny_table(32, seed=4)
    if arch == "star":
        spec = replace(spec, domain_column="scene", num_domains=3)
        model_cfg["params"] = {"num_domains": 3, "domain_column": "scene"}
        rows = rows.append_column("scene", pa.array(np.arange(32) % 3, pa.int64()))
    try:
        cfg = from_dict(RunConfig, {"model": model_cfg, "tasks": CHAIN_TASKS, "sharding": {"tables": {}}})
    except ConfigError:
        cfg = from_dict(
            RunConfig, {"model": model_cfg, "tasks": CLICK_SPACE_TASKS, "sharding": {"tables": {}}}
        )
    torch.manual_seed(0)
    model = MultiTaskModel(spec, cfg.model, cfg.tasks, device="cpu").eval()
    if arch == "star":
        with torch.no_grad():
            for param in model.backbone.parameters():
                param.add_(0.3 * torch.randn_like(param))
    stats = _saved_run(tmp_path / "run", model, cfg, spec)
    manifest = export_run(tmp_path / "run", tmp_path / "model")
    assert manifest["inputs"]["domain"] == ("scene" if arch == "star" else None)
    predictor = Predictor(tmp_path / "model")
    served, trained = predictor.predict(rows), _training_path(rows, model, spec, stats, cfg)
    single = predictor.predict(rows.slice(7, 1))
    for name in predictor.targets:
        assert_float32_close(served[name], trained[name], PREDICTION_ULPS, msg=name)
        assert_float32_close(single[name], trained[name][7:8], PREDICTION_ULPS, msg=f"{name}, one row")
    if arch == "star":  # the same rows in other domains: other scores
        moved = rows.set_column(
            rows.schema.get_field_index("scene"), "scene", pa.array((np.arange(32) + 1) % 3)
        )
        assert not np.allclose(predictor.predict(moved)["ctr"], served["ctr"])
        with pytest.raises(InvalidRowsError, match="scene: domain null or not in \\[0, 3\\)"):
            predictor.predict(
                rows.set_column(rows.schema.get_field_index("scene"), "scene", pa.array([3] * 32))
            )


def test_a_spec_without_multi_hot_features_or_row_columns_exports_and_serves(tmp_path):
    """A plain table (UCI Adult's shape): single-hot ids and dense columns only, and no id, time or
    group column. The program then has no multi-hot inputs at all (it once failed to export)."""
    base = tiny_spec()
    spec = replace(
        base,
        sparse=tuple(f for f in base.sparse if not f.multi_hot),
        id_column="",
        time_column="",
        group_key="",
    )
    cfg = from_dict(RunConfig, {**ESMM_CONFIG, "sharding": {"tables": {}}})
    torch.manual_seed(0)
    model = MultiTaskModel(spec, cfg.model, cfg.tasks, device="cpu").eval()
    stats = _saved_run(tmp_path / "run", model, cfg, spec)
    export_run(tmp_path / "run", tmp_path / "model")
    rows = tiny_table(16, seed=2).drop_columns(["request_id", "ts", "recent_categories"])
    served = Predictor(tmp_path / "model").predict(rows)
    trained = _training_path(
        rows.append_column(ROW_ID_COLUMN, pa.array(np.arange(16))), model, spec, stats, cfg
    )
    for name in served:
        assert_float32_close(served[name], trained[name], PREDICTION_ULPS, msg=name)


def test_a_bucketized_number_that_is_not_a_dense_feature_serves_like_training(tmp_path):
    """`price` read only as buckets (no dense price): serving takes it as a number, not as ids, and
    rows sent as JSON floats (float64) land in the buckets their float32 log values do."""
    base = tiny_spec()
    bucketized = SparseFeature("price_bucket", "price_bucket", column="price", boundaries=(20.0, 50.0, 70.0))
    spec = replace(
        base,
        tables={**base.tables, "price_bucket": TableSpec(4, 4, "identity")},
        sparse=(*base.sparse, bucketized),
        dense=tuple(f for f in base.dense if f.column != "price"),
    )
    assert "price" in spec.numeric_columns() and "price" not in spec.id_columns()
    cfg = from_dict(RunConfig, ESMM_CONFIG)
    torch.manual_seed(0)
    model = MultiTaskModel(spec, cfg.model, cfg.tasks, device="cpu").eval()
    stats = _saved_run(tmp_path / "run", model, cfg, spec)
    export_run(tmp_path / "run", tmp_path / "model")
    predictor = Predictor(tmp_path / "model")
    rows = tiny_table(32, seed=2)
    served = predictor.predict(rows)
    trained = _training_path(rows, model, spec, stats, cfg)
    for name in served:
        assert_float32_close(served[name], trained[name], PREDICTION_ULPS, msg=name)
    as_json = [{c: rows[c][i].as_py() for c in predictor.columns} for i in range(rows.num_rows)]
    assert all(isinstance(row["price"], float) for row in as_json)  # Python floats: float64 values
    # Exact: the same 32 rows through the same program on the same machine, so the same arithmetic;
    # only the buckets could differ, and one bucket off moves a score far beyond rounding.
    for name, scores in predictor.predict(as_json).items():
        np.testing.assert_array_equal(scores, served[name])
    # a value just above a cut point in float64 that rounds onto it in float32 takes the cut's bucket
    assert bucket_ids(np.array([np.nextafter(20.0, 21.0)]), (20.0,)).tolist() == [1]
    assert bucket_ids(np.array([np.nextafter(20.0, 19.0)]), (20.0,)).tolist() == [1]  # float32(x) == 20.0


def test_star_whose_domains_do_not_cover_the_specs_is_refused(tmp_path):
    """Serving checks domain ids against the spec's num_domains: a STAR holding weights for fewer
    domains (or reading another column) would index past them, so the export refuses it."""
    spec = replace(tiny_spec(), domain_column="scene", num_domains=3)
    params = {"num_domains": 2, "domain_column": "scene"}
    cfg = from_dict(
        RunConfig,
        {"model": {"arch": "star", "params": params}, "tasks": CHAIN_TASKS, "sharding": {"tables": {}}},
    )
    model = MultiTaskModel(spec, cfg.model, cfg.tasks, device="cpu").eval()
    _saved_run(tmp_path / "run", model, cfg, spec)
    with pytest.raises(ConfigError, match="'scene' with 2 domains, the feature spec has 'scene' with 3"):
        export_run(tmp_path / "run", tmp_path / "model")


def test_a_bfloat16_backbone_serves_within_its_rounding_of_float32(exported, tmp_path):
    """--dense bfloat16: the backbone's weights and matmuls in bfloat16, towers and heads in float32.
    Scores move by bfloat16's rounding (8-bit mantissa: ~2**-9 relative a rounding, a few roundings
    deep), never by a wrong weight: every score within 2e-3 of float32's here, the order kept."""
    model_dir, model, spec, stats, cfg = exported
    manifest = export_run(model_dir.parent / "run", tmp_path / "bf16", dense="bfloat16")
    assert manifest["dense"] == "bfloat16"
    weights = torch.export.load(tmp_path / "bf16" / PROGRAM).state_dict
    backbone = {k: v.dtype for k, v in weights.items() if ".backbone." in k}
    heads = {k: v.dtype for k, v in weights.items() if ".heads." in k}
    assert backbone and set(backbone.values()) == {torch.bfloat16}
    assert heads and set(heads.values()) == {torch.float32}
    rows = tiny_table(256, seed=11)
    low, full = Predictor(tmp_path / "bf16").predict(rows), Predictor(model_dir).predict(rows)
    for name in full:
        difference = np.abs(low[name] - full[name])
        assert 0 < difference.max() <= 2e-3, (name, difference.max())  # measured: 1.2e-4 to 1.8e-4
        ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731
        assert np.corrcoef(ranks(low[name]), ranks(full[name]))[0, 1] > 0.999, name
    # STAR (alone or under ESCM2) computes the task logits inside the backbone: bfloat16 would round
    # the logits themselves, so that export is refused rather than served with tied scores
    spec, star = star_chain()
    _saved_run(tmp_path / "star", MultiTaskModel(spec, star.model, star.tasks, device="cpu"), star, spec)
    with pytest.raises(ConfigError, match="computes the task logits itself"):
        export_run(tmp_path / "star", tmp_path / "star-bf16", dense="bfloat16")
