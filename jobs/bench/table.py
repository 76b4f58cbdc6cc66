"""The summary table's row and its Markdown form, shared by every benchmark section's report.

Example::

    >>> print(format_table([Row("train", "end to end", "24,850 samples/s", goal=">= 25,000", met=False)]))
    | section | measure | value | compared with | goal | met |
    | ------- | ---------- | ---------------: | ------------- | --------- | --- |
    | train   | end to end | 24,850 samples/s |               | >= 25,000 | no  |
"""

from __future__ import annotations

from dataclasses import dataclass

COLUMNS = ("section", "measure", "value", "compared with", "goal", "met")


@dataclass(frozen=True)
class Row:
    section: str
    measure: str
    value: str
    compared_with: str = ""
    goal: str = ""
    met: bool | None = None  # None: no goal

    def cells(self) -> tuple[str, ...]:
        met = "" if self.met is None else ("yes" if self.met else "no")
        return (self.section, self.measure, self.value, self.compared_with, self.goal, met)


def format_table(rows: list[Row]) -> str:
    """Rows -> a Markdown table, columns padded so it also reads as plain text."""
    cells = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    right = {2}  # values align right
    line = lambda values: (
        "| "
        + " | ".join(  # noqa: E731
            v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))
        )
        + " |"
    )
    rule = (
        "| "
        + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w for i, w in enumerate(widths))
        + " |"
    )
    return "\n".join([line(COLUMNS), rule, *(line(row) for row in cells[1:])])
