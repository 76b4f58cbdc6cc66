"""The job edge: a bad input raised inside a Ray Data task ends the job with our line, printed last."""

import pytest
import ray

from jobs.cli import run_job
from pipelines.dataset import configure_ray_data
from pipelines.errors import BadRowsError, bad_input_message

REASON = "dt=2026-11-18/part-00000.parquet: 2 bad of 20000 rows (price: null, NaN or inf: 2 rows)"


def _fails_in_a_read_task(batch):
    raise BadRowsError(REASON)


def _job():
    configure_ray_data()  # what every pipeline sets: Ray raises our exception type, wrapped
    ray.data.range(4, override_num_blocks=1).map_batches(_fails_in_a_read_task).take_all()


def test_a_bad_row_in_a_ray_task_is_the_last_line_and_exit_code_1(ray_local, capsys, monkeypatch):
    monkeypatch.delenv("MTL_REC_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as info:
        run_job(_job)
    assert info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    # Ray appends its worker traceback and "Failed to apply UDF transform ..." advice to the text.
    assert last == f"error: bad input: {REASON}"


def test_other_errors_pass_through_and_return_codes_are_kept():
    with pytest.raises(ZeroDivisionError):
        run_job(lambda: 1 / 0)
    with pytest.raises(SystemExit) as info:
        run_job(lambda: 3)
    assert info.value.code == 3


def test_without_the_pipeline_settings_the_text_is_still_found(ray_local, capsys):
    ray.data.DataContext.get_current().raise_original_map_exception = False  # UserCodeException
    try:
        with pytest.raises(SystemExit):
            run_job(lambda: ray.data.range(4).map_batches(_fails_in_a_read_task).take_all())
    finally:
        configure_ray_data()
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: bad input: {REASON}"


# What Ray prints for a UserCodeException: the worker's frames, our exception's text, then its advice.
RAY_TEXT = (
    "ray::MapBatches(_fails_in_a_read_task)() (pid=4242, ip=127.0.0.1)\n"
    "Traceback (most recent call last):\n"
    '  File "/venv/ray/data/_internal/planner/plan_udf_map_op.py", line 517, in _apply_udf\n'
    "    raise BadRowsError(REASON)\n"
    "pipelines.errors.BadRowsError: {reason}\n"
    "Failed to apply UDF transform to a batch. Consider setting "
    "DataContext.get_current().raise_original_map_exception = True to see the original error.\n"
    "\n\nThe above exception was the direct cause of the following exception:\n"
)


def test_the_message_is_ours_whole_without_frames_or_ray_advice():
    # A two-line reason: everything of ours is kept, line breaks included; nothing of Ray's.
    reason = REASON + "\n  first bad row: request_id 17, price NaN"
    assert bad_input_message(RuntimeError(RAY_TEXT.format(reason=reason))) == reason
    assert bad_input_message(BadRowsError(REASON)) == REASON
    assert bad_input_message(RuntimeError("ZSTD decompression failed")) is None
