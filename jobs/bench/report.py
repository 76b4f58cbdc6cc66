"""One summary table over whatever sections ran: each figure, what it is compared with, the goal.

The goals are the performance issue's, for the reference MMoE on the 2-core CPU machine:
end to end >= 25,000 samples/s, loader cost <= 10% of the model-only ceiling, end to end >= 0.35 of
the dense-FLOP floor; time linear in rows (every run within 10% of a fitted line); loss-weighting
methods <= 1.3x fixed weights per step, gradient methods <= 2x. The table is Markdown, so it can go
into docs/benchmarks.md as printed.

Example::

    >>> rows = summary_rows(results)          # results: the JSON `python -m jobs.bench all` writes
    >>> print(format_table(rows))
    | section | measure | value | compared with | goal | met |
    | --- | --- | ---: | --- | --- | --- |
    | train | end to end | 24,850 samples/s | ... | >= 25,000 samples/s | no |
"""

from __future__ import annotations

from jobs.bench.groups import groups_rows
from jobs.bench.quality_report import quality_goal_rows
from jobs.bench.serve import serve_rows
from jobs.bench.table import COLUMNS, Row, format_table

__all__ = ["COLUMNS", "Row", "format_table", "summary_rows"]

GOAL_SAMPLES_PER_S = 25_000
GOAL_LOADER_COST = 0.10
GOAL_OF_FLOOR = 0.35
LINEAR_TOLERANCE = 0.10  # every rows run within this of the fitted line counts as linear
WEIGHTING_GOALS = {"loss": 1.3, "gradient": 2.0}


def _rate(x: float, unit: str) -> str:
    return f"{x:,.0f} {unit}"


def _loader_rows(r: dict) -> list[Row]:
    pyarrow = r["pyarrow_only"]["rows_per_s"]
    split = r["ray_split"]
    return [
        Row("loader", "pyarrow alone", _rate(pyarrow, "rows/s")),
        Row(
            "loader",
            "validate+transform+collate, 1 process",
            _rate(r["in_process_one_core"]["rows_per_s"], "rows/s"),
            f"{r['in_process_one_core']['rows_per_s'] / pyarrow:.2f} of pyarrow",
        ),
        Row(
            "loader",
            "Ray Data split -> 2 consumers",
            _rate(split["rows_per_s"], "rows/s"),
            f"{r['ray_over_pyarrow']:.2f} of pyarrow",
        ),
        Row(
            "loader",
            "  steady state",
            _rate(split["steady_rows_per_s"], "rows/s"),
            f"{split['steady_rows_per_s'] / pyarrow:.2f} of pyarrow",
        ),
        Row("loader", "every row exactly once", str(r["every_row_once"]), "", "True", r["every_row_once"]),
        Row(
            "loader",
            "CPU per million rows: consumers / data plane",
            f"{split['consumer_cpu_s_per_million_rows']:.2f} / "
            + (
                "n/a"
                if split["data_plane_cpu_s_per_million_rows"] is None
                else f"{split['data_plane_cpu_s_per_million_rows']:.2f}"
            )
            + " s",
            "iterator + collate / read tasks, coordinator, Ray",
        ),
    ]


def _flops_rows(r: dict) -> list[Row]:
    counts, rate = r["flops_per_sample"], r["matmul"]
    return [
        Row(
            "flops",
            "dense FLOPs per sample",
            f"{counts['total'] / 1e6:.3f} M",
            f"forward {counts['forward'] / 1e6:.3f} M + backward {counts['backward'] / 1e6:.3f} M",
        ),
        Row(
            "flops",
            "matmul rate",
            f"{rate['flops_per_s'] / 1e9:.1f} GFLOP/s",
            f"[{rate['size']}]^2 float32, {rate['threads']} threads",
        ),
        Row(
            "flops",
            "dense-FLOP floor",
            _rate(r["floor_samples_per_s"], "samples/s"),
            "matmul rate / FLOPs per sample",
        ),
    ]


def _train_rows(r: dict) -> list[Row]:
    e2e, ceiling = r["end_to_end"], r["model_only_ceiling"]
    return [
        Row(
            "train",
            "end to end",
            _rate(e2e["samples_per_s"], "samples/s"),
            "",
            f">= {GOAL_SAMPLES_PER_S:,} samples/s",
            e2e["samples_per_s"] >= GOAL_SAMPLES_PER_S,
        ),
        Row("train", "model-only ceiling", _rate(ceiling["samples_per_s"], "samples/s")),
        Row(
            "train",
            "loader cost",
            f"{r['loader_cost']:.1%}",
            "1 - end to end / ceiling",
            f"<= {GOAL_LOADER_COST:.0%}",
            r["loader_cost"] <= GOAL_LOADER_COST,
        ),
        Row(
            "train",
            "end to end / dense-FLOP floor",
            f"{r['end_to_end_of_floor']:.2f}",
            _rate(r["floor_samples_per_s"], "samples/s floor"),
            f">= {GOAL_OF_FLOOR}",
            r["end_to_end_of_floor"] >= GOAL_OF_FLOOR,
        ),
        Row("train", "ceiling / dense-FLOP floor", f"{r['ceiling_of_floor']:.2f}"),
        Row(
            "train",
            "peak RSS per worker, end to end",
            " / ".join(f"{x:,.0f}" for x in e2e["peak_rss_mb_per_worker"]) + " MB",
        ),
    ]


def _growth_rows(r: dict) -> list[Row]:
    rows = []
    for factor, g in r["rows"].items():
        if factor != "1":
            rows.append(
                Row(
                    "growth",
                    f"rows x{factor}: time",
                    f"x{g['time_ratio']:.2f}",
                    f"rows x{g['rows_ratio']:.2f}",
                )
            )
    fit = r["rows_fit"]
    if fit["per_row_s"] is not None:
        deviation = fit["max_deviation"]
        rows.append(
            Row(
                "growth",
                "rows: time = fixed + per row",
                f"{fit['fixed_s']:.2f} s + {fit['per_row_s'] * 1e6:.2f} us/row",
                "" if deviation is None else f"runs within {deviation:.1%} of the line",
                f"linear (within {LINEAR_TOLERANCE:.0%})",
                None if deviation is None else deviation <= LINEAR_TOLERANCE,
            )
        )
    for factor, g in r["tables"].items():
        peak = " / ".join(f"{x:,.0f}" for x in g["peak_rss_mb_per_worker"])
        if factor == "1":
            rows.append(Row("growth", "tables x1: peak RSS per worker", f"{peak} MB"))
        else:
            rows.append(
                Row(
                    "growth",
                    f"tables x{factor}: time per row",
                    f"x{g['time_per_row_ratio']:.2f}",
                    f"peak RSS {peak} MB",
                )
            )
    for workers, g in r["workers"].items():
        if workers != "2":
            rows.append(
                Row(
                    "growth",
                    f"2 workers vs {workers}",
                    f"x{g['speedup_of_base']:.2f} faster",
                    f"{g['samples_per_s']:,.0f} samples/s with {workers}",
                )
            )
    return rows


def _weighting_rows(r: dict) -> list[Row]:
    rows = []
    for kind, goal in WEIGHTING_GOALS.items():
        methods = {m: x for m, x in r["methods"].items() if x["kind"] == kind}
        if methods:
            worst = max(methods, key=lambda m: methods[m]["relative_to_fixed"])
            relative = methods[worst]["relative_to_fixed"]
            rows.append(
                Row(
                    "weighting",
                    f"slowest {kind}-based method",
                    f"x{relative:.2f} fixed",
                    worst,
                    f"<= x{goal}",
                    relative <= goal,
                )
            )
    return rows


SECTIONS = {
    "loader": _loader_rows,
    "flops": _flops_rows,
    "train": _train_rows,
    "growth": _growth_rows,
    "weighting": _weighting_rows,
}


def summary_rows(results: dict) -> list[Row]:
    """The table's rows for every section present in `results` (the JSON jobs.bench writes)."""
    sections = {
        **SECTIONS,
        "quality": lambda r: quality_goal_rows(r["runs"]),
        "serve": serve_rows,
        "groups": groups_rows,
    }
    return [row for name, build in sections.items() if name in results for row in build(results[name])]
