"""Train/serve parity: checkpoints written by 2 Ray Train workers, exported (jobs.export), scored by
mtl_rec.serve.Predictor and by jobs.predict, equal jobs.evaluate's scores per request id; jobs.predict
counts every row once under bad input.

Different batch shapes (evaluate's 16k-row batches on 2 ranks, the Predictor's whole day) reorder
float32 sums in the last bits: probabilities agree to 1e-6, the goal of issue 16, ~100x above that
noise and ~1e4x below a wrong weight or a wrong id map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs.evaluate import evaluate
from jobs.export import main as export_main
from jobs.predict import main as predict_main
from jobs.predict import predict
from jobs.train import train
from mtl_rec.run_config import load_run_config
from mtl_rec.serve import Predictor
from pipelines.errors import BadRowsError
from tests.jobs.test_evaluate import evaluated  # noqa: F401  (the shared session fixture)

pytestmark = pytest.mark.e2e
DAY = "2026-11-19"
PARITY = 1e-6


def _evaluate_scores(report_dir: Path, day: str, targets) -> dict[int, np.ndarray]:
    table = pq.read_table(sorted((report_dir / "predictions" / f"day={day}").glob("*.parquet")))
    return table["id"].to_numpy(), np.stack([table[f"pred.{t}"].to_numpy() for t in targets], axis=1)


def _day_rows(logs: Path, day: str) -> pa.Table:
    return pq.read_table(sorted((logs / f"dt={day}").glob("*.parquet")))


def _assert_parity(ids, scores, ref_ids, ref_scores):
    order, ref_order = np.argsort(ids), np.argsort(ref_ids)
    assert np.array_equal(ids[order], ref_ids[ref_order])  # every row, once
    difference = np.abs(scores[order] - ref_scores[ref_order])
    assert difference.max() <= PARITY, difference.max(axis=0)
    return difference


def test_mmoe_export_predicts_what_evaluate_scored(evaluated, tmp_path):  # noqa: F811
    root, logs = evaluated["root"], evaluated["logs"]
    assert json.loads((root / "run" / "checkpoint" / "MANIFEST.json").read_text())["world_size"] == 2
    assert export_main(["--run", str(root / "run"), "--out", str(tmp_path / "model")]) == 0
    predictor = Predictor(tmp_path / "model")
    assert predictor.targets == ("ctr", "cvr", "cart")
    ref_ids, ref_scores = _evaluate_scores(root / "report", DAY, predictor.targets)
    rows = _day_rows(logs, DAY)
    served = predictor.predict(rows)
    scores = np.stack([served[t] for t in predictor.targets], axis=1)
    _assert_parity(rows["request_id"].to_numpy(), scores, ref_ids, ref_scores)

    # jobs.predict: both days, streamed in small batches, one output file per log file
    out = tmp_path / "predicted"
    argv = ["--model", str(tmp_path / "model"), "--logs", str(logs), "--dates", "2026-11-18..2026-11-19"]
    assert predict_main([*argv, "--out", str(out), "--batch-rows", "4096"]) == 0
    summary = json.loads((out / "PREDICTED.json").read_text())
    for day in ("2026-11-18", "2026-11-19"):
        table = pq.read_table(sorted((out / f"dt={day}").glob("*.parquet")), partitioning=None)
        assert table.column_names == ["request_id", "ctr", "cvr", "cart"]
        ref_ids, ref_scores = _evaluate_scores(root / "report", day, predictor.targets)
        scores = np.stack([table[t].to_numpy() for t in predictor.targets], axis=1)
        _assert_parity(table["request_id"].to_numpy(), scores, ref_ids, ref_scores)
    assert summary["rows"] == summary["scored"] == 60_000 and summary["quarantined"] == 0


def test_esmm_chain_export_predicts_what_evaluate_scored(generated_logs, tmp_path, ray_local):
    settings = (
        "data.batch_size=1024",
        "train.max_steps=12",
        "model.params.expert.hidden=[64]",
        "train.workers=2",
    )
    cfg = load_run_config("jobs/configs/esmm.yaml", settings)
    train(cfg, str(generated_logs), "2026-11-18", DAY, tmp_path / "run")
    evaluate(tmp_path / "run", str(generated_logs), DAY, tmp_path / "report")
    assert json.loads((tmp_path / "run" / "checkpoint" / "MANIFEST.json").read_text())["world_size"] == 2
    assert export_main(["--run", str(tmp_path / "run"), "--out", str(tmp_path / "model")]) == 0
    predictor = Predictor(tmp_path / "model")
    assert predictor.targets == ("ctr", "ctcvr", "cvr")  # p(click), p(click and conversion), p(conv | click)
    rows = _day_rows(generated_logs, DAY)
    served = predictor.predict(rows.to_pylist()[:5000])  # rows as a service receives them
    scores = np.stack([served[t] for t in predictor.targets], axis=1)
    ref_ids, ref_scores = _evaluate_scores(tmp_path / "report", DAY, predictor.targets)
    keep = np.isin(ref_ids, rows["request_id"].to_numpy()[:5000])
    _assert_parity(rows["request_id"].to_numpy()[:5000], scores, ref_ids[keep], ref_scores[keep])
    assert np.all(served["ctcvr"] <= served["ctr"])


def test_jobs_predict_counts_bad_rows_and_skips_unreadable_files(evaluated, tmp_path):  # noqa: F811
    root, logs = evaluated["root"], evaluated["logs"]
    model = tmp_path / "model"
    export_main(["--run", str(root / "run"), "--out", str(model)])
    day = tmp_path / "logs" / f"dt={DAY}"
    shutil.copytree(logs / f"dt={DAY}", day)
    files = sorted(day.glob("*.parquet"))
    bad = pq.read_table(files[0])
    user = bad["user_id"].to_pylist()
    for i in (3, 50, 700):
        user[i] = None
    price = pc.if_else(pa.array(np.arange(bad.num_rows) < 4), float("inf"), bad["price"].combine_chunks())
    bad = bad.set_column(
        bad.schema.get_field_index("user_id"), "user_id", pa.array(user, bad["user_id"].type)
    )
    bad = bad.set_column(bad.schema.get_field_index("price"), "price", price.cast(bad["price"].type))
    pq.write_table(bad, files[0])
    pq.write_table(pq.read_table(files[1]), files[1], compression="zstd", row_group_size=2000)
    raw = bytearray(files[1].read_bytes())
    meta = pq.read_metadata(files[1])
    page = meta.row_group(2).column(meta.schema.names.index("price"))
    raw[page.data_page_offset + 16 : page.data_page_offset + 80] = bytes(64)  # a torn page, intact footer
    files[1].write_bytes(bytes(raw))
    in_files = sum(pq.read_metadata(f).num_rows for f in files)

    with pytest.raises(BadRowsError, match=f"{files[0]}: 6 bad of .* rows .*user_id: null id: 3 rows"):
        predict(model, str(tmp_path / "logs"), DAY, tmp_path / "error")
    summary = predict(
        model, str(tmp_path / "logs"), DAY, tmp_path / "out", on_bad_rows="quarantine", on_bad_files="skip"
    )
    skipped = sum(s["rows"] for s in summary["skipped_files"])
    assert [s["path"] for s in summary["skipped_files"]] == [str(files[1])]
    assert "unreadable Parquet data after its first" in summary["skipped_files"][0]["reason"]
    assert summary["quarantined"] == 6 and summary["scored"] + summary["quarantined"] + skipped == in_files
    written = pq.read_table(sorted((tmp_path / "out" / f"dt={DAY}").glob("*.parquet")))
    assert (
        written.num_rows == summary["scored"]
        and not (tmp_path / "out" / f"dt={DAY}" / files[1].name).exists()
    )
    quarantined = pq.read_table(tmp_path / "out" / "_quarantine" / f"dt={DAY}" / files[0].name)
    reasons = quarantined["_reject_reason"].to_pylist()
    assert (
        reasons.count("user_id: null id") == 3 and reasons.count("price: null, NaN or inf") == 3
    )  # row 3: its id first
