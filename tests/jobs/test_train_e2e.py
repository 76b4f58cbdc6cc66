"""End to end: generated logs -> Ray Data -> 2 Ray Train workers (gloo, DMP) -> exact metrics and a
checkpoint. Sized so a 2-core machine trains each model in well under a minute."""

import datetime as dt
import json

import pyarrow.parquet as pq
import pytest

from jobs.train import train
from mtl_rec.config.run import load_run_config

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

# A world where ids repeat (20k users, 5k items) and clicks are frequent (25%), so 300k training rows
# hold enough clicked rows for the post-click tasks. The tables are sized to the world.
SPEC = (
    "tables.user_id.num_embeddings=30000",
    "tables.item_id.num_embeddings=8000",
    "tables.shop.num_embeddings=4000",
    "tables.brand.num_embeddings=4000",
)
SETTINGS = ("data.batch_size=512", "model.params.expert.hidden=[128, 64]")


@pytest.fixture(scope="module")
def e2e_logs(tmp_path_factory):
    from jobs.make_logs import GeneratorConfig, generate_logs

    root = tmp_path_factory.mktemp("e2e-logs")
    config = GeneratorConfig(
        seed=0,
        user_vocab=20_000,
        item_vocab=5_000,
        new_users_per_day=500,
        new_items_per_day=100,
        num_brands=2_000,
        num_shops=3_000,
        click_rate=0.25,
        cart_rate=0.4,
        conversion_rate=0.4,
        rows_per_file=50_000,
        calibration_rows=40_000,
    )
    generate_logs(root, dt.date(2026, 11, 18), 3, 150_000, config, verbose=False)
    return root


def _rows(logs, day):
    return sum(pq.read_metadata(p).num_rows for p in (logs / f"dt={day}").glob("*.parquet"))


def test_mmoe_trains_on_every_row_and_approaches_the_oracle(e2e_logs, tmp_path, ray_local):
    cfg = load_run_config("jobs/configs/mmoe.yaml", SETTINGS)
    out = tmp_path / "run"
    metrics = train(cfg, str(e2e_logs), "2026-11-18..2026-11-19", "2026-11-20", out, SPEC)

    # every training row once (split with equal=False: none dropped), every evaluation row counted
    assert (
        metrics["train"]["rows"] == _rows(e2e_logs, "2026-11-18") + _rows(e2e_logs, "2026-11-19") == 300_000
    )
    assert metrics["train"]["workers"] == 2
    tasks = metrics["tasks"]
    assert set(tasks) == {"ctr", "cvr", "cart"}
    assert tasks["ctr"]["rows"] == _rows(e2e_logs, "2026-11-20") == 150_000
    clicked = pq.read_table(list((e2e_logs / "dt=2026-11-20").glob("*.parquet")), columns=["click"])["click"]
    assert tasks["cvr"]["rows"] == tasks["cart"]["rows"] == clicked.to_numpy().sum()
    for name, bound in {"ctr": 0.03, "cvr": 0.05, "cart": 0.05}.items():
        m = tasks[name]
        assert m["oracle_auc"] is not None and m["auc"] >= m["oracle_auc"] - bound, (name, m)

    assert json.loads((out / "checkpoint" / "MANIFEST.json").read_text())["complete"] is True
    for name in ("config.yaml", "plan.json", "feature_stats.json"):
        assert (out / "checkpoint" / name).exists() and (out / name).exists()
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan) == set(cfg.feature_spec().tables)
    assert {p["sharding_type"] for p in plan.values()} <= {
        "table_wise",
        "column_wise",
        "table_column_wise",
        "data_parallel",
    }
    assert metrics["train"]["history"] and metrics["data"]["quarantine"]["rows"] == 0


@pytest.fixture(scope="module")
def selection_biased_logs(tmp_path_factory):
    """Strong sample-selection bias (clicked users convert far better) and scarce clicks (3%)."""
    from jobs.make_logs import GeneratorConfig, generate_logs

    root = tmp_path_factory.mktemp("ssb-logs")
    config = GeneratorConfig(
        seed=1,
        user_vocab=20_000,
        item_vocab=5_000,
        new_users_per_day=500,
        new_items_per_day=100,
        num_brands=2_000,
        num_shops=3_000,
        selection_bias=2.0,
        task_correlation=0.5,
        click_rate=0.03,
        rows_per_file=50_000,
        calibration_rows=40_000,
    )
    generate_logs(root, dt.date(2026, 11, 18), 3, 150_000, config, verbose=False)
    return root


def test_esmm_cvr_beats_a_click_space_only_cvr_model(selection_biased_logs, tmp_path, ray_local):
    # One worker and preserved block order: both runs are reproducible, so the comparison is too.
    settings = ("data.batch_size=512", "data.deterministic=true", "train.workers=1")
    results = {}
    for preset in ("esmm", "cvr_click_space"):
        cfg = load_run_config(f"jobs/configs/{preset}.yaml", settings)
        results[preset] = train(
            cfg, str(selection_biased_logs), "2026-11-18..2026-11-19", "2026-11-20", tmp_path / preset, SPEC
        )["tasks"]["cvr"]
    esmm, click_only = results["esmm"], results["cvr_click_space"]
    assert esmm["space"] == click_only["space"] == "click == 1"  # both scored on the same clicked rows
    assert esmm["rows"] == click_only["rows"] and esmm["oracle_auc"] == click_only["oracle_auc"]
    assert esmm["auc"] > click_only["auc"], results
