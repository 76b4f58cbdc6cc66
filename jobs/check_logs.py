"""Run the data pipeline over some days and write a data report: the same read -> validate ->
transform path the trainer uses, every row counted once.

    python -m jobs.check_logs --logs data/logs --dates 2026-11-18..2026-11-20 --out OUT
        [--spec jobs/configs/features.yaml] [--on-bad-rows error|quarantine] [--on-bad-files error|skip]
        [--address ADDR]

Writes OUT/data_report.json and OUT/data_report.md: rows per day, funnel rates, the oracle AUC of
each stage over its sample space (from the _truth_ columns, where present), dense-feature
statistics, files skipped and rows quarantined with their reasons, and everything in a day folder that is not
data (hidden and temporary files, other suffixes, subfolders).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jobs.cli import run_job
from mtl_rec.config import SampleSpace, load_feature_spec
from mtl_rec.config.data import DataConfig
from mtl_rec.data_position import FILE_SHIFT
from mtl_rec.evaluation import exact_auc
from mtl_rec.quiet import quiet_ray_data


def check_logs(
    logs: str, dates, spec_path: str, out: Path, data: DataConfig, address: str | None = None
) -> dict:
    import ray

    from pipelines.dataset import build_dataset, compute_stats
    from pipelines.read import inspect_logs, parse_dates
    from pipelines.validate import quarantine_summary

    spec = load_feature_spec(spec_path)
    days = parse_dates(dates)
    inventory = inspect_logs(logs, days, spec, data.on_bad_files, data.on_bad_rows, data.check_duplicate_ids)
    if not ray.is_initialized():
        quiet_ray_data()  # before ray.init: a local Ray's processes inherit the setting
        ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    quarantine = out / "quarantine"
    start = time.perf_counter()
    stats = compute_stats(inventory, spec, data, quarantine)
    spaces = {"all": SampleSpace()}
    ds = build_dataset(inventory, spec, stats, spaces, data, quarantine)

    columns: dict[str, list[np.ndarray]] = {}
    wanted = [
        "id",
        "pos",  # the row's file (mtl_rec.data_position): its partition's date, without a time column
        *(["meta." + spec.time_column] if spec.time_column else []),
        *(f"label.{x}" for x in spec.labels),
        *(f"meta.{t}" for t in inventory.truth_columns),
    ]
    with tqdm(total=inventory.rows, unit="rows", desc="checking logs") as progress:
        for table in ds.iter_batches(batch_size=65536, batch_format="pyarrow"):
            for name in wanted:
                columns.setdefault(name, []).append(table[name].to_numpy())
            progress.update(table.num_rows)
    seconds = time.perf_counter() - start
    merged = {k: np.concatenate(v) for k, v in columns.items()}
    if spec.time_column:
        day_of_row = (merged["meta." + spec.time_column] // 86400).astype("datetime64[D]").astype(str)
    else:
        file_dates = np.array([f.date.isoformat() for f in inventory.files])  # [files]
        day_of_row = file_dates[merged["pos"] >> FILE_SHIFT]  # [N]

    per_day = {}
    for day in sorted(set(day_of_row)):
        in_day = day_of_row == day
        per_day[day] = {
            "rows": int(in_day.sum()),
            **{f"{x}_rate": float(merged[f"label.{x}"][in_day].mean()) for x in spec.labels},
        }
    oracle = {}
    labels = {x: merged[f"label.{x}"] for x in spec.labels}
    for entry in spec.oracle:
        label, space_text, truth = entry.label, entry.space, entry.column
        if f"meta.{truth}" not in merged:
            continue
        space = SampleSpace.parse(space_text, spec.labels).mask(labels)
        oracle[f"{label} over {space_text}"] = {
            "space": space_text,
            "rows": int(space.sum()),
            "positives": int(labels[label][space].sum()),
            "oracle_auc": exact_auc(labels[label][space], merged[f"meta.{truth}"][space]),
        }
    report = {
        "logs": str(logs),
        "dates": [d.isoformat() for d in days],
        "files": len(inventory.files),
        "rows_in_files": inventory.rows,
        "rows_valid": int(len(merged["id"])),
        "distinct_request_ids": int(len(np.unique(merged["id"]))),
        "seconds": seconds,
        "rows_per_s": inventory.rows / seconds,
        "per_day": per_day,
        "oracle": oracle,
        "dense_stats": {k: vars(v) for k, v in stats.features.items()},
        "skipped_files": inventory.skipped,
        "ignored_files": inventory.ignored,
        "duplicate_ids": {"checked": inventory.ids.checked, "by_file": inventory.ids.by_file},
        "tables": table_collisions(inventory, spec),
        "quarantine": quarantine_summary(quarantine, spec.row_id_column),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_report.json").write_text(json.dumps(report, indent=2))
    (out / "data_report.md").write_text(to_markdown(report))
    return report


# Above this share of its distinct ids sharing a row with another id, a hashed table is reported as
# colliding: the model cannot tell those ids apart (the Adult port: 35% of 528 ids in a 1000-row table).
COLLISION_WARN_SHARE = 0.01


def table_collisions(inventory, spec) -> dict:
    """{table: {"id_map", "num_embeddings", "distinct_ids", "rows_used", "ids_sharing_a_row",
    "share"}} over the inventory's raw ids (non-null, non-negative), through the run's id map.
    Reads the sparse columns only; the driver holds each table's distinct ids."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from mtl_rec.transform import filled, map_ids, null_mask, single_ids

    distinct: dict[str, list[np.ndarray]] = {name: [] for name in spec.tables}
    for log_file in inventory.files:
        columns = list(dict.fromkeys(c for f in spec.sparse for c in f.columns))
        table = pq.read_table(log_file.path, columns=columns)
        for feature in spec.sparse:
            if feature.cross or feature.boundaries:  # ids of the rows whose columns are all valid
                valid = np.ones(table.num_rows, dtype=bool)  # [rows]
                for read in (table[c].combine_chunks() for c in feature.columns):
                    if feature.cross:
                        valid &= filled(read, 0) >= 0
                    nulls = null_mask(read)  # [rows] bool (NaN too), or False when the column has none
                    if nulls is not False:
                        valid &= ~nulls
                raw = single_ids(table.select(list(feature.columns)).filter(valid), feature)  # [n] >= 0
            else:
                column = table[feature.column].combine_chunks()
                values = pc.list_flatten(column) if feature.multi_hot else column
                raw = pc.drop_null(values).to_numpy(zero_copy_only=False).astype(np.int64)  # [n]
            distinct[feature.table].append(np.unique(raw[raw >= 0]))
    report = {}
    for name, parts in distinct.items():
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # [U]
        table_spec = spec.tables[name]
        rows = map_ids(ids, name, table_spec)  # [U]
        rows = rows[rows < table_spec.num_embeddings]  # identity ids beyond the table are bad rows
        _, per_row = np.unique(rows, return_counts=True)  # [R] ids per used row
        sharing = int(per_row[per_row > 1].sum())
        report[name] = {
            "id_map": table_spec.id_map,
            "num_embeddings": table_spec.num_embeddings,
            "distinct_ids": int(len(ids)),
            "rows_used": int(len(per_row)),
            "ids_sharing_a_row": sharing,
            "share": sharing / len(ids) if len(ids) else 0.0,
        }
    return report


def _fmt(x) -> str:
    return "n/a (single class)" if x is None else f"{x:.4f}"


def to_markdown(report: dict) -> str:
    lines = [
        f"# Data report: {report['dates'][0]} .. {report['dates'][-1]}",
        "",
        f"{report['rows_in_files']:,} rows in {report['files']} files; {report['rows_valid']:,} valid, "
        f"{report['quarantine']['rows']:,} quarantined, {len(report['skipped_files'])} files skipped; "
        f"{report['rows_per_s']:,.0f} rows/s through the pipeline.",
        "",
        "| day | rows | "
        + " | ".join(
            k.removesuffix("_rate") + " rate" for k in next(iter(report["per_day"].values())) if k != "rows"
        )
        + " |",
    ]
    lines.append("|" + " --- |" * (len(lines[-1].split("|")) - 2))
    for day, row in report["per_day"].items():
        lines.append(
            f"| {day} | {row['rows']:,} | "
            + " | ".join(f"{v:.4f}" for k, v in row.items() if k != "rows")
            + " |"
        )
    if report["oracle"]:
        lines += [
            "",
            "| stage | sample space | rows | positives | oracle AUC |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {s} | {o['space']} | {o['rows']:,} | {o['positives']:,} | {_fmt(o['oracle_auc'])} |"
            for s, o in report["oracle"].items()
        ]
    lines += [
        "",
        "| table | id map | rows | distinct ids | rows used | ids sharing a row |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, t in report["tables"].items():
        lines.append(
            f"| {name} | {t['id_map']} | {t['num_embeddings']:,} | {t['distinct_ids']:,} "
            f"| {t['rows_used']:,} | {t['ids_sharing_a_row']:,} ({t['share']:.1%}) |"
        )
    lines.append("")
    for name, t in report["tables"].items():
        if t["share"] > COLLISION_WARN_SHARE:
            advice = f"a larger table, or `id_map: identity` where the ids are below {t['num_embeddings']:,}"
            lines.append(
                f"- warning: table {name}: {t['share']:.1%} of its {t['distinct_ids']:,} ids share a row "
                f"with another id ({t['id_map']} map into {t['num_embeddings']:,} rows): consider {advice}"
            )
    for reason, count in report["quarantine"]["by_reason"].items():
        lines.append(f"- quarantined: {reason}: {count:,} rows")
    for repeat in report["duplicate_ids"]["by_file"]:
        lines.append(
            f"- duplicate ids in {repeat['path']}: {repeat['rows']:,} rows repeat ids first seen in "
            f"{repeat['first_seen_in']}"
        )
    if not report["duplicate_ids"]["checked"]:
        lines.append("- request ids not audited for duplicates (data.check_duplicate_ids: false)")
    for skipped in report["skipped_files"]:
        rows = "rows unknown" if skipped["rows"] is None else f"{skipped['rows']:,} rows"
        lines.append(f"- skipped file {skipped['path']} ({rows}): {skipped['reason']}")
    for ignored in report["ignored_files"]:
        lines.append(f"- ignored (not data) {ignored['path']}: {ignored['reason']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.check_logs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--logs", required=True)
    parser.add_argument("--dates", required=True, help="FIRST..LAST or a comma-separated list")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--spec", default="jobs/configs/features.yaml")
    parser.add_argument("--on-bad-rows", default="error", choices=["error", "quarantine"])
    parser.add_argument("--on-bad-files", default="error", choices=["error", "skip"])
    parser.add_argument("--address", default=None, help="Ray cluster address; default starts a local Ray")
    args = parser.parse_args(argv)
    data = DataConfig(on_bad_rows=args.on_bad_rows, on_bad_files=args.on_bad_files)
    report = check_logs(args.logs, args.dates, args.spec, args.out, data, args.address)
    print(to_markdown(report))
    print(f"wrote {args.out / 'data_report.json'} and data_report.md ({dt.datetime.now():%H:%M:%S})")


if __name__ == "__main__":
    run_job(main)
