"""The quality section on UCI Adult: mtl-rec's presets next to torch-rechub and DeepCTR-Torch.

    jobs.datasets.adult.write_adult(CACHE/adult)     the fixed split, feature spec and presets
    for each epochs in --quality-epochs:
      mtl-rec   shared_bottom, mmoe, ple             jobs.train on the converted logs (2 workers)
      peers     the same three models, same sizes    jobs.bench.peers, in their own venv
Records as jobs.bench.quality.record (dataset "adult", oracle_auc empty: real labels have no oracle).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jobs.bench.common import local_ray
from jobs.bench.peers import peer_runs
from jobs.bench.quality_report import record
from jobs.datasets.adult import write_adult
from jobs.train import train
from mtl_rec.run_config import load_run_config

MODELS = ("shared_bottom", "mmoe", "ple")


def adult_runs(args) -> list[dict]:
    data = Path(args.cache) / "adult"
    summary = write_adult(data)
    runs: list[dict] = []
    for epochs in args.quality_epochs:
        with local_ray():
            for model in MODELS:
                cfg = load_run_config(summary.presets[model], [*args.quality_set, f"train.epochs={epochs}"])
                run_dir = Path(args.cache) / "quality-runs" / f"adult-{model}-{epochs}"
                shutil.rmtree(run_dir, ignore_errors=True)
                metrics = train(cfg, str(data / "logs"), summary.train_dates, summary.eval_dates, run_dir)
                runs.append(
                    record(
                        "adult", "mtl-rec", model, epochs, metrics["tasks"], metrics["train"]["samples_per_s"]
                    )
                )
                print(f"[quality] adult mtl-rec {model} epochs {epochs}: {runs[-1]['auc']}", flush=True)
        for peer in peer_runs(data, epochs, MODELS):
            runs.append({**peer, "ece": peer.get("ece", {})})
            print(
                f"[quality] adult {peer['library']} {peer['model']} epochs {epochs}: {peer['auc']}",
                flush=True,
            )
    return runs
