"""report.md and report.html from the report dict: the same tables in both, plots in the HTML as data
URIs (self-contained: no script, stylesheet, font or image is fetched) and linked from the Markdown.

A value that could not be computed prints as "n/a (reason)", never NaN; every table carries its
row and positive counts, GAUC its group count.

Example::

    >>> markdown = render_markdown(report, {"roc_ctr": "plots/roc_ctr.png"})
    >>> html = render_html(report, {"roc_ctr": png_bytes})
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from jobs.report.gate import describe_failure, describe_gate


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""


def fmt(entry, digits: int = 4, signed: bool = False) -> str:
    """A metric_value dict (or a bare number) as text; 'n/a (reason)' when it has no value."""
    if isinstance(entry, dict):
        if entry.get("value") is None:
            return f"n/a ({entry.get('reason', 'not computable')})"
        entry = entry["value"]
    if entry is None:
        return "n/a"
    return f"{entry:+.{digits}f}" if signed else f"{entry:.{digits}f}"


def _ci(ci: dict | None) -> str:
    if not ci or ci.get("low") is None:
        return "n/a" if not ci else f"n/a ({ci.get('reason', '')})"
    return f"[{ci['low']:+.4f}, {ci['high']:+.4f}]"


def _gauc(gauc: dict) -> str:
    return (
        f"{fmt(gauc['mean'])} / {fmt(gauc['impression_weighted'])} / {fmt(gauc['positive_weighted'])} "
        f"({gauc['groups_scored']:,} of {gauc['groups']:,} groups)"
    )


def tables(report: dict) -> list[Table]:
    """Every table of the report, in order."""
    metrics, has_base = report["metrics"], report["baseline"] is not None
    summary = Table(
        "Summary over all days",
        [
            "target",
            "space",
            "rows",
            "positives",
            "AUC",
            "oracle AUC",
            "gap to oracle",
            "GAUC mean / imp. / pos.",
            "logloss",
            "NE",
            "pred/obs",
            "ECE",
        ],
        note=(
            "GAUC groups by " + str(report["data"]["group_key"]) + "; single-class groups are skipped."
            if report["data"].get("group_key")
            else "The feature spec names no group key: each row is its own group, so there is no GAUC "
            "and the bootstrap resamples rows."
        ),
    )
    for name, t in metrics.items():
        o = t["overall"]
        run = o["run"]
        summary.rows.append(
            [
                name,
                t["space"],
                f"{o['rows']:,}",
                f"{o['positives']:,}",
                fmt(run["auc"]),
                fmt(o["oracle_auc"]),
                fmt(run["oracle_gap"]),
                _gauc(run["gauc"]),
                fmt(run["logloss"]),
                fmt(run["ne"]),
                fmt(run["calibration"]["ratio"], 3),
                fmt(run["calibration"]["ece"]),
            ]
        )
    result = [summary]
    if has_base:
        compare = Table(
            "Against the baseline (run - baseline, same rows)",
            [
                "target",
                "rows",
                "AUC",
                "baseline AUC",
                "delta AUC",
                f"{report['settings']['confidence']:.0%} CI",
                "delta GAUC (mean)",
                "delta logloss",
                "delta NE",
                "delta ECE",
            ],
        )
        for name, t in metrics.items():
            o = t["overall"]
            if "baseline" not in o:
                compare.rows.append(
                    [name, f"{o['rows']:,}", fmt(o["run"]["auc"]), "n/a (not a baseline target)"] + [""] * 6
                )
                continue
            d = o["delta"]
            compare.rows.append(
                [
                    name,
                    f"{o['rows']:,}",
                    fmt(o["run"]["auc"]),
                    fmt(o["baseline"]["auc"]),
                    fmt(d["auc"], signed=True),
                    _ci(o.get("auc_delta_ci")),
                    fmt(d["gauc_mean"], signed=True),
                    fmt(d["logloss"], signed=True),
                    fmt(d["ne"], signed=True),
                    fmt(d["ece"], signed=True),
                ]
            )
        result.append(compare)
    by_day = Table(
        "Per day",
        [
            "target",
            "day",
            "rows",
            "positives",
            "AUC",
            *(["baseline AUC", "delta"] if has_base else []),
            "oracle AUC",
            "logloss",
            "pred/obs",
        ],
    )
    for name, t in metrics.items():
        for day, b in t["by_day"].items():
            base = (
                [fmt(b["baseline"]["auc"]), fmt(b["delta"]["auc"], signed=True)]
                if "baseline" in b
                else (["", ""] if has_base else [])
            )
            by_day.rows.append(
                [
                    name,
                    day,
                    f"{b['rows']:,}",
                    f"{b['positives']:,}",
                    fmt(b["run"]["auc"]),
                    *base,
                    fmt(b["oracle_auc"]),
                    fmt(b["run"]["logloss"]),
                    fmt(b["run"]["calibration"]["ratio"], 3),
                ]
            )
    result.append(by_day)
    slices = report["slices"]
    if slices["column"]:
        column = slices["column"]
        by_slice = Table(
            f"Per {column} (top {slices['top_k']} by volume)",
            [
                "target",
                column,
                "rows",
                "positives",
                "AUC",
                *(["delta AUC", f"{report['settings']['confidence']:.0%} CI"] if has_base else []),
                "GAUC mean",
                "logloss",
                "pred/obs",
            ],
            note=f"not sliced: {slices['other_rows']:,} rows in {slices.get('other_values', 0)} values",
        )
        for name, t in metrics.items():
            for value, b in t["by_slice"].items():
                delta = (
                    [fmt(b["delta"]["auc"], signed=True), _ci(b.get("auc_delta_ci"))]
                    if "delta" in b
                    else ["", ""]
                )
                delta = delta if has_base else []
                by_slice.rows.append(
                    [
                        name,
                        value,
                        f"{b['rows']:,}",
                        f"{b['positives']:,}",
                        fmt(b["run"]["auc"]),
                        *delta,
                        fmt(b["run"]["gauc"]["mean"]),
                        fmt(b["run"]["logloss"]),
                        fmt(b["run"]["calibration"]["ratio"], 3),
                    ]
                )
        result.append(by_slice)
    return result


def _heading(report: dict) -> list[str]:
    data = report["data"]
    lines = [
        f"run: {report['run']['dir']} ({report['run']['arch']}, {report['run']['world_size']} workers)",
        f"baseline: {report['baseline']['dir']}" if report["baseline"] else "baseline: none",
        f"days: {', '.join(data['days'])}; rows scored: {data['rows_scored']:,} of {data['rows_in_files']:,} "
        f"in the files ({data['rows_quarantined']:,} quarantined)",
    ]
    gate = report.get("gate")
    if gate:
        verdict = "PASSED" if gate["passed"] else "FAILED"
        lines.append(f"gate ({describe_gate(gate)}): {verdict}")
        lines += [f"  {describe_failure(f)}" for f in gate["failures"]]
    return lines


def render_markdown(report: dict, plot_paths: dict[str, str]) -> str:
    lines = ["# Offline evaluation report", "", *(f"- {line}" for line in _heading(report)), ""]
    for table in tables(report):
        lines += [
            f"## {table.title}",
            "",
            "| " + " | ".join(table.header) + " |",
            "|" + "---|" * len(table.header),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        lines += ["", table.note, ""] if table.note else [""]
    if plot_paths:
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in plot_paths.items()] + [""]
    return "\n".join(lines)


STYLE = """body{font-family:sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}
figure{display:inline-block;margin:6px}figcaption{font-size:12px;color:#555}"""


def render_html(report: dict, plots: dict[str, bytes]) -> str:
    """A self-contained page: inline CSS, images as data:image/png;base64 URIs, no script."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Offline evaluation report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Offline evaluation report</h1><ul>",
    ]
    for line in _heading(report):
        css = ' class="fail"' if "FAILED" in line else (' class="pass"' if "PASSED" in line else "")
        parts.append(f"<li{css}>{e(line)}</li>")
    parts.append("</ul>")
    for table in tables(report):
        parts.append(
            f"<h2>{e(table.title)}</h2><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in table.header)
            + "</tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows]
        parts.append("</table>" + (f"<p>{e(table.note)}</p>" if table.note else ""))
    if plots:
        parts.append("<h2>Plots</h2>")
        for name, png in plots.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img alt="{e(name)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(name)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)
