"""Ray Jobs for real: `ray start --head` on 127.0.0.1 with token authentication, `ray job submit
--working-dir .` of jobs.daily, wait for SUCCEEDED, check the promoted model and the report, stop.

The head runs with `--block` in its own process group, and is stopped by signalling that group:
`ray stop` would also stop every other Ray on the machine (this test session's own among them).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtl_rec.config.run import SINGLE_PASS

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(token: str) -> dict:
    # not this session's Ray settings (RAY_ADDRESS and the like), but Ray Train's poll interval
    # (tests/conftest.py): the job's driver hands it to its controller
    keep = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k in keep}
    bin_dir = str(Path(sys.executable).parent)  # the venv's ray, python and our package
    env.update(PATH=f"{bin_dir}:{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    env.update(FBGEMM_TBE_BOUNDS_CHECK_MODE="0", RAY_USAGE_STATS_ENABLED="0")
    return env


@pytest.fixture
def ray_head(tmp_path_factory):
    token = secrets.token_hex(32)
    env = _env(token)
    port, dashboard = _free_port(), _free_port()
    temp_dir = Path(f"/tmp/ray-head-{os.getpid()}")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen(
        [
            "ray", "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", f"--port={port}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--num-cpus={2 * (os.cpu_count() or 1)}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            # Not the default ports: this session's own local Ray (tests' ray_local) holds them, and a
            # head whose dashboard agent cannot bind never accepts a job ("No available agent").
            f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
            f"--ray-client-server-port={_free_port()}",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited with {head.returncode}:\n{head.stdout.read()}")
        probe = subprocess.run(
            ["ray", "job", "list", "--address", address], env=env, capture_output=True, text=True
        )
        if probe.returncode == 0:
            break
        time.sleep(2)
    else:
        pytest.fail("the Ray head's job server did not come up in 120 s")
    yield {"address": address, "env": env, "token": token}
    os.killpg(head.pid, signal.SIGTERM)
    try:  # a graceful stop takes ~30 s; the job is over, so the rest of the group is killed after 3 s
        head.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def test_daily_submitted_as_a_ray_job(ray_head, generated_logs, tmp_path):
    root = tmp_path / "root"
    no_token = {k: v for k, v in ray_head["env"].items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run(
        ["ray", "job", "list", "--address", ray_head["address"]], env=no_token, capture_output=True, text=True
    )
    assert refused.returncode != 0, "the job server answered a client without the token"

    command = [
        "ray", "job", "submit", "--address", ray_head["address"], "--working-dir", ".",
        "--submission-id", "daily-2026-11-18",
        "--", "python", "-m", "jobs.daily", "--date", "2026-11-18", "--logs", str(generated_logs),
        "--root", str(root), "--holdout", "0.2",
        "--set", "data.batch_size=1024", "--set", "train.workers=2",
        "--set", "model.params.expert.hidden=[32]",
        *(arg for setting in SINGLE_PASS for arg in ("--set", setting)),  # one pass: the job is under test
        "--spec-set", "tables.user_id.num_embeddings=20000",
    ]  # fmt: skip
    for _ in range(60):  # the job server answers before the head's dashboard agent can take a job
        submitted = subprocess.run(
            command, cwd=REPO, env=ray_head["env"], capture_output=True, text=True, timeout=900
        )
        if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
    query = (  # the Jobs SDK, in a process that holds the token
        "from ray.job_submission import JobSubmissionClient; import sys; "
        "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)"
    )
    status = subprocess.run(
        [sys.executable, "-c", query, ray_head["address"], "daily-2026-11-18"],
        env=ray_head["env"],
        capture_output=True,
        text=True,
    )
    assert status.stdout.strip().splitlines()[-1] == "SUCCEEDED", status.stdout + status.stderr

    promoted = json.loads((root / "promoted.json").read_text())
    assert promoted["date"] == "2026-11-18" and Path(promoted["checkpoint"], "MANIFEST.json").is_file()
    report = json.loads((root / "reports" / "2026-11-18" / "report.json").read_text())
    assert report["data"]["holdout"] == 0.2 and set(report["metrics"]) >= {"ctr", "cvr"}
    day = report["data"]["by_day"]["2026-11-18"]
    assert (
        day["rows_scored"] == day["rows_expected"]
        and 0.15 < day["rows_expected"] / day["rows_in_files"] < 0.25
    )
    assert (root / "decisions" / "2026-11-18.json").is_file()
