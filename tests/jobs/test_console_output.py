"""What a run prints: one line per rank-0 message, and no Ray Data line a user has to wonder about.
Checked against Ray's own machinery: Ray Train's print patch, and Ray Data's logging config loader
in a fresh interpreter (as a Ray actor process loads it)."""

from __future__ import annotations

import builtins
import io
import logging
import os
import subprocess
import sys

import pytest
from ray.train.v2._internal.logging.patch_print import redirected_print

from jobs.worker import runtime
from mtl_rec.quiet import RAY_DATA_LOGGING, RayDataNotices, quiet_ray_data


def test_a_rank0_line_is_printed_once_under_ray_trains_print_patch(monkeypatch, capfd):
    """Ray Train replaces print() with one that logs through the root logger and, where sys.stdout
    is wrapped (as in a Ray worker), prints too: a plain print() comes out twice."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # Ray Train's console handler on the root logger
    root.addHandler(handler)
    monkeypatch.setattr(root, "level", logging.INFO)  # Ray Train's worker config: the root logger at INFO
    monkeypatch.setattr(builtins, "print", redirected_print)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO()))  # a wrapped stdout, as in Ray
    monkeypatch.setattr(runtime, "rank", lambda: 0)
    try:
        redirected_print("plain print", flush=True)
        runtime.rank0_print("[rank 0] epoch 1: validation NE 0.85")
        monkeypatch.setattr(runtime, "rank", lambda: 1)
        runtime.rank0_print("[rank 1] not shown")
    finally:
        root.removeHandler(handler)
    out, err = capfd.readouterr()
    sys.stdout.seek(0)
    wrapped = sys.stdout.buffer.getvalue().decode()
    assert (wrapped + out + err).count("plain print") == 2  # what the patch does to a plain print()
    assert (wrapped + out + err).count("[rank 0] epoch 1") == 1
    assert "not shown" not in wrapped + out + err


PROBE = """
import logging, os
os.environ["RAY_DATA_LOGGING_CONFIG"] = {config!r}
from ray.data._internal.logging import configure_logging
configure_logging()  # what a Ray actor process runs when it imports ray.data
log = logging.getLogger("ray.data._internal.execution.streaming_executor")
log.info("Starting execution of Dataset dataset_1. Full logs are in /tmp/ray")
log.warning("Progress bars disabled. To enable, set ...")
log.warning("a warning a user must see")
log.error("an error a user must see")
"""


def test_ray_data_in_a_fresh_process_prints_warnings_and_errors_only(tmp_path):
    env = {**os.environ, "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(config=str(RAY_DATA_LOGGING))],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    assert "a warning a user must see" in console and "an error a user must see" in console
    assert "Starting execution" not in console and "Progress bars disabled" not in console


def test_quiet_ray_data_in_this_process_keeps_warnings(monkeypatch):
    monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG", raising=False)
    console = logging.StreamHandler(io.StringIO())
    console.name = "console"
    logger = logging.getLogger("ray.data")
    monkeypatch.setattr(logger, "handlers", [console])
    quiet_ray_data()
    assert os.environ["RAY_DATA_LOGGING_CONFIG"] == str(RAY_DATA_LOGGING)
    logger.info("Starting execution of Dataset dataset_2.")
    logger.warning("Progress bars disabled. To enable, set ...")
    logger.warning("a warning a user must see")
    assert console.stream.getvalue() == "a warning a user must see\n"
    assert any(isinstance(f, RayDataNotices) for f in console.filters)


@pytest.mark.parametrize("message", ["Progress bars disabled. To enable", "Progress bars disabled."])
def test_only_the_known_notice_is_dropped(message):
    keep = RayDataNotices()
    record = lambda text: logging.LogRecord("ray.data", logging.WARNING, "", 0, text, None, None)  # noqa: E731
    assert not keep.filter(record(message)) and keep.filter(record("Progress of something else"))
