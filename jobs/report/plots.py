"""The report's figures as PNG bytes (matplotlib, Agg backend: no display, no network).

Each function takes plain report data and returns one PNG; render.py embeds them in report.html as
data URIs and writes them to OUT/plots/ for report.md. Returns None where there is nothing to draw
(e.g. no training history in the run directory).

Example::

    >>> png = roc_figure("ctr", curves["ctr"], metrics["ctr"]["overall"])
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: a headless backend on every machine

import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"run": ("C0", "-"), "baseline": ("C1", "--"), "oracle": ("0.5", ":")}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _value(entry: dict | None) -> float | None:
    return entry.get("value") if isinstance(entry, dict) else None


def roc_figure(target: str, curves: dict, overall: dict) -> bytes | None:
    """ROC curves of the run, the baseline and the oracle over the target's space, all days."""
    if not any(c["fpr"] for c in curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for model, curve in curves.items():
        if not curve["fpr"]:
            continue
        auc = _value(overall["oracle_auc"]) if model == "oracle" else _value(overall[model]["auc"])
        color, line = STYLE[model]
        label = f"{model} (AUC {auc:.4f})" if auc is not None else model
        ax.plot(curve["fpr"], curve["tpr"], color=color, linestyle=line, label=label)
    ax.plot([0, 1], [0, 1], color="0.8", linewidth=0.8)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC: {target} (n={overall['rows']:,})",
    )
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def reliability_figure(target: str, overall: dict, models: list[str]) -> bytes | None:
    """Mean prediction vs observed positive rate per equal-mass bin, for each model."""
    if not overall["run"]["calibration"]["bins"]:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 4))
    top = 0.0
    for model in models:
        calibration = overall[model]["calibration"]
        bins = calibration["bins"]
        x = [b["mean_pred"] for b in bins]
        y = [b["observed"] for b in bins]
        top = max(top, *x, *y)
        ece = _value(calibration["ece"])
        color, line = STYLE[model]
        ax.plot(x, y, color=color, linestyle=line, marker="o", markersize=3, label=f"{model} (ECE {ece:.4f})")
    ax.plot([0, top], [0, top], color="0.7", linewidth=0.8, label="perfect")
    ax.set(xlabel="mean prediction (bin)", ylabel="observed rate (bin)", title=f"Reliability: {target}")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def auc_by_day_figure(metrics: dict) -> bytes | None:
    """AUC of every target on each day: run (solid), baseline (dashed), oracle (dotted)."""
    days = sorted(next(iter(metrics.values()))["by_day"]) if metrics else []
    if not days:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (name, target) in enumerate(metrics.items()):
        color = f"C{i % 10}"
        for model, line in (("run", "-"), ("baseline", "--"), ("oracle", ":")):
            if model != "oracle" and model not in target["overall"]:
                continue
            values = [
                _value(
                    target["by_day"][d]["oracle_auc"]
                    if model == "oracle"
                    else target["by_day"][d][model]["auc"]
                )
                for d in days
            ]
            if all(v is None for v in values):
                continue
            values = [float("nan") if v is None else v for v in values]
            ax.plot(
                days, values, color=color, linestyle=line, marker="o", markersize=3, label=f"{name} {model}"
            )
    ax.set(xlabel="day", ylabel="AUC", title="AUC over days")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return _png(fig)


def training_figure(histories: dict[str, list[dict]], key: str, ylabel: str) -> bytes | None:
    """history[key][task] against the step, for the run (solid) and the baseline (dashed)."""
    if not any(h and key in h[0] for h in histories.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for model, history in histories.items():
        if not history or key not in history[0]:
            continue
        steps = [h["step"] for h in history]
        for i, task in enumerate(history[0][key]):
            values = [h[key].get(task) for h in history]
            ax.plot(steps, values, color=f"C{i % 10}", linestyle=STYLE[model][1], label=f"{task} ({model})")
    ax.set(xlabel="training step", ylabel=ylabel, title=f"Training {ylabel} per task")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return _png(fig)


def group_weights_figure(histories: dict[str, list[dict]]) -> bytes | None:
    """weighting.groups runs: each group's weight of each task against the step, one panel per task,
    one colour per group; the run solid, the baseline dashed."""
    logged = {model: [h for h in history if "group_weights" in h] for model, history in histories.items()}
    logged = {model: history for model, history in logged.items() if history}
    if not logged:
        return None
    tasks = list(next(iter(next(iter(logged.values()))[0]["group_weights"].values())))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for model, history in logged.items():
            steps = [h["step"] for h in history]
            for group in history[0]["group_weights"]:
                values = [h["group_weights"].get(group, {}).get(task) for h in history]
                ax.plot(steps, values, color=f"C{int(group) % 10}", linestyle=STYLE[model][1],
                        label=f"group {group} ({model})")  # fmt: skip
        ax.set(xlabel="training step", ylabel="loss weight", title=task)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Task weights per group (weighting.groups)", fontsize=10)
    return _png(fig)
