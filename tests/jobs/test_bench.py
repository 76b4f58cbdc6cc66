"""jobs.bench: FLOP counting against a hand count, and the growth study's and summary's tables.

No timing is asserted anywhere: speed is measured by `make bench`, never by tests.
"""

import datetime as dt
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from jobs.bench.common import day
from jobs.bench.flops import count_flops, model_flops, pooling_flops_per_sample, synthetic_batch
from jobs.bench.growth import fit_line, plan_growth
from jobs.bench.headroom import EVAL_DAY, headroom
from jobs.bench.report import COLUMNS, format_table, summary_rows
from jobs.logsim import World, file_rng
from jobs.make_logs import GeneratorConfig
from mtl_rec.config import from_dict
from mtl_rec.config.model import ModelConfig, parse_tasks
from mtl_rec.evaluation import exact_auc
from mtl_rec.models.model import MultiTaskModel
from tests.pipelines.tables import tiny_spec

TASKS = [
    {"name": "ctr", "label": "click", "tower": {"hidden": [5]}},
    {"name": "cvr", "label": "conversion", "space": "click == 1", "tower": {"hidden": [5]}},
]
MMOE = {
    "arch": "mmoe",
    "params": {"num_experts": 2, "expert": {"hidden": [8, 4]}},
    "dense_arch": {"hidden": [3]},
}


def hand_count() -> tuple[int, int]:
    """Per-sample FLOPs of the tiny MMoE below, forward and backward, counted by hand.

    tiny_spec: 4 sparse features of dim 4 -> 16 pooled; 2 dense features -> dense MLP [3]; In = 19.
    Linear(i, o): 2*i*o forward; backward 2*i*o for the weight gradient, plus 2*i*o for the input
    gradient unless the input is data (the dense MLP's first layer). The gate mix is a broadcast
    product and a sum (mtl_rec.models.layers.mix_experts), not a matmul: the floor counts matmul
    FLOPs only, so it is not in the count.
    """
    linear = lambda i, o: 2 * i * o  # noqa: E731
    dense_mlp = linear(2, 3)
    experts = 2 * (linear(19, 8) + linear(8, 4))
    gates = 2 * linear(19, 2)
    towers = 2 * (linear(4, 5) + linear(5, 1))
    forward = dense_mlp + experts + gates + towers
    backward = dense_mlp + 2 * (experts + gates + towers)
    return forward, backward


def test_flop_count_matches_the_hand_count():
    spec = tiny_spec()
    torch.manual_seed(0)
    model = MultiTaskModel(spec, from_dict(ModelConfig, MMOE), parse_tasks(TASKS, spec.labels), device="cpu")
    forward, backward = hand_count()
    assert (forward, backward) == (1000, 1988)
    for batch_size, list_length in [(16, 1), (64, 3)]:  # per sample: independent of B and of list lengths
        counts = count_flops(model, synthetic_batch(spec, batch_size, list_length))
        assert counts.forward == forward
        assert counts.backward == backward
        assert counts.total == forward + backward
        assert sum(counts.by_op.values()) == forward + backward
        assert set(counts.by_op) == {"aten.addmm", "aten.mm"}  # Linear layers alone


def test_model_flops_cuts_tables_without_changing_the_count():
    spec = tiny_spec()
    cfg = SimpleNamespace(model=from_dict(ModelConfig, MMOE), tasks=parse_tasks(TASKS, spec.labels))
    counts = model_flops(cfg, spec, batch_size=32)
    assert (counts.forward, counts.backward) == hand_count()
    # pooling: every single-hot feature looks up 1 id of dim 4, recent_categories 2.5 on average
    assert pooling_flops_per_sample(spec, {"recent_categories": 2.5}) == 2 * 4 * (3 + 2.5)


def test_growth_plan_keeps_rows_and_per_worker_batch_comparable():
    spec = tiny_spec()
    plan = {run.name: run for run in plan_growth(spec, 10, [1, 2, 4], [2], [1])}
    assert list(plan) == ["base", "rows-x2", "rows-x4", "tables-x2", "workers-x1"]
    assert plan["base"].overrides == ("train.workers=2", "train.max_steps=10")
    assert plan["rows-x4"].overrides == ("train.workers=2", "train.max_steps=40")
    assert plan["workers-x1"].overrides == ("train.workers=1", "train.max_steps=20")  # same rows
    assert "tables.user.num_embeddings=2000" in plan["tables-x2"].spec_overrides
    assert len(plan["tables-x2"].spec_overrides) == len(spec.tables)


def test_fit_line_recovers_fixed_and_per_row_cost_and_flags_a_bend():
    straight = fit_line([(100, 1.0 + 100 * 0.01), (200, 1.0 + 200 * 0.01), (400, 1.0 + 400 * 0.01)])
    assert straight["fixed_s"] == pytest.approx(1.0) and straight["per_row_s"] == pytest.approx(0.01)
    assert straight["max_deviation"] == pytest.approx(0.0, abs=1e-12)
    bent = fit_line([(100, 2.0), (200, 4.0), (400, 16.0)])  # quadratic-ish: far off any line
    assert bent["max_deviation"] > 0.10


@pytest.mark.e2e
@pytest.mark.distributed
def test_growth_and_summary_table_from_a_tiny_run(generated_logs, tmp_path, ray_local):
    """Two real tiny training runs (rows x1, x2) through `python -m jobs.bench growth`."""
    from jobs.bench.__main__ import main

    cache = tmp_path / "cache"
    shutil.copytree(generated_logs, cache / "logs")  # day(0) = 2026-11-18, 30k rows
    out = tmp_path / "growth.json"
    argv = ["growth", "--cache", str(cache), "--out", str(out), "--rows-per-day", "30000"]
    argv += [
        "--train-batch-size",
        "512",
        "--growth-rows",
        "1,2",
        "--growth-tables",
        "",
        "--growth-workers",
        "",
    ]
    main(argv)

    results = json.loads(out.read_text())
    growth = results["growth"]
    assert growth["base_steps"] == 22_500 // (2 * 2 * 512)  # x2 reads 3/4 of the day
    assert (
        set(growth["rows"]) == {"1", "2"}
        and set(growth["tables"]) == {"1"}
        and set(growth["workers"]) == {"2"}
    )
    base, double = growth["rows"]["1"], growth["rows"]["2"]
    assert base["rows"] == growth["base_steps"] * 2 * 512  # lockstep steps of 2 workers x 512
    assert double["rows"] <= 2 * base["rows"]  # a rank out of rows pads: its steps add no rows
    assert double["rows_ratio"] == double["rows"] / base["rows"] > 1.5 and base["rows_ratio"] == 1.0
    assert double["linearity"] == pytest.approx(double["time_ratio"] / double["rows_ratio"])
    assert len(double["peak_rss_mb_per_worker"]) == 2 and min(double["peak_rss_mb_per_worker"]) > 0

    fit = growth["rows_fit"]  # two points lie on their line: no deviation to judge
    assert fit["max_deviation"] is None
    for point in (base, double):
        assert fit["fixed_s"] + fit["per_row_s"] * point["rows"] == pytest.approx(point["seconds"])

    rows = summary_rows(results)
    assert [(r.section, r.measure) for r in rows] == [
        ("growth", "rows x2: time"),
        ("growth", "rows: time = fixed + per row"),
        ("growth", "tables x1: peak RSS per worker"),
    ]
    assert rows[0].met is None and rows[1].met is None
    table = format_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == len(COLUMNS) + 1 for line in table)
    assert [c.strip() for c in table[0].strip("|").split("|")] == list(COLUMNS)
    assert results["summary"] == [dict(zip(results["summary"][0], r.cells())) for r in rows]


def test_headroom_starts_at_the_oracle_and_every_part_taken_out_costs_auc():
    result = headroom(40_000)
    oracle, *single, every = result["runs"]
    assert oracle["removed"] == [] and every["removed"] == ["per_id", "domain_cross", "segment_cross"]
    # the oracle row is the truth columns' own AUC: the same rows, the same arithmetic, so exact
    world = World(GeneratorConfig(seed=0))
    epoch_day = (day(EVAL_DAY) - dt.date(1970, 1, 1)).days
    truth = world.sample(file_rng(0, epoch_day, 0), epoch_day, 40_000, 0.0, 1.0).columns
    assert oracle["auc"]["ctr"] == exact_auc(truth["click"], truth["_truth_p_click"])
    clicked = truth["click"] == 1
    cvr = exact_auc(truth["conversion"][clicked], truth["_truth_p_conversion_given_click"][clicked])
    assert oracle["auc"]["cvr"] == cvr
    for run in single:  # each part carries signal on the click and on the purchase side
        assert run["auc"]["ctr"] < oracle["auc"]["ctr"] - 0.003, run
        assert run["auc"]["cvr"] < oracle["auc"]["cvr"] - 0.003, run
    for task, auc in every["auc"].items():  # all three cost more than any one of them
        assert auc < min(run["auc"][task] for run in single) - 0.005, (task, every)
