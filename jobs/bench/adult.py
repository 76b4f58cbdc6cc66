"""The quality section on UCI Adult: mtl-rec next to scikit-learn and the peer libraries, same rows.

    jobs.datasets.adult.write_adult(CACHE/adult)     the fixed split, feature spec and presets
                                                     (--adult-buckets N: CACHE/adult-buckets-N, each
                                                     numeric column bucketized too, for every library)
    sklearn   hist_gbdt, logreg                      jobs.bench.baselines, per task (epochs 1: a fit)
    mtl-rec   shared_bottom, mmoe, ple as presets    jobs.train, the presets' recipe: passes until
                                                     the validation hold-out stops improving, then
                                                     calibration (epochs: the passes it took)
    for each epochs in --quality-epochs, --adult-repeat rounds (2), alternating:
      mtl-rec   shared_bottom, mmoe, ple             exactly that many passes over every training row
                                                     (no hold-out, no early stopping), like the peers
      peers     the same three models, same sizes    jobs.bench.peers, in their own venv
    each (library, model) keeps the first round's AUCs and the fastest round's samples/s
    (quality_report.fastest_of_rounds)
Records as jobs.bench.quality.record (dataset "adult", oracle_auc empty: real labels have no oracle).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jobs.bench.baselines import load_frames, sklearn_runs
from jobs.bench.common import local_ray
from jobs.bench.peers import peer_runs
from jobs.bench.quality_report import fastest_of_rounds, passes, record
from jobs.datasets.adult import write_adult
from jobs.train import train
from mtl_rec.config.features import load_feature_spec
from mtl_rec.config.model import TaskConfig
from mtl_rec.config.run import SINGLE_PASS
from mtl_rec.metrics import eval_targets
from mtl_rec.run_config import load_run_config

MODELS = ("shared_bottom", "mmoe", "ple")


def _sklearn_runs(data: Path, summary) -> list[dict]:
    spec = load_feature_spec(data / "features.yaml")
    targets = eval_targets([TaskConfig(label, label) for label in spec.labels], spec)
    frames = load_frames(str(data / "logs"), summary.train_dates, summary.eval_dates, spec)
    runs = sklearn_runs("adult", frames, targets, spec)
    for run in runs:
        print(f"[quality] adult sklearn {run['model']}: {run['auc']}", flush=True)
    return runs


def _mtl_rec_run(args, data: Path, summary, model: str, overrides: list[str], name: str) -> tuple[dict, dict]:
    cfg = load_run_config(summary.presets[model], [*args.quality_set, *overrides])
    run_dir = Path(args.cache) / "quality-runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = train(cfg, str(data / "logs"), summary.train_dates, summary.eval_dates, run_dir)
    return cfg, metrics


def _speed(samples_per_s) -> str:
    return "n/a" if samples_per_s is None else f"{samples_per_s:,.0f}/s"


def _fixed_epochs_round(args, data: Path, summary, epochs: int) -> list[dict]:
    """Every library's three models, exactly `epochs` passes each: one record per run."""
    runs = []
    with local_ray():
        for model in MODELS:
            fixed = [*SINGLE_PASS, f"train.epochs={epochs}"]
            _, metrics = _mtl_rec_run(args, data, summary, model, fixed, f"adult-{model}-{epochs}")
            speed = metrics["train"]["samples_per_s"]
            runs.append(record("adult", "mtl-rec", model, epochs, metrics["tasks"], speed))
            auc = runs[-1]["auc"]
            print(f"[quality] adult mtl-rec {model} epochs {epochs}: {auc} {_speed(speed)}", flush=True)
    for peer in peer_runs(data, epochs, MODELS):
        runs.append({**peer, "ece": peer.get("ece", {})})
        print(
            f"[quality] adult {peer['library']} {peer['model']} epochs {epochs}: {peer['auc']} "
            f"{_speed(peer['samples_per_s'])}",
            flush=True,
        )
    return runs


def adult_runs(args) -> list[dict]:
    buckets = getattr(args, "adult_buckets", 0)
    data = Path(args.cache) / (f"adult-buckets-{buckets}" if buckets else "adult")
    summary = write_adult(data, buckets=buckets)
    runs = _sklearn_runs(data, summary)
    with local_ray():
        for model in MODELS:  # the preset as a user runs it
            cfg, metrics = _mtl_rec_run(args, data, summary, model, [], f"adult-{model}-preset")
            passes_made = passes(cfg, metrics)
            speed = metrics["train"]["samples_per_s"]
            run = record("adult", "mtl-rec", model, passes_made, metrics["tasks"], speed)
            runs.append({**run, "recipe": "preset"})
            print(
                f"[quality] adult mtl-rec {model} preset ({passes_made} passes): {runs[-1]['auc']}",
                flush=True,
            )
    repeat = max(1, getattr(args, "adult_repeat", 1))
    for epochs in args.quality_epochs:
        # rounds alternate mtl-rec and the peers, so a slow spell of the shared machine hits both
        rounds = [_fixed_epochs_round(args, data, summary, epochs) for _ in range(repeat)]
        runs += fastest_of_rounds(rounds)
    return [{**run, "adult_buckets": buckets} for run in runs] if buckets else runs
