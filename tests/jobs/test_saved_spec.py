"""A run directory describes itself: the resolved feature spec saved with the run and its checkpoint is
what scoring, warm start and resume use, never the working copy's features file.

Reuses the session's trained runs (tests/jobs/test_evaluate.py): the 1-worker `base` run is copied,
the working copy's spec is edited (a table resized and given another id map, a dense feature added)
and the copy's config pointed at it. Scoring the copy again gives the same AUCs; a warm start or a
resume under the edited spec is refused before anything trains, naming each difference.
"""

import re
import shutil

import pytest
import yaml

from jobs.evaluate import evaluate
from jobs.report.score import load_run
from jobs.train import train
from mtl_rec.config import SPEC_FILE, load_feature_spec, load_yaml
from mtl_rec.config.compat import SpecMismatch
from mtl_rec.config.loader import ConfigError
from mtl_rec.run_config import load_run_config
from tests.jobs.test_evaluate import (
    RUN_SETTINGS,
    TRAINED_WITH,
    evaluated,  # noqa: F401  (the shared session fixture)
)

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

DAY = "2026-11-19"  # one of the days the fixture scored
DIFFERENCES = (
    "table 'user_id' num_embeddings 50000 -> 1000000; table 'item_id' num_embeddings 500000 -> 100000; "
    "table 'item_id' id_map hash -> mod; dense feature 'price_again' added"
)


def _edited_working_copy(tmp_path):
    """The features file, edited after the run trained; returns its path."""
    data = load_yaml("jobs/configs/features.yaml")
    data["tables"]["item_id"].update(num_embeddings=100_000, id_map="mod")
    data["dense"].append({"name": "price_again", "column": "price"})
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _copy_run(source, target, features):
    """A copy of a run directory whose saved config names `features` (absent: keep the spec file)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("ray", "workers"))
    config_path = target / "checkpoint" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["features"] = str(features)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def test_run_and_checkpoint_save_the_resolved_spec(evaluated):  # noqa: F811
    root = evaluated["root"]
    resolved = load_feature_spec("jobs/configs/features.yaml", TRAINED_WITH)
    for run in ("run", "base"):
        assert load_feature_spec(root / run / SPEC_FILE) == resolved
        assert load_feature_spec(root / run / "checkpoint" / SPEC_FILE) == resolved
    described = evaluated["report"]["run"]
    assert described["spec"] == str(root / "run" / "checkpoint" / SPEC_FILE)
    assert described["spec_changes"] == {}


def test_scoring_and_warm_start_use_the_saved_spec(evaluated, tmp_path):  # noqa: F811
    root, logs, first = evaluated["root"], evaluated["logs"], evaluated["report"]
    edited = _edited_working_copy(tmp_path)
    run = _copy_run(root / "base", tmp_path / "base", edited)

    report = evaluate(run, str(logs), DAY, tmp_path / "report", slice_column=None)  # one day: ~15 s less
    assert report["run"]["spec"] == str(run / "checkpoint" / SPEC_FILE)
    assert set(report["metrics"]) == set(first["metrics"])
    for name, target in report["metrics"].items():
        # The same checkpoint, spec, statistics and rows go through the same arithmetic (1 worker and
        # one dataset a day, as when the fixture scored it as the baseline; exact AUC from integer
        # pair counts), so the AUC is the same number, bit for bit: no tolerance.
        # (Not logloss: a float sum, whose order follows the rows' order in the merged predictions.)
        before = first["metrics"][name]["by_day"][DAY]["baseline"]
        assert target["by_day"][DAY]["run"]["auc"] == before["auc"]

    cfg = load_run_config(
        "jobs/configs/mmoe.yaml", ("train.workers=1", "model.params.expert.hidden=[64]", f"features={edited}")
    )
    with pytest.raises(SpecMismatch) as refused:
        train(cfg, str(logs), "2026-11-18", "2026-11-19", tmp_path / "warm", init_from=run / "checkpoint")
    assert str(refused.value).startswith(
        f"warm start refused: the feature spec differs from the checkpoint's "
        f"({run / 'checkpoint' / SPEC_FILE}): {DIFFERENCES}. "
    )
    assert not (tmp_path / "warm").exists()  # refused before anything was written
    with pytest.raises(SpecMismatch, match=f"^resume refused: .*: {re.escape(DIFFERENCES)}"):
        train(cfg, str(logs), "2026-11-18", "2026-11-19", run)


def test_an_old_checkpoint_falls_back_to_the_config_fitted_to_it(evaluated, tmp_path):  # noqa: F811
    run = _copy_run(evaluated["root"] / "base", tmp_path / "old", "jobs/configs/features.yaml")
    (run / "checkpoint" / SPEC_FILE).unlink()  # as written before runs saved their spec
    artifacts = load_run(run)
    assert artifacts.spec_source == "jobs/configs/features.yaml"
    assert artifacts.spec_changes == {"resized": {"user_id": [50000, 16]}, "dropped": []}
    assert artifacts.spec.tables == load_feature_spec(run / SPEC_FILE).tables  # RUN_DIR's copy agrees


def test_a_finished_run_re_run_with_more_epochs_is_refused_with_how_to_continue(evaluated):  # noqa: F811
    """Re-running a finished --out with other settings used to exit 0 having trained nothing."""
    run, logs = evaluated["root"] / "run", evaluated["logs"]
    cfg = load_run_config("jobs/configs/mmoe.yaml", (*RUN_SETTINGS, "train.epochs=2"))
    saved = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError) as refused:
        train(cfg, str(logs), "2026-11-18", "2026-11-19", run, TRAINED_WITH)
    assert str(refused.value) == (
        f"{run}: resume refused: this --out holds a run trained with other settings "
        f"({run / 'checkpoint' / 'config.yaml'}): train.epochs 1 -> 2. A run re-run with the same "
        "settings resumes (a finished one is evaluated again); to train on with new settings "
        f"(more epochs, another rate), warm-start a new run: --init-from {run / 'checkpoint'} --out NEW_DIR"
    )
    assert (run / "config.yaml").read_text() == saved  # refused before anything was written
