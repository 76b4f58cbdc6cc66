"""Platt calibration of task logits: the fit, the heads' map, 2 ranks, and old checkpoints."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from sklearn.linear_model import LogisticRegression

from mtl_rec.batch import Batch
from mtl_rec.calibration import BINS, LOGIT_BOUND, LogitHistogram, fit_platt
from mtl_rec.checkpoint import load_model_state, saved_model_state
from mtl_rec.config.model import parse_tasks
from mtl_rec.evaluation import exact_auc
from mtl_rec.models import TaskHeads
from mtl_rec.models.heads import TaskOutputs
from tests.harness import run_on_ranks

TASKS = parse_tasks(
    [
        {"name": "ctr", "label": "click"},
        {"name": "ctcvr", "label": "conversion", "parent": "ctr"},
        {"name": "cart", "label": "cart", "space": "click == 1"},
    ]
)
ROWS = 20_000


def _world(seed: int = 0, rows: int = ROWS):
    """Logits a model got wrong by a known map, and labels drawn from the right probabilities."""
    rng = np.random.default_rng(seed)
    logits = {task.name: rng.normal(-1.0, 1.5, rows) for task in TASKS}  # [N] each
    truth = {"ctr": (0.6, -0.8), "ctcvr": (1.3, 0.4), "cart": (0.9, 0.5)}  # the label's (a, b)
    draw = lambda task: rng.random(rows) < 1 / (1 + np.exp(-(truth[task][0] * logits[task] + truth[task][1])))  # noqa: E731
    labels = {"click": draw("ctr"), "conversion": draw("ctcvr"), "cart": draw("cart")}
    labels["conversion"] &= labels["click"]  # the funnel: only clicked rows convert or cart
    labels["cart"] &= labels["click"]
    return logits, labels


def _batch_and_outputs(logits, labels, rows: slice):
    click = torch.from_numpy(labels["click"][rows])
    masks = {"all": torch.ones_like(click), "click == 1": click}
    batch = Batch(
        sparse=None,
        dense=torch.zeros(int(click.shape[0]), 0),
        labels={name: torch.from_numpy(value[rows]).float() for name, value in labels.items()},
        masks=masks,
        ids=torch.arange(int(click.shape[0])),
    )
    logit = {task: torch.from_numpy(value[rows]).float() for task, value in logits.items()}
    return TaskOutputs(logit=logit, log_p={}, log_1mp={}), batch


def test_platt_fit_equals_a_logistic_regression_on_the_raw_rows():
    logits, labels = _world()
    histogram = LogitHistogram(TASKS)
    histogram.update(*_batch_and_outputs(logits, labels, slice(None)))
    fits = histogram.fit()
    click = labels["click"]
    rows_of = {"ctr": np.ones(ROWS, bool), "ctcvr": click, "cart": click}  # calibration spaces
    label_of = {"ctr": "click", "ctcvr": "conversion", "cart": "cart"}
    for task, fit in fits.items():
        x, y = logits[task][rows_of[task]], labels[label_of[task]][rows_of[task]]
        reference = LogisticRegression(C=1e12, tol=1e-12, max_iter=1000).fit(x[:, None], y)
        # the histogram moves each logit by at most half a bin (0.002): the fits agree to ~1e-3
        assert fit.scale == pytest.approx(float(reference.coef_[0, 0]), abs=3e-3), task
        assert fit.shift == pytest.approx(float(reference.intercept_[0]), abs=3e-3), task
        assert fit.rows == int(rows_of[task].sum()) and fit.positives == int(y.sum())
        # at the optimum the mean calibrated prediction over the binned rows equals the observed rate
        assert fit.pred_over_obs_after == pytest.approx(1.0, abs=1e-6), task
    assert abs(fits["ctr"].pred_over_obs_before - 1.0) > 0.05  # the world was miscalibrated


@pytest.mark.parametrize(
    ("mean", "std", "truth"),
    [(-3.0, 1.0, (1.0, 2.0)), (-4.0, 0.5, (1.0, 2.5)), (-5.0, 0.2, (0.8, 2.0)), (2.0, 1.0, (1.5, -4.0))],
)
def test_platt_fit_converges_where_the_logits_are_far_off(mean, std, truth):
    """Tasks predicted at a tenth of their rate (or 20x it): a plain Newton step from the identity
    overshoots and diverges there (scale 1e11, or a negative scale that reverses the ranking)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(mean, std, 50_000)
    labels = rng.random(50_000) < 1 / (1 + np.exp(-(truth[0] * logits + truth[1])))
    edges = np.linspace(-LOGIT_BOUND, LOGIT_BOUND, BINS + 1)
    bins = np.clip(np.digitize(logits, edges) - 1, 0, BINS - 1)
    rows, positives = np.bincount(bins, minlength=BINS), np.bincount(bins, weights=labels, minlength=BINS)
    scale, shift = fit_platt((edges[:-1] + edges[1:]) / 2, rows.astype(float), positives)
    reference = LogisticRegression(C=1e12, tol=1e-12, max_iter=1000).fit(logits[:, None], labels)
    assert scale == pytest.approx(float(reference.coef_[0, 0]), abs=0.02)
    assert shift == pytest.approx(float(reference.intercept_[0]), abs=0.05)


def test_one_class_or_no_rows_keeps_the_identity():
    centers = np.linspace(-LOGIT_BOUND, LOGIT_BOUND, BINS)
    rows = np.zeros(BINS)
    assert fit_platt(centers, rows, rows) == (1.0, 0.0)
    rows[100:200] = 5.0
    assert fit_platt(centers, rows, np.zeros(BINS)) == (1.0, 0.0)
    assert fit_platt(centers, rows, rows) == (1.0, 0.0)


def test_heads_apply_and_compose_the_calibration_and_keep_the_ranking():
    torch.manual_seed(0)
    heads = TaskHeads({task.name: 8 for task in TASKS}, TASKS)
    features = {task.name: torch.randn(256, 8) for task in TASKS}
    before = heads(features)
    assert heads.calibration.tolist() == [[1.0, 0.0]] * 3
    heads.calibrate({"ctr": (2.0, -1.0), "ctcvr": (0.5, 0.25)})
    heads.calibrate({"ctr": (0.5, 1.0)})  # composed: 0.5 * (2 l - 1) + 1 = l + 0.5
    after = heads(features)
    torch.testing.assert_close(after.logit["ctr"], before.logit["ctr"] + 0.5)
    torch.testing.assert_close(after.logit["ctcvr"], 0.5 * before.logit["ctcvr"] + 0.25)
    assert torch.equal(after.logit["cart"], before.logit["cart"])  # identity: the same bits
    labels = (torch.rand(256) < 0.3).numpy()
    for task in ("ctr", "ctcvr"):  # a monotone map of the task's own logit: its AUC is the same
        assert exact_auc(labels, after.logit[task].detach().numpy()) == exact_auc(
            labels, before.logit[task].detach().numpy()
        )
    # the chain composes the calibrated factors: log p(ctcvr) = log p(ctr) + log sigmoid(ctcvr logit)
    expected = torch.nn.functional.logsigmoid(after.logit["ctr"]) + torch.nn.functional.logsigmoid(
        after.logit["ctcvr"]
    )
    torch.testing.assert_close(after.log_p["ctcvr"], expected)


def _histogram_worker(rank: int, out_dir: Path, world: int) -> None:
    logits, labels = _world()
    share = ROWS // world
    histogram = LogitHistogram(TASKS)
    for start in range(rank * share, (rank + 1) * share, 1000):  # batches of 1000 rows
        histogram.update(*_batch_and_outputs(logits, labels, slice(start, start + 1000)))
    fits = histogram.fit()
    torch.save({task: (fit.scale, fit.shift) for task, fit in fits.items()}, out_dir / f"rank{rank}.pt")


@pytest.mark.distributed
def test_two_ranks_fit_the_same_calibration_as_one_rank(tmp_path):
    results = {}
    for world in (1, 2):
        folder = tmp_path / str(world)
        folder.mkdir()
        run_on_ranks(_histogram_worker, folder, world, world_size=world, timeout_s=60)
        results[world] = [torch.load(folder / f"rank{r}.pt") for r in range(world)]
    # integer counts summed in float64 are exact in any order, and the fit is the same arithmetic
    # on the same counts: every rank, and one rank on all rows, hold the same bits
    assert results[2][0] == results[2][1] == results[1][0]


def _model_with_heads() -> torch.nn.Module:
    model = torch.nn.Module()  # the heads sit at MultiTaskModel.heads
    model.heads = TaskHeads({task.name: 4 for task in TASKS}, TASKS)
    return model


# One process saves and loads a DCP checkpoint without a process group, as no real run does: DCP
# says it assumes a single process, which is the point.
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_a_checkpoint_without_calibration_loads_with_the_identity(tmp_path):
    old_model = _model_with_heads()
    # a checkpoint written before calibration existed
    old_state = {k: v for k, v in old_model.state_dict().items() if k != "heads.calibration"}
    dcp.save({"model": old_state}, checkpoint_id=str(tmp_path / "model"), no_dist=True)
    fresh = _model_with_heads()
    state = {"model": saved_model_state(fresh.state_dict(), tmp_path / "model")}
    assert "heads.calibration" not in state["model"]
    dcp.load(state, checkpoint_id=str(tmp_path / "model"), no_dist=True)
    load_model_state(fresh, state["model"])
    assert fresh.heads.calibration.tolist() == [[1.0, 0.0]] * 3
    for key, value in old_state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    # a checkpoint lacking any other key is still refused by DCP
    partial = {k: v for k, v in old_state.items() if not k.endswith("ctr.logit.bias")}
    dcp.save({"model": partial}, checkpoint_id=str(tmp_path / "partial"), no_dist=True)
    with pytest.raises(BaseException) as refused:  # DCP's CheckpointException (a BaseException)
        dcp.load(
            {"model": saved_model_state(fresh.state_dict(), tmp_path / "partial")},
            checkpoint_id=str(tmp_path / "partial"),
            no_dist=True,
        )
    assert "Missing key in checkpoint state_dict: model.heads.towers.ctr.logit.bias" in str(refused.value)
