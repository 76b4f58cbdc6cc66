"""The job edge: a bad input raised inside a Ray Data task ends the job with our line, printed last."""

import pytest
import ray

from jobs.cli import run_job
from pipelines.dataset import configure_ray_data
from pipelines.errors import BadRowsError

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
