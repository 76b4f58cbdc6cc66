"""jobs.daily on real generated logs and a real multi-node Ray cluster (the `cluster` fixture: a head and
two worker nodes on this machine, ROOT and the logs in one folder every node sees), each day driven as
the README's plain-cluster recipe drives it: `python -m jobs.daily --address HEAD`, one training worker
per node. Cold start, warm start, the promotion gate, and re-running a date (idempotent: nothing is
trained twice).

Day 1 cold-starts and is promoted. Day 2 warm-starts from the checkpoint the two nodes wrote and,
trained sensibly, is promoted. Day 3 is trained with a destructive embedding learning rate: its AUC
falls and the gate rejects it, so the pointer stays on day 2; the decision names every failed check
(AUC, pred/obs, logloss). Re-running day 2 reports the earlier decision without training.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.daily import daily, read_promoted
from jobs.report.gate import describe_failure
from mtl_rec.config.run import SINGLE_PASS
from mtl_rec.export import resolve_model
from mtl_rec.run_config import load_run_config
from mtl_rec.serve import Predictor
from tests.jobs.test_fault_tolerance import _request_ids
from tests.jobs.test_multi_node import _workers

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

DAYS = ("2026-11-18", "2026-11-19", "2026-11-20")
SPEC = ("tables.user_id.num_embeddings=20000", "tables.item_id.num_embeddings=8000")
# one pass, no validation hold-out: the gate and promotion are under test, and each day stays one pass;
# 1.5 CPUs a worker: the head (1 CPU) holds none, each worker node holds one
SETTINGS = (
    *SINGLE_PASS,
    "data.batch_size=1024",
    "train.workers=2",
    "train.cpus_per_worker=1.5",
    "model.params.expert.hidden=[32]",
)
# 18 steps a day train the ranking, not yet the calibration: the AUC gate alone on day 2 (the pred/obs
# band and the logloss limit: tests/jobs/test_gate.py, and day 3 below)
AUC_ONLY = ("--calibration-band", "off", "--max-logloss-increase", "off")
WRECKED = ("--set=optim.sparse.lr=500.0", "--set=optim.dense.lr=1.0")


@pytest.fixture(scope="module")
def three_days(tmp_path_factory):
    from jobs.make_logs import GeneratorConfig, generate_logs

    root = tmp_path_factory.mktemp("daily-logs")
    config = GeneratorConfig(seed=3, rows_per_file=10_000, click_rate=0.25)
    generate_logs(root, dt.date(2026, 11, 18), 3, 20_000, config, verbose=False)
    return root


def _daily(cluster, logs: Path, root: Path, day: str, *options: str) -> None:
    """One day of the schedule on the cluster, in its own driver process."""
    command = [sys.executable, "-m", "jobs.daily", "--date", day, "--logs", str(logs), "--root", str(root)]
    command += ["--config", "jobs/configs/mmoe.yaml", "--address", cluster.address]
    command += [*(f"--set={s}" for s in SETTINGS), *(f"--spec-set={s}" for s in SPEC), *options]
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def _decision(root: Path, day: str) -> dict:
    return json.loads((root / "decisions" / f"{day}.json").read_text())


def _live_export(root: Path) -> tuple[str, str]:
    """(model id, run it was exported from) of ROOT/serving's live export, loaded as jobs.serve does."""
    directory, model_id = resolve_model(root / "serving")
    return model_id, Predictor(directory).manifest["run"]


def _trained_on_two_nodes_every_row_once(logs: Path, root: Path, day: str) -> None:
    nodes = {rank: worker["node"] for rank, worker in _workers(root / "runs" / day).items()}
    assert len(nodes) == 2 and len(set(nodes.values())) == 2, f"{day}: both workers on one node: {nodes}"
    # Every row of the day is trained or held out for the gate, none both, none lost.
    decision, rows = _decision(root, day), _request_ids(logs, day).size
    held_out = decision["calibration"]["ctr"]["rows"]
    assert decision["trained_rows"] + held_out == rows and 0.05 < held_out / rows < 0.15


def test_daily_on_a_cluster_cold_start_warm_start_gate_and_rerun(cluster, three_days, tmp_path):
    root = tmp_path / "root"
    first, second, third = DAYS

    _daily(cluster, three_days, root, first)
    assert _decision(root, first)["status"] == "cold_start"
    assert read_promoted(root)["date"] == first
    assert _live_export(root) == (first, str(root / "runs" / first))
    _trained_on_two_nodes_every_row_once(three_days, root, first)

    _daily(cluster, three_days, root, second, "--gate", "0.05", *AUC_ONLY)
    decision = _decision(root, second)
    assert decision["status"] == "promoted", decision["reason"]
    assert set(decision["calibration"]) == {"ctr", "cvr", "cart"}
    ctr = decision["calibration"]["ctr"]
    assert ctr["pred_over_obs"] > 0 and 0 <= ctr["ece"] < 1 and ctr["positives"] > 0
    assert decision["warm_start_from"] == first
    metrics = json.loads((root / "runs" / second / "metrics.json").read_text())
    assert metrics["train"]["warm_start"]["from"] == str(root / "runs" / first / "checkpoint")
    assert metrics["train"]["warm_start"]["optimizers"] is True
    report = json.loads((root / "reports" / second / "report.json").read_text())
    assert report["gate"]["passed"] and (root / "reports" / second / "report.html").is_file()
    assert read_promoted(root)["date"] == second
    assert read_promoted(root)["serving"] == str(root / "serving" / second)
    assert _live_export(root) == (second, str(root / "runs" / second))
    _trained_on_two_nodes_every_row_once(three_days, root, second)

    _daily(cluster, three_days, root, third, "--gate", "0.002", *WRECKED)
    decision = _decision(root, third)
    assert decision["status"] == "rejected", decision
    assert "AUC" in decision["reason"]
    report = json.loads((root / "reports" / third / "report.json").read_text())
    gate = report["gate"]  # the default gate: AUC drop, pred/obs band, logloss rise
    assert gate["calibration_band"] == [0.9, 1.1] and gate["max_logloss_increase"] == 0.01
    assert decision["reason"] == "; ".join(describe_failure(f) for f in gate["failures"])
    assert {f["check"] for f in gate["failures"]} >= {"auc"}
    assert read_promoted(root)["date"] == second, "a rejected day must not move the pointer"
    assert _live_export(root)[0] == second and not (root / "serving" / third).exists()

    checkpoint_files = sorted(p.name for p in (root / "runs" / second / "checkpoint").iterdir())
    # A decided date returns before it touches Ray: asked in this process, it must not train.
    again = daily(
        load_run_config("jobs/configs/mmoe.yaml", SETTINGS), dt.date(2026, 11, 19), str(three_days), root
    )
    assert again["repeated"] and again["status"] == "promoted"
    assert sorted(p.name for p in (root / "runs" / second / "checkpoint").iterdir()) == checkpoint_files
    lines = (root / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["cold_start", "promoted", "rejected"]
