import json

import pytest

from jobs.compare_weighting import default_dates, main
from mtl_rec.config.run import SINGLE_PASS
from mtl_rec.run_config import load_run_config

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]


def test_compare_weighting_writes_a_table_per_method(generated_logs, tmp_path, ray_local):
    assert default_dates(str(generated_logs)) == ("2026-11-18", "2026-11-19")
    out = tmp_path / "compare"
    main(
        [
            "--logs",
            str(generated_logs),
            "--out",
            str(out),
            "--methods",
            "fixed,uncertainty",
            "--set",
            "data.batch_size=2048",
            "--set",
            "train.log_every=2",
            *(arg for setting in SINGLE_PASS for arg in ("--set", setting)),  # one pass per method
        ]
    )
    summary = json.loads((out / "compare_weighting.json").read_text())
    assert list(summary["methods"]) == ["fixed", "uncertainty"]
    for result in summary["methods"].values():
        assert set(result["tasks"]) == {"ctr", "cvr", "cart"}
        assert all(t["oracle_auc"] is not None and t["rows"] > 0 for t in result["tasks"].values())
        assert set(result["final_weights"]) == {"ctr", "cvr", "cart"}
    # fixed weighting keeps the preset's static task weights
    preset = {task.name: task.weight for task in load_run_config("jobs/configs/mmoe.yaml").tasks}
    assert summary["methods"]["fixed"]["final_weights"] == preset == {"ctr": 1.0, "cvr": 0.25, "cart": 0.25}
    table = (out / "compare_weighting.md").read_text()
    assert "| oracle |" in table and "| fixed |" in table and "| uncertainty |" in table
    with pytest.raises(SystemExit):
        main(["--logs", str(generated_logs), "--out", str(out), "--methods", "gradnom"])
