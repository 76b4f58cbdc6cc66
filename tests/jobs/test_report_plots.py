"""The report's training figures from metrics.json histories: drawn where the data is, None elsewhere."""

from __future__ import annotations

import io

import matplotlib.image

from jobs.report import plots


def _history(groups: bool) -> list[dict]:
    history = []
    for step in range(0, 50, 10):
        entry = {"step": step, "loss": {"ctr": 0.4, "cvr": 0.3}, "weights": {"ctr": 1.0, "cvr": 1.0}}
        if groups:
            entry["group_weights"] = {
                "0": {"ctr": 1.0, "cvr": 1 + step / 50},
                "1": {"ctr": 1.0, "cvr": 2 - step / 50},
            }
        history.append(entry)
    return history


def test_group_weights_figure_has_a_panel_per_task_and_needs_group_weights():
    png = plots.group_weights_figure({"run": _history(groups=True), "baseline": _history(groups=False)})
    image = matplotlib.image.imread(io.BytesIO(png))  # a real PNG, decoded
    assert image.shape[1] > 1.5 * image.shape[0]  # two task panels side by side
    assert plots.group_weights_figure({"run": _history(groups=False)}) is None
    assert plots.training_figure({"run": _history(groups=True)}, "weights", "loss weight") is not None
