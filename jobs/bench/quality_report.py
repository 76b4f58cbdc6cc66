"""The quality section's table and its goals (the model-quality issue's), as summary rows.

Goals:
- generated-100k: every preset at or above HistGradientBoosting's AUC on every task, at or above
  the single-task DNN on the post-click tasks (cvr, cart), ctr within 0.03 of the oracle;
- generated-400k: every task of every preset within 0.03 of the oracle;
- adult: every mtl-rec model at or above the best peer library's AUC on both tasks, and samples/s
  at least 2x torch-rechub's and at least DeepCTR-Torch's;
- every preset's pred/obs within [0.95, 1.05] on every task.

Example::

    >>> print(quality_table(results["quality"]["runs"]))
    | dataset | library | model | ctr AUC | ... |
"""

from __future__ import annotations

from jobs.bench.table import Row

ORACLE_GAP = 0.03
CALIBRATION_BAND = (0.95, 1.05)
POST_CLICK = ("cvr", "cart")


def record(dataset: str, library: str, model: str, epochs: int, tasks: dict, samples_per_s) -> dict:
    """One run's line of the benchmark: per-task dicts from {target: metrics}."""
    pick = lambda key: {name: m.get(key) for name, m in tasks.items() if not name.startswith("_")}  # noqa: E731
    return {
        "dataset": dataset,
        "library": library,
        "model": model,
        "epochs": epochs,
        "auc": pick("auc"),
        "oracle_auc": {k: v for k, v in pick("oracle_auc").items() if v is not None},
        "pred_over_obs": pick("pred_over_obs"),
        "ece": pick("ece"),
        "samples_per_s": samples_per_s,
    }


def fastest_of_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Records of the same runs made in several rounds -> one record per (dataset, library, model,
    epochs): the first round's, with samples/s the most any round reached (as `jobs.bench train`
    keeps the best of its runs: on a shared machine a run is slowed by what else runs, never sped
    up), every round's samples/s in `samples_per_s_runs` and, where the rounds' AUCs differ, every
    round's AUC in `auc_runs`. The AUC kept does not depend on which round was fastest."""
    by_key: dict[tuple, list[dict]] = {}
    for records in rounds:
        for run in records:
            key = (run["dataset"], run["library"], run["model"], run["epochs"], run.get("recipe"))
            by_key.setdefault(key, []).append(run)
    kept = []
    for runs in by_key.values():
        speeds = [run["samples_per_s"] for run in runs]
        measured = [speed for speed in speeds if speed is not None]
        extra = {"samples_per_s": max(measured) if measured else None, "samples_per_s_runs": speeds}
        if any(run["auc"] != runs[0]["auc"] for run in runs):
            extra["auc_runs"] = [run["auc"] for run in runs]
        kept.append({**runs[0], **extra})
    return kept


def passes(cfg, metrics: dict) -> int:
    """The passes a jobs.train run made: its validated epochs under early stopping, else its epochs."""
    return len(metrics["train"]["validation"] or []) or cfg.train.epochs


def _epochs(run: dict) -> str:
    """The epochs cell: a preset run's passes are its early stopping's choice, marked with "es"."""
    return f"{run['epochs']} es" if run.get("recipe") == "preset" else str(run["epochs"])


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def quality_table(runs: list[dict]) -> str:
    """Markdown: one row per run, AUC (pred/obs) per task, the oracle row per dataset, samples/s."""
    tasks = list(dict.fromkeys(task for run in runs for task in run["auc"]))
    head = (
        "| dataset | library | model | epochs | "
        + " | ".join(f"{t} AUC (p/o)" for t in tasks)
        + " | samples/s |"
    )
    lines = [head, "| --- | --- | --- | ---: |" + " ---: |" * (len(tasks) + 1)]
    seen_oracle = set()
    for run in runs:
        if run["dataset"] not in seen_oracle and run["oracle_auc"]:
            seen_oracle.add(run["dataset"])
            oracle = [_fmt(run["oracle_auc"].get(t)) if t in run["oracle_auc"] else "" for t in tasks]
            lines.append(f"| {run['dataset']} | oracle | | | " + " | ".join(oracle) + " | |")
        cells = []
        for task in tasks:
            auc, ratio = run["auc"].get(task), run["pred_over_obs"].get(task)
            cells.append(
                ""
                if task not in run["auc"]
                else f"{_fmt(auc)} ({'n/a' if ratio is None else f'{ratio:.2f}'})"
            )
        speed = f"{run['samples_per_s']:,.0f}" if run.get("samples_per_s") else "n/a"
        lines.append(
            f"| {run['dataset']} | {run['library']} | {run['model']} | {_epochs(run)} | "
            + " | ".join(cells)
            + f" | {speed} |"
        )
    return "\n".join(lines)


def _find(runs: list[dict], dataset: str, library: str | None = None, model: str | None = None) -> list[dict]:
    return [
        r
        for r in runs
        if r["dataset"] == dataset
        and (library is None or r["library"] == library)
        and (model is None or r["model"] == model)
    ]


def _presets(runs: list[dict], dataset: str) -> list[dict]:
    return [r for r in _find(runs, dataset, "mtl-rec") if r["model"] != "single_task_dnn"]


def _at_least(value, reference) -> bool:
    return value is not None and reference is not None and value >= reference


def quality_goal_rows(runs: list[dict]) -> list[Row]:
    """One summary row per (goal, preset): the worst margin over the goal's tasks."""
    rows: list[Row] = []
    for gbdt in _find(runs, "generated-100k", "sklearn", "hist_gbdt"):
        for run in _presets(runs, "generated-100k"):
            tasks = [t for t in run["auc"] if t in gbdt["auc"]]
            margin = min(run["auc"][t] - gbdt["auc"][t] for t in tasks)
            ok = all(_at_least(run["auc"][t], gbdt["auc"][t]) for t in tasks)
            rows.append(
                Row(
                    "quality",
                    f"100k {run['model']} vs hist_gbdt",
                    f"{margin:+.4f} AUC (worst task)",
                    "hist_gbdt",
                    ">= 0",
                    ok,
                )
            )
    for single in _find(runs, "generated-100k", "mtl-rec", "single_task_dnn"):
        for run in _presets(runs, "generated-100k"):
            tasks = [t for t in POST_CLICK if t in run["auc"] and t in single["auc"]]
            if tasks:
                margin = min(run["auc"][t] - single["auc"][t] for t in tasks)
                rows.append(
                    Row(
                        "quality",
                        f"100k {run['model']} vs single-task",
                        f"{margin:+.4f} AUC (post-click)",
                        "single_task_dnn",
                        ">= 0",
                        margin >= 0,
                    )
                )
    for dataset, tasks in (("generated-100k", ("ctr",)), ("generated-400k", None)):
        for run in _presets(runs, dataset):
            names = [
                t for t in (tasks or run["auc"]) if t in run["oracle_auc"] and run["auc"].get(t) is not None
            ]
            if names:
                gap = max(run["oracle_auc"][t] - run["auc"][t] for t in names)
                label = "ctr" if tasks else "every task"
                rows.append(
                    Row(
                        "quality",
                        f"{dataset[10:]} {run['model']} oracle gap ({label})",
                        f"{gap:.4f}",
                        "oracle",
                        f"<= {ORACLE_GAP}",
                        gap <= ORACLE_GAP,
                    )
                )
    for run in [r for d in ("generated-100k", "generated-400k") for r in _presets(runs, d)]:
        ratios = [v for v in run["pred_over_obs"].values() if v is not None]
        if ratios:
            worst = max(ratios, key=lambda r: abs(r - 1))
            ok = CALIBRATION_BAND[0] <= min(ratios) and max(ratios) <= CALIBRATION_BAND[1]
            rows.append(
                Row(
                    "quality",
                    f"{run['dataset'][10:]} {run['model']} pred/obs",
                    f"{worst:.3f} (worst task)",
                    "observed",
                    "[0.95, 1.05]",
                    ok,
                )
            )
    peers = [r for r in _find(runs, "adult") if r["library"] not in ("mtl-rec", "sklearn")]
    for run in [r for r in _find(runs, "adult", "mtl-rec") if r.get("recipe") == "preset"]:
        for baseline in _find(runs, "adult", "sklearn"):  # the presets as a user runs them
            margin = min(run["auc"][t] - baseline["auc"][t] for t in run["auc"])
            rows.append(
                Row(
                    "quality",
                    f"adult {run['model']} preset vs {baseline['model']}",
                    f"{margin:+.4f} AUC (worst task)",
                    baseline["model"],
                    ">= 0",
                    margin >= 0,
                )
            )
    for run in [r for r in _find(runs, "adult", "mtl-rec") if r.get("recipe") != "preset"]:
        same = [p for p in peers if p["epochs"] == run["epochs"]]
        if same:
            margin = min(run["auc"][t] - max(p["auc"][t] for p in same) for t in run["auc"])
            rows.append(
                Row(
                    "quality",
                    f"adult {run['model']} {run['epochs']} ep vs best peer",
                    f"{margin:+.4f} AUC (worst task)",
                    "best peer",
                    ">= 0",
                    margin >= 0,
                )
            )
        for library, factor in (("torch-rechub", 2.0), ("deepctr-torch", 1.0)):
            peer = [p for p in same if p["library"] == library and p["model"] == run["model"]]
            if peer and run.get("samples_per_s") and peer[0].get("samples_per_s"):
                ratio = run["samples_per_s"] / peer[0]["samples_per_s"]
                rows.append(
                    Row(
                        "quality",
                        f"adult {run['model']} {run['epochs']} ep speed vs {library}",
                        f"{ratio:.2f}x",
                        library,
                        f">= {factor:g}x",
                        ratio >= factor,
                    )
                )
    return rows
