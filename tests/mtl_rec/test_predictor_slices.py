"""The Predictor runs its program on slices of at most PROGRAM_ROWS rows (mtl_rec.serve.program_slices),
so a large batch's activations stay in the CPU's caches. Scores in slices equal one call's on every
row: multi-hot lists (each slice's offsets rebased), each row's domain (STAR), a short tail."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import mtl_rec.serve as serve
from mtl_rec.export import MIN_ROWS, export_run
from mtl_rec.models.model import MultiTaskModel
from mtl_rec.serve import Predictor, program_slices
from tests.harness import assert_float32_close
from tests.mtl_rec.test_export import (
    PREDICTION_ULPS,
    _saved_run,
    exported,  # noqa: F401 (a fixture: an ESMM chain with multi-hot features)
    star_chain,
)
from tests.pipelines.tables import tiny_table

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


@pytest.mark.parametrize(
    "rows, size", [(2, 4096), (4096, 4096), (4097, 4096), (4098, 4096), (66, 5), (65, 5), (3, 2)]
)
def test_slices_cover_every_row_once_and_none_is_shorter_than_the_programs_minimum(rows, size, monkeypatch):
    monkeypatch.setattr(serve, "PROGRAM_ROWS", size)
    slices = program_slices(rows)
    assert slices[0][0] == 0 and slices[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous: every row once
    assert all(MIN_ROWS <= stop - start < size + MIN_ROWS for start, stop in slices)


def _star_export(root) -> Predictor:
    """STAR reads each row's domain: the program's first extra input, sliced like the rows."""
    spec, cfg = star_chain()
    torch.manual_seed(0)
    model = MultiTaskModel(spec, cfg.model, cfg.tasks, device="cpu")
    with torch.no_grad():  # rows of visible size, per-domain weights off their equal start: a row
        for bag in model.sparse_arch.ebc.embedding_bags.values():  # scored with another row's ids or
            bag.weight.normal_(0, 0.5)  # domain must show
        for param in model.backbone.parameters():
            param.add_(0.3 * torch.randn_like(param))
    _saved_run(root / "run", model, cfg, spec)
    export_run(root / "run", root / "model")
    return Predictor(root / "model")


@pytest.mark.parametrize("model", ["esmm", "star"])
def test_scores_in_slices_equal_one_call_on_every_row(model, exported, tmp_path, monkeypatch):  # noqa: F811
    predictor = Predictor(exported[0]) if model == "esmm" else _star_export(tmp_path)
    rows = tiny_table(66, seed=13)
    if model == "star":
        domains = np.arange(66) % 3
        rows = rows.append_column("scene", pa.array(domains, pa.int64()))
        other = rows.set_column(rows.num_columns - 1, "scene", pa.array(np.roll(domains, 1), pa.int64()))
        moved = np.abs(predictor.predict(other)["ctr"] - predictor.predict(rows)["ctr"])
        assert moved.max() > 1e-3  # each row's domain matters: a slice with shifted domains would show
    whole = predictor.predict(rows)  # one call: 66 rows < PROGRAM_ROWS
    assert len(np.unique(whole[predictor.targets[0]])) == 66  # rows tell apart: a mix-up would show
    monkeypatch.setattr(serve, "PROGRAM_ROWS", 5)
    assert len(program_slices(66)) == 13  # 12 of 5 rows and a last of 6 (a tail of 1 joined)
    sliced = predictor.predict(rows)
    for name in predictor.targets:  # other batch shapes, the same math: float32 ulps
        assert_float32_close(sliced[name], whole[name], PREDICTION_ULPS, msg=name)
