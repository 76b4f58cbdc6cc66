"""jobs.train refuses, before Ray starts, eval days that would make the score meaningless; jobs.evaluate
slices only by a column the logs have."""

import datetime as dt
import shutil

import pyarrow.parquet as pq
import pytest

from jobs.evaluate import _auto_slice_column
from jobs.train import train
from mtl_rec.run_config import load_run_config
from pipelines.errors import BadInputError


def _logs_with(tmp_path, generated_logs, day: str):
    """The generated days (linked, untouched) plus a folder for `day`."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for folder in generated_logs.iterdir():
        (logs / folder.name).symlink_to(folder)
    (logs / f"dt={day}").mkdir()
    return logs, logs / f"dt={day}"


def test_a_day_copied_under_another_date_is_leakage_when_scored(tmp_path, generated_logs):
    logs, copy = _logs_with(tmp_path, generated_logs, "2026-11-21")
    for part in sorted((generated_logs / "dt=2026-11-18").iterdir()):
        shutil.copy(part, copy / part.name)
    cfg = load_run_config("jobs/configs/mmoe.yaml")
    with pytest.raises(BadInputError) as info:
        train(cfg, str(logs), "2026-11-18..2026-11-19", "2026-11-21", tmp_path / "run")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("request_id: the evaluation dates share 30,000 ids with the training dates")
    assert lines[1:] == [
        f"  {copy / name}: request_id: 10,000 ids also in the training file {logs}/dt=2026-11-18/{name}"
        for name in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet")
    ]


def test_an_eval_day_of_empty_files_is_an_error_not_a_report_of_none(tmp_path, generated_logs):
    logs, empty = _logs_with(tmp_path, generated_logs, "2026-11-21")
    source = next((generated_logs / "dt=2026-11-18").iterdir())
    pq.write_table(pq.read_table(source).slice(0, 0), empty / "part-00000.parquet")
    cfg = load_run_config("jobs/configs/mmoe.yaml")
    with pytest.raises(BadInputError, match=r"eval dates 2026-11-21: no rows to score: 1 files of 0 rows"):
        train(cfg, str(logs), "2026-11-18..2026-11-19", "2026-11-21", tmp_path / "run")


def test_evaluate_slices_by_device_only_where_every_file_has_it(tmp_path, generated_logs, capsys):
    days = [dt.date(2026, 11, 18), dt.date(2026, 11, 21)]
    logs, extra = _logs_with(tmp_path, generated_logs, "2026-11-21")
    source = next((generated_logs / "dt=2026-11-18").iterdir())
    table = pq.read_table(source)
    pq.write_table(table, extra / "part-00000.parquet")
    assert _auto_slice_column(str(logs), days, "dt") == "device"
    pq.write_table(table.drop_columns(["device"]), extra / "part-00001.parquet")
    assert _auto_slice_column(str(logs), days, "dt") is None
    assert capsys.readouterr().out == (
        f"no slices: {extra / 'part-00001.parquet'} has no integer column 'device' "
        "(--slice-column COLUMN names another)\n"
    )
