"""The synthetic log generator: layout, schema, funnel, truth, determinism and the hidden model's knobs."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from jobs.logsim import World, file_rng
from jobs.make_logs import SCHEMA, GeneratorConfig, generate_logs, main

START = dt.date(2026, 11, 18)
ROWS_PER_DAY = 20_000
CONFIG = GeneratorConfig(seed=0, rows_per_file=8_000, row_group_size=4_096)
# Small vocabularies build the hidden model in a fraction of a second, for tests that need several.
SMALL = GeneratorConfig(user_vocab=100_000, item_vocab=30_000, num_shops=20_000, calibration_rows=70_000)


def read_day(root: Path, date: dt.date) -> pa.Table:
    files = sorted((root / f"dt={date.isoformat()}").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def column(table: pa.Table, name: str) -> np.ndarray:
    return table[name].to_numpy()


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    generate_logs(root, START, 2, ROWS_PER_DAY, CONFIG, workers=1, verbose=False)
    return root


@pytest.fixture(scope="module")
def days(logs) -> list[pa.Table]:
    return [read_day(logs, START), read_day(logs, START + dt.timedelta(days=1))]


@pytest.fixture(scope="module")
def both(days) -> pa.Table:
    return pa.concat_tables(days)


def test_hive_partitions_files_and_row_groups(logs):
    assert sorted(p.name for p in logs.iterdir()) == ["dt=2026-11-18", "dt=2026-11-19"]
    for partition in logs.iterdir():
        files = sorted(partition.iterdir())
        assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
        meta = [pq.ParquetFile(f).metadata for f in files]
        assert [m.num_rows for m in meta] == [8_000, 8_000, 4_000]  # the last file is the short one
        assert [meta[0].row_group(i).num_rows for i in range(meta[0].num_row_groups)] == [4_096, 3_904]
        assert meta[0].row_group(0).column(0).compression == "ZSTD"


def test_schema_is_exact_and_covers_the_feature_spec(logs):
    schema = pq.read_schema(next(logs.glob("dt=*/part-00000.parquet")))
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in SCHEMA]
    assert "dt" not in schema.names  # the partition key lives in the path only
    types = {f.name: f.type for f in SCHEMA}
    assert types["request_id"] == types["user_id"] == types["shop"] == pa.int64()
    assert types["recent_categories"] == types["recent_brands"] == pa.list_(pa.int64())
    assert types["price"] == types["session_depth"] == types["_truth_p_ctcvr"] == pa.float32()
    assert types["click"] == types["cart"] == types["conversion"] == pa.int8()
    spec = yaml.safe_load((Path(__file__).parents[2] / "jobs/configs/features.yaml").read_text())
    for feature in spec["sparse"]:
        expected = pa.list_(pa.int64()) if feature.get("multi_hot") else pa.int64()
        for column in feature.get("cross") or [feature["name"]]:  # a cross reads its columns
            assert types[column] == expected, feature
    assert all(types[feature["name"]] == pa.float32() for feature in spec["dense"])
    assert all(types[label] == pa.int8() for label in spec["labels"])


def test_funnel_holds_everywhere(both):
    click, cart, conversion = (column(both, name) for name in ("click", "cart", "conversion"))
    for label in (click, cart, conversion):
        assert set(np.unique(label)) == {0, 1}
    assert (cart <= click).all() and (conversion <= cart).all()


def test_request_ids_unique_and_time_ordered(days):
    ids = np.concatenate([column(day, "request_id") for day in days])
    assert len(np.unique(ids)) == len(ids)
    for offset, day in enumerate(days):
        day_number = (START + dt.timedelta(days=offset) - dt.date(1970, 1, 1)).days
        assert (column(day, "request_id") == (day_number << 32) + np.arange(ROWS_PER_DAY)).all()
        ts = column(day, "ts")
        assert (ts // 86_400 == day_number).all() and (np.diff(ts) >= 0).all()
        assert (column(day, "hour") == ts % 86_400 // 3_600).all()
        assert (column(day, "weekday") == (START + dt.timedelta(days=offset)).weekday()).all()


def test_values_in_range(both):
    bounds = {"age_bucket": 8, "gender": 3, "user_level": 10, "occupation": 32, "price_level": 10, "hour": 24,
              "weekday": 7, "device": 5, "os": 4, "network": 4, "slot_position": 10, "page": 20,
              "city": 400, "category": 2_000, "brand": 50_000, "shop": 150_000}  # fmt: skip
    for name, bound in bounds.items():
        values = column(both, name)
        assert values.min() >= 0 and values.max() < bound, name
    assert len(np.unique(column(both, "price_level"))) == 10
    assert len(np.unique(column(both, "shop"))) > 5_000  # a wide vocabulary, not a handful of ids
    for field in SCHEMA:
        if field.type == pa.float32():
            values = column(both, field.name)
            assert np.isfinite(values).all() and values.min() >= 0, field.name
    assert column(both, "discount").max() < 1
    truth = [column(both, f.name) for f in SCHEMA if f.name.startswith("_truth_")]
    assert all(t.max() <= 1 for t in truth)


def test_attributes_are_a_function_of_the_id(both):
    for key, attributes in (("user_id", ("age_bucket", "gender", "city", "occupation")),
                            ("item_id", ("category", "brand", "shop", "price", "price_level"))):  # fmt: skip
        rows = np.stack([column(both, key)] + [column(both, name) for name in attributes], axis=1)
        assert len(np.unique(rows, axis=0)) == len(np.unique(column(both, key))), key


def test_multi_hot_lists_vary_and_include_empties(both):
    for name, longest in (("recent_categories", 20), ("recent_brands", 10)):
        lengths = both[name].combine_chunks().value_lengths().to_numpy()
        assert 0.05 < (lengths == 0).mean() < 0.35, name
        assert lengths.max() == longest and len(np.unique(lengths)) > longest // 2, name
    values = both["recent_categories"].combine_chunks().flatten().to_numpy()
    assert values.min() >= 0 and values.max() < 2_000


def test_recent_categories_carry_signal(both):
    """A row's recent categories name its item's category more often than chance."""
    lists = both["recent_categories"].combine_chunks()
    rows = lists.value_parent_indices().to_numpy()
    same = lists.flatten().to_numpy() == column(both, "category")[rows]
    hit = np.bincount(rows, weights=same, minlength=len(both))
    click = column(both, "click").astype(bool)
    assert hit[click].mean() > 1.1 * hit[~click].mean()


def test_truth_columns_match_labels(both):
    p = {f.name: column(both, f.name).astype(np.float64) for f in SCHEMA if f.name.startswith("_truth_")}
    conversion_given_click = p["_truth_p_cart_given_click"] * p["_truth_p_conversion_given_cart"]
    np.testing.assert_allclose(
        p["_truth_p_conversion_given_click"], conversion_given_click, rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(
        p["_truth_p_ctcvr"], p["_truth_p_click"] * p["_truth_p_conversion_given_click"], rtol=1e-6, atol=1e-9
    )
    click, cart, conversion = (column(both, name).astype(bool) for name in ("click", "cart", "conversion"))
    stages = [
        (np.ones_like(click), click, p["_truth_p_click"]),
        (click, cart, p["_truth_p_cart_given_click"]),
        (cart, conversion, p["_truth_p_conversion_given_cart"]),
        (click, conversion, p["_truth_p_conversion_given_click"]),
        (np.ones_like(click), conversion, p["_truth_p_ctcvr"]),
    ]
    for space, label, prob in stages:
        expected, variance = prob[space].sum(), (prob[space] * (1 - prob[space])).sum()
        assert abs(label[space].sum() - expected) < 4 * np.sqrt(variance)


def test_rates_and_oracle_auc(both):
    click, cart, conversion = (column(both, name).astype(bool) for name in ("click", "cart", "conversion"))
    assert 0.04 < click.mean() < 0.08
    assert 0.2 < cart[click].mean() < 0.35 and 0.3 < conversion[cart].mean() < 0.5
    assert roc_auc_score(click, column(both, "_truth_p_click")) > 0.7
    assert roc_auc_score(cart[click], column(both, "_truth_p_cart_given_click")[click]) > 0.65


def test_zipf_head_covers_many_impressions(both):
    counts = np.sort(np.unique(column(both, "user_id"), return_counts=True)[1])[::-1]
    assert counts[: max(1, len(counts) // 100)].sum() > 0.15 * counts.sum()
    item_counts = np.sort(np.unique(column(both, "item_id"), return_counts=True)[1])[::-1]
    assert item_counts[: max(1, len(item_counts) // 100)].sum() > 0.15 * item_counts.sum()


def test_new_ids_appear_each_day(days):
    for key, vocab in (("user_id", CONFIG.user_vocab), ("item_id", CONFIG.item_vocab)):
        first, second = (column(day, key) for day in days)
        fresh = np.setdiff1d(second, first)
        assert (fresh >= vocab).sum() > 50, key  # ids born on day 2 ...
        assert not np.isin(second[second >= vocab], first).any(), key  # ... never seen on day 1
        assert 0.005 < (second >= vocab).mean() < 0.06, key


def test_same_seed_same_tables_whatever_days_run_with_it(days, tmp_path):
    generate_logs(tmp_path / "again", START, 2, ROWS_PER_DAY, CONFIG, workers=1, verbose=False)
    for offset, day in enumerate(days):
        assert read_day(tmp_path / "again", START + dt.timedelta(days=offset)).equals(day)
    second = START + dt.timedelta(days=1)
    generate_logs(tmp_path / "alone", second, 1, ROWS_PER_DAY, CONFIG, workers=1, verbose=False)
    assert read_day(tmp_path / "alone", second).equals(days[1])


def test_process_pool_writes_the_same_tables(tmp_path):
    config = replace(SMALL, rows_per_file=2_000)
    for workers in (1, 2):
        generate_logs(tmp_path / str(workers), START, 2, 5_000, config, workers=workers, verbose=False)
    for offset in range(2):  # exact: each file is the same single-threaded NumPy work, whichever process
        date = START + dt.timedelta(days=offset)
        assert read_day(tmp_path / "1", date).equals(read_day(tmp_path / "2", date))


def test_different_seed_different_tables(tmp_path):
    tables = []
    for seed in (0, 1):
        generate_logs(tmp_path / str(seed), START, 1, 5_000, replace(SMALL, seed=seed),
                      workers=1, verbose=False)  # fmt: skip
        tables.append(read_day(tmp_path / str(seed), START))
    assert not tables[0].equals(tables[1])
    assert not np.array_equal(column(tables[0], "user_id"), column(tables[1], "user_id"))


def _conversion_gap(tmp_path: Path, **knobs) -> float:
    """Mean P(conversion | click) of clicked rows minus that of unclicked rows, relative to the mean."""
    generate_logs(tmp_path, START, 1, 40_000, replace(SMALL, **knobs), workers=1, verbose=False)
    table = read_day(tmp_path, START)
    p, click = column(table, "_truth_p_conversion_given_click"), column(table, "click").astype(bool)
    return float((p[click].mean() - p[~click].mean()) / p.mean())


def test_selection_bias_widens_the_clicked_unclicked_gap(tmp_path):
    independent = _conversion_gap(tmp_path / "a", selection_bias=0.0, task_correlation=0.0)
    assert abs(independent) < 0.15  # about equal: clicking says nothing about converting
    unbiased = _conversion_gap(tmp_path / "b", selection_bias=0.0)
    biased = _conversion_gap(tmp_path / "c", selection_bias=2.0)
    assert 0 < unbiased < biased


def test_rerun_replaces_stale_files(tmp_path):
    config = replace(SMALL, rows_per_file=1_000)
    generate_logs(tmp_path, START, 1, 3_000, config, workers=1, verbose=False)
    files = generate_logs(tmp_path, START, 1, 1_500, config, workers=1, verbose=False)
    assert sorted(files) == sorted((tmp_path / "dt=2026-11-18").iterdir())
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]


def test_cli_writes_and_reports(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--start", "2026-11-18", "--days", "1", "--rows-per-day", "6000",
            "--rows-per-file", "2500", "--seed", "3", "--selection-bias", "0.5",
            "--workers", "1"]  # fmt: skip
    files = main(argv)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert pq.ParquetFile(files[-1]).metadata.num_rows == 1_000
    out = capsys.readouterr().out
    assert "wrote 6,000 rows" in out and "rows/s" in out and "2026-11-18" in out


@pytest.mark.parametrize(
    "knobs", [{"task_correlation": 1.5}, {"selection_bias": -1.0}, {"click_rate": 0.0}, {"rows_per_file": 0}]
)
def test_config_rejects_bad_knobs(knobs):
    with pytest.raises(ValueError):
        GeneratorConfig(**knobs)


def test_domain_column_has_its_shares_and_its_own_click_rate(both):
    domain = column(both, "domain")
    assert domain.min() == 0 and domain.max() == len(CONFIG.domain_shares) - 1
    shares = np.bincount(domain, minlength=3) / len(domain)
    np.testing.assert_allclose(shares, CONFIG.domain_shares, atol=0.01)  # 40k rows: std of a share < 0.003
    p_click = column(both, "_truth_p_click")
    rates = [float(p_click[domain == d].mean()) for d in range(3)]  # shifts 0, +0.6, -0.5 on the logit
    assert rates[1] > 1.3 * rates[0] and rates[0] > 1.3 * rates[2], rates
    click = column(both, "click")
    assert click[domain == 1].mean() > click[domain == 0].mean() > click[domain == 2].mean()


def test_domain_knobs_change_the_labels_and_nothing_else(tmp_path):
    flat = {"domain_click_shift": (0.0, 0.0, 0.0), "domain_buy_shift": (0.0, 0.0, 0.0)}
    tables = {}
    for name, knobs in (("default", {}), ("flat", {**flat, "domain_interaction_scale": 0.0})):
        generate_logs(tmp_path / name, START, 1, 20_000, replace(SMALL, **knobs), workers=1, verbose=False)
        tables[name] = read_day(tmp_path / name, START)
    outcome = {"click", "cart", "conversion"} | {f.name for f in SCHEMA if f.name.startswith("_truth_")}
    features = [name for name in SCHEMA.names if name not in outcome]
    assert "domain" in features
    assert tables["default"].select(features).equals(tables["flat"].select(features))
    assert not np.array_equal(
        column(tables["default"], "_truth_p_click"), column(tables["flat"], "_truth_p_click")
    )
    domain, p_click = column(tables["flat"], "domain"), column(tables["flat"], "_truth_p_click")
    rates = [p_click[domain == d].mean() for d in range(3)]  # no domain effect: the scenes look alike
    assert max(rates) < 1.1 * min(rates), rates


@pytest.mark.parametrize(
    "knobs",
    [
        {"domain_shares": (0.5, 0.4)},
        {"domain_shares": (0.7, 0.4, -0.1)},
        {"domain_click_shift": (0.0, 1.0)},
        {"domain_interaction_scale": -0.1},
        {"domain_task_correlation": (0.5, 0.5)},
        {"domain_task_correlation": (0.5, 0.5, 1.2)},
    ],
)
def test_config_rejects_bad_domain_knobs(knobs):
    with pytest.raises(ValueError, match="domain"):
        GeneratorConfig(**knobs)


def test_domain_task_correlation_sets_how_each_domains_purchases_follow_its_clicks(tmp_path):
    """rho 1 in domains 0-1, 0 in domain 2, no selection bias: a cart's logit is affine in the click
    affinity in domains 0-1 (corr 1) and independent of it in domain 2; the features stay the same."""
    knobs = {"domain_task_correlation": (1.0, 1.0, 0.0), "selection_bias": 0.0}
    generate_logs(tmp_path / "a", START, 1, 20_000, replace(SMALL, **knobs), workers=1, verbose=False)
    generate_logs(
        tmp_path / "b", START, 1, 20_000, replace(SMALL, selection_bias=0.0), workers=1, verbose=False
    )
    table, default = read_day(tmp_path / "a", START), read_day(tmp_path / "b", START)
    logit = lambda p: np.log(p.astype(np.float64)) - np.log1p(-p.astype(np.float64))  # noqa: E731
    affinity = logit(column(table, "_truth_p_click")) + SMALL.position_bias * np.log1p(
        column(table, "slot_position")
    )
    cart = logit(column(table, "_truth_p_cart_given_click"))
    domain = column(table, "domain")
    correlation = [np.corrcoef(affinity[domain == d], cart[domain == d])[0, 1] for d in range(3)]
    assert correlation[0] > 0.999 and correlation[1] > 0.999 and abs(correlation[2]) < 0.1, correlation
    features = [name for name in SCHEMA.names if name not in {"cart", "conversion"} and "given" not in name]
    features = [name for name in features if name != "_truth_p_ctcvr"]
    assert table.select(features).equals(default.select(features))  # only the post-click outcomes move


def test_world_without_parts_keeps_the_rows_and_takes_out_exactly_those_parts():
    config = GeneratorConfig(seed=0)
    world, day, rows = World(config), 20_600, 30_000  # a day with its own cohort of new ids
    stream = lambda: file_rng(config.seed, day, 0)  # noqa: E731
    truth = world.sample(stream(), day, rows, 0.0, 1.0).columns
    # exact: the same arithmetic on the same rows
    same = world.without(()).probabilities(stream(), day, rows, 0.0, 1.0)
    for name in ("p_click", "p_cart_given_click", "p_conversion_given_click"):
        assert np.array_equal(same[f"_truth_{name}"], truth[f"_truth_{name}"])

    # Without the domain x category effects the click logit is the true one minus exactly them.
    removed = world.without(("domain_cross",)).probabilities(stream(), day, rows, 0.0, 1.0)
    to_logit = lambda p: np.log(p.astype(np.float64)) - np.log1p(-p.astype(np.float64))  # noqa: E731
    effect = world.effects["domain_click"][truth["domain"], truth["category"]]  # [rows]
    effect = effect - np.asarray(config.domain_click_shift, np.float64)[truth["domain"]]
    assert effect.std() > 0.2  # the check below can fail
    np.testing.assert_allclose(
        to_logit(truth["_truth_p_click"]) - to_logit(removed["_truth_p_click"]), effect, atol=1e-4
    )
    # Without per-id parts the per-entity effects are zero in the copy, and only there.
    per_id = world.without(("per_id",))
    assert not per_id.base["user"]["click_bias"].any() and not per_id.base["item"]["buy_quality"].any()
    assert world.base["user"]["click_bias"].std() > 0.1, "the world itself must keep its parts"
    assert per_id.without(("domain_cross",)).removed == ("per_id", "domain_cross")  # parts add up
    with pytest.raises(ValueError, match="unknown parts"):
        world.without(("ids",))
