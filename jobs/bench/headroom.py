"""`python -m jobs.bench headroom`: how far below the oracle a learner lands that cannot learn some
parts of the hidden model, per task, on the quality section's evaluation day.

The generator's logits are sums of known parts (jobs/logsim.py), so each can be taken out
(`World.without`): the probabilities of the world without a part, on the same rows, are what a
learner would predict that knew everything else exactly. Scored against the same labels:

    oracle           the true probabilities (the quality section's oracle AUC)
    per_id           without each user's and item's own effects and latent parts: what memorising
                     ids could add beyond the attributes
    domain_cross     without the domain x category effects (6,000 cells a stage)
    segment_cross    without the user x item latent products (segment x category, 2,000 categories)
    all three        a learner of main effects only (context, attributes, categories, prices, c)

Tasks as in the quality section: ctr (click over impressions), cvr (conversion over clicks), cart
(cart over clicks), ctcvr (conversion over impressions). Rows: one file's stream of the day, the
generator's default knobs (seed 0). No training: a minute of numpy.

Example::

    python -m jobs.bench headroom --headroom-rows 400000 --out /tmp/headroom.json
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from jobs.bench.common import day
from jobs.logsim import REMOVABLE_PARTS, World, file_rng
from jobs.make_logs import GeneratorConfig, day_summary

EVAL_DAY = 2  # the quality section's evaluation day (its training days are 0 and 1)
REMOVALS = ((), *((part,) for part in REMOVABLE_PARTS), REMOVABLE_PARTS)
TASKS = {"ctr": "click", "cvr": "conversion", "cart": "cart", "ctcvr": "ctcvr"}  # day_summary's auc_<key>


def _aucs(truth: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """{task: AUC} of truth columns {"_truth_p_click", ...} against the rows' labels, each over its
    space: the generator's own per-day oracle AUCs (jobs.make_logs.day_summary)."""
    summary = day_summary({**{name: labels[name] for name in ("click", "cart", "conversion")}, **truth})
    return {task: summary[f"auc_{key}"] for task, key in TASKS.items()}


def headroom(rows: int, config: GeneratorConfig | None = None, date: dt.date | None = None) -> dict:
    """{"rows", "positives": {label: count}, "runs": [{"removed": [parts], "auc": {task: x}}]}: the
    first run removes nothing (the oracle), the last every part."""
    config, date = config or GeneratorConfig(seed=0), date or day(EVAL_DAY)
    world = World(config)
    epoch_day = (date - dt.date(1970, 1, 1)).days
    stream = lambda: file_rng(config.seed, epoch_day, 0)  # noqa: E731 - the same rows for every world
    labels = world.sample(stream(), epoch_day, rows, 0.0, 1.0).columns
    runs = []
    for removed in REMOVALS:
        truth = world.without(removed).probabilities(stream(), epoch_day, rows, 0.0, 1.0)
        runs.append({"removed": list(removed), "auc": _aucs(truth, labels)})
        print(f"[headroom] without {', '.join(removed) or 'nothing'}: {runs[-1]['auc']}", flush=True)
    positives = {name: int(labels[name].sum()) for name in ("click", "cart", "conversion")}
    return {"date": date.isoformat(), "rows": rows, "positives": positives, "runs": runs}


def bench_headroom(args) -> dict:
    return headroom(args.headroom_rows)


def print_headroom(result: dict) -> None:
    oracle = result["runs"][0]["auc"]
    positives = ", ".join(f"{count:,} {name}" for name, count in result["positives"].items())
    where = f"{result['rows']:,} rows of {result['date']} ({positives})"
    print(f"\nheadroom: {where}; AUC (change from the oracle)")
    print("| true logits without | " + " | ".join(oracle) + " |")
    print("| --- |" + " ---: |" * len(oracle))
    for run in result["runs"]:
        cells = (f"{run['auc'][task]:.4f} ({run['auc'][task] - oracle[task]:+.4f})" for task in oracle)
        print(f"| {', '.join(run['removed']) or 'nothing (oracle)'} | " + " | ".join(cells) + " |")
