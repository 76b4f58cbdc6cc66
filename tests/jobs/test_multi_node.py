"""jobs.train across a real multi-node Ray cluster (ray.cluster_utils.Cluster: a head and two worker
nodes on this machine, each its own raylet and object store; logs and RUN_DIR in one shared folder),
driven as the README's plain-cluster recipe drives it: `python -m jobs.train --address HEAD`.

One training worker per node (each worker reserves 1.5 of a node's 2 CPUs; the head's CPU runs Ray
Data's read tasks). After the first checkpoint a worker node is removed from the cluster, its
worker with it; a new node joins, Ray Train (FailureConfig) restarts the group there, it resumes
from the checkpoint, and the request-id audit finds every training row trained exactly once. The daily
job on such a cluster: tests/jobs/test_daily.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mtl_rec.config.run import SINGLE_PASS
from tests.jobs.test_fault_tolerance import EVAL_DAY, SPEC, TRAIN_DAY, _audited_ids, _request_ids

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]
WORKER_NODE = {"num_cpus": 2}  # as the `cluster` fixture's (tests/conftest.py)
SETTINGS = (
    *SINGLE_PASS,  # the exactly-once audit counts one pass over every row
    "data.batch_size=64",
    "train.workers=2",
    "train.cpus_per_worker=1.5",  # > 1: the head (1 CPU) cannot hold a worker, a node holds one
    "train.checkpoint_every=40",
    "train.max_failures=2",
    "train.audit_ids=true",
    "train.log_every=20",
    "model.params.expert.hidden=[32]",
)


def _workers(run_dir: Path) -> dict[int, dict]:
    out = {}
    for rank in (0, 1):
        with contextlib.suppress(OSError, ValueError):  # not written yet, or being replaced
            out[rank] = json.loads((run_dir / "workers" / f"rank{rank}.json").read_text())
    return out


def test_train_across_nodes_survives_losing_a_node_with_every_row_once(cluster, generated_logs, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "jobs.train",
        "--config",
        "jobs/configs/mmoe.yaml",
        "--logs",
        str(generated_logs),
        "--train-dates",
        TRAIN_DAY,
        "--eval-dates",
        EVAL_DAY,
        "--out",
        str(run_dir),
        "--address",
        cluster.address,
        *(f"--spec-set={s}" for s in SPEC),
        *(f"--set={s}" for s in SETTINGS),
    ]
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - the driver writes it while we watch
    driver = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RAY_ADDRESS": ""}
    )
    try:
        deadline, removed = time.time() + 300, None
        while time.time() < deadline and driver.poll() is None and removed is None:
            manifest = run_dir / "checkpoint" / "MANIFEST.json"
            workers = _workers(run_dir)
            if manifest.is_file() and len(workers) == 2:
                first = {r: w["node"] for r, w in workers.items()}
                assert len(set(first.values())) == 2, f"both workers on one node: {first}"
                victim = next(n for n in cluster.worker_nodes if n.node_id == first[1])
                cluster.remove_node(victim)  # rank 1's node, raylet and worker gone at once
                removed = victim.node_id
                cluster.add_node(**WORKER_NODE)  # the replacement the restarted group lands on
                cluster.wait_for_nodes()
            time.sleep(0.05)
        assert removed is not None, "the run ended (or stalled) before a node could be removed"
        code = driver.wait(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    output = (tmp_path / "driver.log").read_text()
    assert code == 0, output[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["resumed_from"] is not None, "the restarted group did not resume"
    after = {r: w["node"] for r, w in _workers(run_dir).items()}
    assert removed not in after.values() and len(set(after.values())) == 2, after
    expected = _request_ids(generated_logs, TRAIN_DAY)
    unique, counts = np.unique(_audited_ids(run_dir), return_counts=True)
    assert (counts > 1).sum() == 0, f"{(counts > 1).sum()} rows trained twice"
    assert (
        np.setdiff1d(expected, unique).size == 0 and unique.size == expected.size == metrics["train"]["rows"]
    )
    assert metrics["tasks"]["ctr"]["rows"] == _request_ids(generated_logs, EVAL_DAY).size
