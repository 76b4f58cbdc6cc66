"""Train every registered architecture on the same logs with the same budget and compare them.

    python -m jobs.compare_models --logs DIR --out OUT [--archs mmoe,ple,star,...]
        [--base jobs/configs/mmoe.yaml] [--train-dates A..B --eval-dates C]
        [--rows N | --max-steps N] [--epochs N] [--batch-size N] [--seed N]
        [--set key=value ...] [--spec-set key=value ...] [--address ADDR]

Each architecture runs jobs.train.train in OUT/<arch> on the same dates, feature spec, data, optimizer,
weighting, seed and budget: the base config's, with the budget flags on top. Its `model` section is
the architecture's preset (jobs/configs/<arch>.yaml, tuned params) or, without one, the base's model
with `arch` replaced (the arch's default params). Tasks are the base's; a preset's own task list is used
only when it has the same tasks (names, labels, spaces, parents), so its towers may differ (STAR's
linear towers on its logits) while every architecture predicts and is scored on the same targets.

Writes OUT/compare.md and OUT/compare.json: per architecture and evaluation target the AUC, the oracle
AUC of the hidden model and their gap, training samples/s, and parameter counts from the real model
(dense: every parameter outside the tables; embedding: table rows x dim). Without --train-dates and
--eval-dates the logs' last day is held out and the others train. A preset whose tasks differ may name
them in its params (AITM's sequence, ESCM2's ctcvr): the arch then runs with its default params on the
base's tasks, and is skipped when even those do not fit them. Skipped and failed architectures appear
in the table; a failure makes the job exit non-zero after the others ran.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from jobs.compare_weighting import default_dates
from mtl_rec.config.loader import ConfigError, apply_overrides, load_yaml
from mtl_rec.config.model import parse_tasks
from mtl_rec.config.run import RunConfig, features_path
from mtl_rec.run_config import run_config_from_dict

CONFIGS = Path(__file__).parent / "configs"


def _task_identity(tasks) -> list[tuple]:
    return [(t.name, t.label, str(t.sample_space), t.parent, t.conditional_name) for t in tasks]


def arch_config(arch: str, base: str | Path, overrides: Sequence[str]) -> tuple[RunConfig, str | None]:
    """The run config of `arch` (see module doc) and the preset its model came from, if any.

    A preset whose tasks differ from the base's may name its own tasks in its params (AITM's sequence,
    ESCM2's ctcvr): the arch then gets its default params on the base's tasks. ConfigError when even
    those do not fit: compare it on a base it supports (its preset).
    """
    data = load_yaml(base)
    data["features"] = features_path(base, data, overrides)  # as jobs.train reads the base
    preset_path = CONFIGS / f"{arch}.yaml"
    preset = load_yaml(preset_path) if preset_path.is_file() else None
    if preset is None or preset.get("model", {}).get("arch") != arch:
        data["model"] = {**data.get("model", {}), "arch": arch, "params": {}}
        return _run_config(arch, base, data, overrides), None
    data["model"] = preset["model"]
    base_tasks = parse_tasks(data["tasks"], where=f"{base}: tasks")
    if _task_identity(parse_tasks(preset.get("tasks", []), where=f"{preset_path}: tasks")) == _task_identity(
        base_tasks
    ):
        data["tasks"] = preset["tasks"]  # the same targets; the preset's towers
        return _run_config(arch, base, data, overrides), str(preset_path)
    try:
        cfg = _run_config(arch, base, data, overrides)
        parameter_counts(cfg)  # builds the model: the preset's params against the base's tasks
        return cfg, str(preset_path)
    except ConfigError:
        data["model"] = {**data["model"], "params": {}}
    cfg = _run_config(arch, base, data, overrides)
    try:
        parameter_counts(cfg)
    except ConfigError as e:
        raise ConfigError(
            f"{arch} fits neither with its preset's params nor with its defaults on the tasks of {base} "
            f"({e}); compare it on a base it supports, e.g. --base {preset_path}"
        ) from e
    return cfg, None


def _run_config(arch: str, base: str | Path, data: dict, overrides: Sequence[str]) -> RunConfig:
    data = apply_overrides(data, list(overrides))
    try:
        cfg = run_config_from_dict(data)
        parse_tasks(data["tasks"], cfg.feature_spec().labels)
    except ConfigError as e:
        raise ConfigError(f"{arch} (base {base}): {e}") from e
    return cfg


def parameter_counts(cfg: RunConfig, spec_overrides: tuple[str, ...] = ()) -> dict[str, int]:
    """{"dense", "embedding", "total"} parameters of the model `cfg` builds (tables on the meta device:
    counted as rows x dim without being allocated)."""
    from mtl_rec.config.features import load_feature_spec
    from mtl_rec.models.model import MultiTaskModel

    model = MultiTaskModel(load_feature_spec(cfg.features, spec_overrides), cfg.model, cfg.tasks)
    dense = sum(p.numel() for p in model.dense_parameters())
    embedding = sum(
        table.num_embeddings * table.embedding_dim for table in model.sparse_arch.ebc.embedding_bag_configs()
    )
    return {"dense": dense, "embedding": embedding, "total": dense + embedding}


def budget_overrides(rows: int, max_steps: int, epochs: int, batch_size: int, seed: int | None) -> list[str]:
    """--set overrides for the shared budget. `rows` becomes max_steps = ceil(rows / (batch x workers))."""
    overrides = [f"train.epochs={epochs}"]
    if batch_size:
        overrides.append(f"data.batch_size={batch_size}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if rows and max_steps:
        raise ValueError("give --rows or --max-steps, not both")
    if max_steps:
        overrides.append(f"train.max_steps={max_steps}")
    return overrides


def _steps_for_rows(cfg: RunConfig, rows: int) -> int:
    import torch

    workers = cfg.train.workers or (torch.cuda.device_count() if torch.cuda.is_available() else 2)
    return max(1, math.ceil(rows / (cfg.data.batch_size * workers)))


def compare(
    archs: list[str],
    logs: str,
    out: Path,
    train_dates: str,
    eval_dates: str,
    base: str = str(CONFIGS / "mmoe.yaml"),
    overrides: Sequence[str] = (),
    rows: int = 0,
    spec_overrides: tuple[str, ...] = (),
    address: str | None = None,
) -> dict:
    """Train each arch in OUT/<arch>; write and return the summary (compare.json)."""
    from jobs.train import train

    overrides = list(overrides)
    if rows:  # the same number of steps for every arch: batch size and workers come from the base
        base_cfg = run_config_from_dict(apply_overrides(load_yaml(base), overrides))
        overrides.append(f"train.max_steps={_steps_for_rows(base_cfg, rows)}")
    configs, results = {}, {}
    for arch in archs:  # every config problem before the first run
        try:
            configs[arch] = arch_config(arch, base, overrides)
        except ConfigError as e:
            results[arch] = {"skipped": str(e)}
            print(f"skipping {arch}: {e}", flush=True)
    for arch in archs:
        run_dir = out / arch
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(
                f"{run_dir} is not empty: every architecture needs a fresh run (another --out)"
            )
    for index, arch in enumerate(configs, 1):
        cfg, preset = configs[arch]
        print(f"\n=== [{index}/{len(configs)}] {arch} ({preset or 'default params'}) ===", flush=True)
        began = time.perf_counter()
        try:
            parameters = parameter_counts(cfg, spec_overrides)
            metrics = train(cfg, logs, train_dates, eval_dates, out / arch, spec_overrides, address)
        except Exception as e:  # one broken architecture must not hide the others' results
            traceback.print_exc()
            results[arch] = {"preset": preset, "error": f"{type(e).__name__}: {e}"}
            continue
        results[arch] = {
            "preset": preset,
            "params": cfg.model.params,
            "tasks": {
                name: {
                    "space": m["space"],
                    "rows": m["rows"],
                    "auc": m["auc"],
                    "oracle_auc": m.get("oracle_auc"),
                    "gap": None
                    if m["auc"] is None or m.get("oracle_auc") is None
                    else m["oracle_auc"] - m["auc"],
                }
                for name, m in metrics["tasks"].items()
            },
            "samples_per_s": metrics["train"]["samples_per_s"],
            "train_rows": metrics["train"]["rows"],
            "steps": metrics["train"]["steps"],
            "parameters": parameters,
            "seconds": time.perf_counter() - began,
        }
        print(f"[{index}/{len(configs)}] {arch} done in {results[arch]['seconds']:.0f} s", flush=True)
    summary = {
        "base": str(base),
        "logs": logs,
        "train_dates": train_dates,
        "eval_dates": eval_dates,
        "overrides": overrides,
        "spec_overrides": list(spec_overrides),
        "archs": {arch: results[arch] for arch in archs},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    (out / "compare.md").write_text(to_markdown(summary))
    return summary


def to_markdown(summary: dict) -> str:
    """One row per architecture (AUC and gap to the oracle per target), plus the oracle's row."""
    trained = {arch: r for arch, r in summary["archs"].items() if "tasks" in r}
    targets = list(dict.fromkeys(t for r in trained.values() for t in r["tasks"]))
    fmt = lambda x, spec=".4f": "n/a" if x is None else format(x, spec)  # noqa: E731
    oracle = {
        t: next((r["tasks"][t]["oracle_auc"] for r in trained.values() if t in r["tasks"]), None)
        for t in targets
    }
    header = [f"{t} AUC | {t} gap" for t in targets]
    lines = [
        f"# Architectures on {summary['logs']}: {summary['train_dates']} -> {summary['eval_dates']}",
        "",
        f"Base config {summary['base']}; gap = oracle AUC - AUC. Parameters: dense (outside the tables) "
        "and embedding (table rows x dim).",
        "",
        "| arch | " + " | ".join(header) + " | samples/s | dense params | embedding params |",
        "| --- |" + " ---: | ---: |" * len(targets) + " ---: | ---: | ---: |",
        "| oracle | " + " | ".join(cell for t in targets for cell in (fmt(oracle[t]), "")) + " | | | |",
    ]
    for arch, r in summary["archs"].items():
        if "tasks" not in r:
            why = f"failed: {r['error']}" if "error" in r else f"skipped: {r['skipped']}"
            lines.append(f"| {arch} | {why.splitlines()[0][:300]} |")
            continue
        cells = [
            f"{fmt(r['tasks'].get(t, {}).get('auc'))} | {fmt(r['tasks'].get(t, {}).get('gap'), '+.4f')}"
            for t in targets
        ]
        p = r["parameters"]
        lines.append(
            f"| {arch} | "
            + " | ".join(cells)
            + f" | {r['samples_per_s']:,.0f} | {p['dense']:,} | {p['embedding']:,} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    from mtl_rec.models import MODELS

    parser = argparse.ArgumentParser(
        prog="python -m jobs.compare_models",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--logs", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--archs", default=",".join(MODELS), help=f"comma-separated; default all: {', '.join(MODELS)}"
    )
    parser.add_argument(
        "--base", default=str(CONFIGS / "mmoe.yaml"), help="config every run shares (not its model)"
    )
    parser.add_argument("--train-dates")
    parser.add_argument("--eval-dates")
    parser.add_argument(
        "--rows", type=int, default=0, help="training rows per arch (0: --epochs over the dates)"
    )
    parser.add_argument("--max-steps", type=int, default=0, help="training steps per arch (0: no limit)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=0, help="0: the base config's")
    parser.add_argument("--seed", type=int, default=None, help="default: the base config's")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every arch"
    )
    parser.add_argument("--spec-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--address", default=None)
    args = parser.parse_args(argv)
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in MODELS]
    if unknown or not archs:
        parser.error(f"unknown archs {unknown}; registered: {', '.join(MODELS)}")
    try:
        budget = budget_overrides(args.rows, args.max_steps, args.epochs, args.batch_size, args.seed)
    except ValueError as e:
        parser.error(str(e))
    train_dates, eval_dates = (
        (args.train_dates, args.eval_dates)
        if args.train_dates and args.eval_dates
        else default_dates(args.logs)
    )
    summary = compare(
        archs,
        args.logs,
        args.out,
        train_dates,
        eval_dates,
        args.base,
        [*budget, *args.set],
        args.rows,
        tuple(args.spec_set),
        args.address,
    )
    print("\n" + to_markdown(summary))
    print(f"written: {args.out / 'compare.md'}, {args.out / 'compare.json'}")
    failed = [arch for arch, r in summary["archs"].items() if "error" in r]
    if failed or not any("tasks" in r for r in summary["archs"].values()):
        raise SystemExit(
            f"failed: {', '.join(failed) or 'no architecture ran'} (see {args.out / 'compare.md'})"
        )
    return summary


if __name__ == "__main__":
    main()
