"""jobs.compare_models: per-arch configs, parameter counts against a hand count, and the table against
the runs' own metrics.json."""

import json
from pathlib import Path

import pytest
import yaml

import jobs.compare_models
from jobs.compare_models import arch_config, main, parameter_counts, to_markdown
from mtl_rec.config import ConfigError
from mtl_rec.config.run import SINGLE_PASS
from tests.pipelines.tables import TINY_SPEC

BASE = "jobs/configs/mmoe.yaml"
SMALL_TABLES = [  # generated_logs has 30k rows a day: smaller tables start faster and change nothing here
    "--spec-set",
    "tables.user_id.num_embeddings=30000",
    "--spec-set",
    "tables.item_id.num_embeddings=8000",
    "--spec-set",
    "tables.shop.num_embeddings=4000",
    "--spec-set",
    "tables.brand.num_embeddings=4000",
]


@pytest.fixture
def tiny_base(tmp_path):
    """A base run config on the tiny pipeline spec plus a two-domain `scene` column."""
    spec = {**TINY_SPEC, "domain_column": "scene", "num_domains": 2}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    base = {
        "features": str(tmp_path / "spec.yaml"),
        "model": {"arch": "mmoe", "dense_arch": {"hidden": [4]}},
        "tasks": [
            {"name": "ctr", "label": "click", "tower": {"hidden": [3]}},
            {"name": "cvr", "label": "conversion", "space": "click == 1", "tower": {"hidden": [3]}},
        ],
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    return tmp_path / "base.yaml"


def test_parameter_counts_equal_a_hand_count(tiny_base):
    # tables user 1000 x 4, cat 50 x 4, dev 3 x 4; input = 4 pooled features x 4 + dense_arch's 4 = 20
    embedding = 1000 * 4 + 50 * 4 + 3 * 4
    dense_arch = 2 * 4 + 4  # 2 dense features -> 4 (the presets' own dense_arch overridden)
    small = "model.dense_arch={hidden: [4]}"
    cfg, _ = arch_config("shared_bottom", tiny_base, [small, "model.params={bottom: {hidden: [8]}}"])
    towers = 2 * ((8 * 3 + 3) + (3 + 1))  # per task: 8 -> 3 -> logit
    dense = dense_arch + (20 * 8 + 8) + towers
    assert parameter_counts(cfg) == {"dense": dense, "embedding": embedding, "total": dense + embedding}

    params = "{num_domains: 2, domain_column: scene, hidden: [4], auxiliary: {hidden: [2]}, "
    params += "domain_embedding_dim: 3}"
    cfg, preset = arch_config("star", tiny_base, [small, f"model.params={params}"])
    assert preset.endswith("jobs/configs/star.yaml")  # its model section came from the preset ...
    assert [t.name for t in cfg.tasks] == ["ctr", "cvr"]  # ... its tasks from the base (the preset's differ)
    norm = 2 * 20 + 2 * (2 * 20)  # gamma, beta [20]; per-domain gamma, beta [2, 20]
    star_layer = (20 * 4 + 4) + 2 * (20 * 4 + 4)  # shared weight and bias; per-domain weight and bias
    star_logits = (4 * 2 + 2) + 2 * (4 * 2 + 2)  # 4 -> 2 task logits, shared and per domain
    auxiliary = 2 * 3 + ((3 + 20) * 2 + 2) + (2 * 2 + 2)  # domain embedding; MLP over [emb, z]; logits
    towers = 2 * ((1 * 3 + 3) + (3 + 1))  # the base's towers on each [B, 1] logit: 1 -> 3 -> 1
    dense = dense_arch + norm + star_layer + star_logits + auxiliary + towers
    assert parameter_counts(cfg) == {"dense": dense, "embedding": embedding, "total": dense + embedding}


def test_arch_configs_take_the_preset_model_or_the_default_params():
    star, preset = arch_config("star", BASE, ["train.max_steps=7"])
    assert preset.endswith("star.yaml") and star.model.params["num_domains"] == 3
    assert all(t.tower.hidden == () for t in star.tasks)  # same tasks as the base: the preset's towers
    assert star.train.max_steps == 7
    omoe, preset = arch_config("omoe", BASE, [])  # no omoe.yaml: the base model with its arch replaced
    assert preset is None and omoe.model.arch == "omoe" and omoe.model.params == {}
    base_dense_arch = yaml.safe_load(Path(BASE).read_text())["model"]["dense_arch"]["hidden"]  # kept
    assert omoe.model.dense_arch.hidden == tuple(base_dense_arch) and [t.name for t in omoe.tasks] == [
        "ctr",
        "cvr",
        "cart",
    ]


def test_a_base_reads_its_spec_as_jobs_train_does(tmp_path, monkeypatch):
    """The base's `features:` is read from its own folder, or the features.yaml beside it: never the
    working directory's demo spec."""
    base = tmp_path / "project" / "base.yaml"
    base.parent.mkdir()
    data = yaml.safe_load(Path(BASE).read_text())
    base.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "features"}))
    spec = {**TINY_SPEC, "labels": ["click", "cart", "conversion"]}
    (base.parent / "features.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(Path(BASE).resolve().parents[2])  # the repository: jobs/configs/features.yaml is here
    cfg, _ = arch_config("omoe", base, [])
    assert Path(cfg.features) == base.parent / "features.yaml"
    assert parameter_counts(cfg)["embedding"] == (1000 + 50 + 3) * 4  # the tiny spec's tables


def test_a_preset_naming_other_tasks_falls_back_to_default_params(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs.compare_models, "CONFIGS", tmp_path)
    preset = {
        "model": {"arch": "asymmetric", "params": {"reads": {"conversion": ["click"]}}},
        "tasks": [{"name": "click", "label": "click"}, {"name": "conversion", "label": "conversion"}],
    }
    (tmp_path / "asymmetric.yaml").write_text(yaml.safe_dump(preset))
    cfg, used = arch_config("asymmetric", BASE, [])  # its reads name tasks the base does not have
    assert used is None and cfg.model.params == {} and [t.name for t in cfg.tasks] == ["ctr", "cvr", "cart"]
    with pytest.raises(ConfigError, match="fits neither with its preset's params nor with its defaults"):
        arch_config("asymmetric", BASE, ["model.params.reads={nope: [ctr]}"])


def test_markdown_rows_hold_auc_and_gap_per_target_and_the_skipped():
    result = {
        "tasks": {"ctr": {"auc": 0.7, "oracle_auc": 0.75, "gap": 0.05}},
        "samples_per_s": 1234.5,
        "parameters": {"dense": 1000, "embedding": 20000, "total": 21000},
    }
    summary = {
        "base": "b.yaml",
        "logs": "L",
        "train_dates": "d1",
        "eval_dates": "d2",
        "archs": {"mmoe": result, "escm2": {"skipped": "escm2 fits neither\nsecond line"}},
    }
    lines = to_markdown(summary).splitlines()
    assert "| oracle | 0.7500 |  | | | |" in lines
    assert "| mmoe | 0.7000 | +0.0500 | 1,234 | 1,000 | 20,000 |" in lines
    assert "| escm2 | skipped: escm2 fits neither |" in lines


@pytest.mark.e2e
@pytest.mark.distributed
def test_compare_models_writes_the_runs_metrics(generated_logs, tmp_path, ray_local):
    out = tmp_path / "compare"
    archs = ["shared_bottom", "star"]
    argv = ["--logs", str(generated_logs), "--out", str(out), "--archs", ",".join(archs)]
    one_pass = [arg for setting in SINGLE_PASS for arg in ("--set", setting)]  # no hold-out to score
    summary = main([*argv, "--max-steps", "3", "--batch-size", "1024", *one_pass, *SMALL_TABLES])
    assert json.loads((out / "compare.json").read_text()) == summary
    assert list(summary["archs"]) == archs
    table = (out / "compare.md").read_text().splitlines()
    oracle = next(line for line in table if line.startswith("| oracle |"))
    for arch in archs:
        result, metrics = summary["archs"][arch], json.loads((out / arch / "metrics.json").read_text())
        assert metrics["train"]["steps"] == result["steps"] == 3
        assert result["samples_per_s"] == metrics["train"]["samples_per_s"]
        assert set(result["tasks"]) == set(metrics["tasks"]) == {"ctr", "cvr", "cart"}
        row = next(line for line in table if line.startswith(f"| {arch} |")).strip("|").split("|")
        cells = [cell.strip() for cell in row]
        for i, (task, m) in enumerate(metrics["tasks"].items()):
            assert (
                result["tasks"][task]["auc"] == m["auc"]
                and result["tasks"][task]["oracle_auc"] == m["oracle_auc"]
            )
            assert cells[1 + 2 * i] == f"{m['auc']:.4f}"
            assert cells[2 + 2 * i] == f"{m['oracle_auc'] - m['auc']:+.4f}"
            assert f"| {m['oracle_auc']:.4f} |" in oracle
        cfg, _ = arch_config(arch, BASE, [*SINGLE_PASS, "train.max_steps=3", "data.batch_size=1024"])
        counts = parameter_counts(cfg, tuple(SMALL_TABLES[1::2]))
        assert result["parameters"] == counts
        assert cells[-3:] == [
            f"{metrics['train']['samples_per_s']:,.0f}",
            f"{counts['dense']:,}",
            f"{counts['embedding']:,}",
        ]
    assert (
        summary["archs"]["star"]["parameters"]["dense"]
        > summary["archs"]["shared_bottom"]["parameters"]["dense"]
    )
    with pytest.raises(SystemExit):
        main([*argv, "--archs", "mmmoe"])
    with pytest.raises(FileExistsError, match="not empty"):
        main([*argv, "--max-steps", "1"])
