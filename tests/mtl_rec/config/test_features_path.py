"""Where a run config's feature spec is read from: relative to the config file, never a silent
fall back to the demo's spec, and a --set path read from the working directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mtl_rec.config import ConfigError
from mtl_rec.config.run import read_run_config

REPO = Path(__file__).resolve().parents[3]
PRESET = REPO / "jobs" / "configs" / "mmoe.yaml"
DEMO_SPEC = REPO / "jobs" / "configs" / "features.yaml"


def _copy(folder: Path, features_line: str | None, spec_name: str | None) -> Path:
    """mmoe.yaml copied into `folder` (with `features_line` put first, when given), and the demo's
    spec copied beside it as `spec_name`, when given."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "mmoe.yaml"
    config.write_text((features_line + "\n" if features_line else "") + PRESET.read_text())
    if spec_name:
        (folder / spec_name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DEMO_SPEC, folder / spec_name)
    return config


def test_a_relative_path_in_the_file_is_read_from_the_config_folder(tmp_path, monkeypatch):
    config = _copy(tmp_path / "project", "features: specs/mine.yaml", "specs/mine.yaml")
    monkeypatch.chdir(tmp_path)  # the working directory has no specs/ folder
    assert Path(read_run_config(config).features) == tmp_path / "project" / "specs" / "mine.yaml"
    assert read_run_config(config).feature_spec().labels == ("click", "cart", "conversion")


def test_without_features_the_spec_beside_the_config_is_read(tmp_path, monkeypatch):
    config = _copy(tmp_path / "project", None, "features.yaml")
    monkeypatch.chdir(REPO)  # where jobs/configs/features.yaml would have been picked up before
    assert Path(read_run_config(config).features) == tmp_path / "project" / "features.yaml"
    assert Path(read_run_config(PRESET).features) == DEMO_SPEC  # the presets: the spec beside them


def test_without_features_or_a_spec_beside_it_the_config_is_refused(tmp_path, monkeypatch):
    config = _copy(tmp_path / "project", None, None)
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"mmoe.yaml: no `features:`.*no features.yaml beside the config"):
        read_run_config(config)


def test_a_set_override_is_read_from_the_working_directory(tmp_path, monkeypatch):
    config = _copy(tmp_path / "project", "features: nowhere.yaml", None)
    _copy(tmp_path / "cwd", None, "spec.yaml")
    monkeypatch.chdir(tmp_path / "cwd")
    assert read_run_config(config, ["features=spec.yaml"]).features == "spec.yaml"
    with pytest.raises(ConfigError, match=r"not found: .*project/nowhere.yaml"):  # the file's own: its folder
        read_run_config(config)
