"""`python -m jobs.bench quality`: the presets next to the baselines a user tries first, same rows.

Per dataset (generated logs at two sizes: 3 days x 100k and x 400k, train on the first two days,
evaluate on the third):
  mtl-rec   each preset (shared_bottom, mmoe, ple, esmm) through `jobs.train`, as a user runs it
  mtl-rec   single_task_dnn: one Shared-Bottom model per task with the same embeddings and sizes,
            trained on that task's sample space alone (does sharing help? the point of MTL)
  sklearn   hist_gbdt and logreg per task over its sample space (jobs.bench.baselines)
Every record: {dataset, library, model, epochs, auc, oracle_auc, pred_over_obs, ece, samples_per_s}
with per-task dicts keyed by target name (ctr, cvr, cart, ctcvr), under results["runs"]. The peer
libraries' runs on UCI Adult (jobs.bench.peers) join the same list.

Example::

    python -m jobs.bench quality --out docs/bench-quality.json
    python -m jobs.bench quality --quality-sizes 100000 --quality-presets mmoe --out /tmp/q.json
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import yaml

from jobs.bench.adult import adult_runs
from jobs.bench.baselines import load_frames, sklearn_runs
from jobs.bench.common import day, ensure_logs, local_ray
from jobs.bench.quality_report import passes, quality_table, record
from jobs.train import train
from mtl_rec.config.features import load_feature_spec
from mtl_rec.config.loader import to_dict
from mtl_rec.config.model import TaskConfig
from mtl_rec.metrics import eval_targets
from mtl_rec.run_config import load_run_config

PRESETS = ("shared_bottom", "mmoe", "ple", "adatt", "esmm")
# The single-task baselines: one task each, scored like the presets' targets of the same name.
SINGLE_TASKS = (
    {"name": "ctr", "label": "click", "space": "all"},
    {"name": "cvr", "label": "conversion", "space": "click == 1"},
    {"name": "cart", "label": "cart", "space": "click == 1"},
    {"name": "ctcvr", "label": "conversion", "space": "all"},
)
DATE_FORMAT = "%Y-%m-%d"


def _dataset_name(rows_per_day: int) -> str:
    return f"generated-{rows_per_day // 1000}k"


def _dates() -> tuple[str, str]:
    return f"{day(0)}..{day(1)}", day(2).isoformat()


def _train_run(args, cfg, logs: Path, name: str) -> dict:
    run_dir = Path(args.cache) / "quality-runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a checkpoint left there would make the run resume
    train_dates, eval_dates = _dates()
    return train(cfg, str(logs), train_dates, eval_dates, run_dir)


def _preset_runs(args, dataset: str, logs: Path) -> list[dict]:
    runs = []
    for preset in args.quality_presets:
        cfg = load_run_config(f"jobs/configs/{preset}.yaml", args.quality_set)
        metrics = _train_run(args, cfg, logs, f"{dataset}-{preset}")
        run = record(dataset, "mtl-rec", preset, passes(cfg, metrics), metrics["tasks"], _speed(metrics))
        runs.append({**run, "recipe": "preset"})
        _print_run(runs[-1])
    return runs


def _single_task_runs(args, dataset: str, logs: Path) -> dict:
    """One Shared-Bottom model per task (the shared_bottom preset with only that task)."""
    base = load_run_config("jobs/configs/shared_bottom.yaml", args.quality_set)
    tower = to_dict(base.tasks[0])["tower"]
    tasks, speeds, made = {}, [], []
    for task in SINGLE_TASKS:
        flow = yaml.safe_dump([{**task, "tower": tower}], default_flow_style=True, width=1 << 20).strip()
        overrides = [*args.quality_set, f"tasks={flow}"]
        cfg = load_run_config("jobs/configs/shared_bottom.yaml", overrides)
        metrics = _train_run(args, cfg, logs, f"{dataset}-single-{task['name']}")
        tasks[task["name"]] = metrics["tasks"][task["name"]]
        speeds.append(_speed(metrics))
        made.append(passes(cfg, metrics))
    mean_speed = sum(speeds) / len(speeds) if all(speeds) else None
    run = record(dataset, "mtl-rec", "single_task_dnn", max(made), tasks, mean_speed)  # the most passes
    run["recipe"] = "preset"
    _print_run(run)
    return run


def _speed(metrics: dict):
    return metrics["train"]["samples_per_s"]


def _sklearn_runs(dataset: str, logs: Path, spec) -> list[dict]:
    # every single task as a target: canonical space keys and oracle columns, as the presets get them
    targets = eval_targets([TaskConfig(t["name"], t["label"], t["space"]) for t in SINGLE_TASKS], spec)
    train_dates, eval_dates = _dates()
    runs = sklearn_runs(dataset, load_frames(str(logs), train_dates, eval_dates, spec), targets, spec)
    for run in runs:
        _print_run(run)
    return runs


def _print_run(run: dict) -> None:
    fmt = lambda x: "  n/a " if x is None else f"{x:.4f}"  # noqa: E731
    cells = " ".join(
        f"{task} {fmt(auc)} (p/o {fmt(run['pred_over_obs'].get(task))})" for task, auc in run["auc"].items()
    )
    speed = f"{run['samples_per_s']:,.0f}/s" if run["samples_per_s"] else "n/a"
    print(
        f"[quality] {run['dataset']:<15} {run['library']:<13} {run['model']:<16} {cells}  {speed}", flush=True
    )


def bench_quality(args) -> dict:
    """Every dataset's runs (see module doc); returns {"runs": [...], "goals": [...]}."""
    spec = load_feature_spec("jobs/configs/features.yaml")
    runs: list[dict] = []
    for rows_per_day in args.quality_sizes:
        dataset = _dataset_name(rows_per_day)
        logs = ensure_logs(Path(args.cache) / dataset, spec, {day(i): rows_per_day for i in range(3)})
        runs += _sklearn_runs(dataset, logs, spec)
        with local_ray():
            runs += _preset_runs(args, dataset, logs)
            if args.quality_single_task:
                runs.append(_single_task_runs(args, dataset, logs))
    if args.quality_adult:
        runs += adult_runs(args)
    return {"runs": runs, "date": dt.date.today().strftime(DATE_FORMAT)}


def print_quality(result: dict) -> None:
    print("\n" + quality_table(result["runs"]))
