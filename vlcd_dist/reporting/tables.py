"""Tables built once and rendered to Markdown (here) or HTML (the page template, from the same
:meth:`Table.cells`), so both show the same cell texts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

DASH = "–"


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; None and NaN become a dash."""
    if value is None:
        return DASH
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return DASH if not math.isfinite(number) else f"{number:.{digits}f}"


def change(value: Any, digits: int = 3) -> str:
    """A difference with its sign, rounded to ``digits`` decimals: "+0.012", "−0.030" (a minus
    sign), "±0.000"; None and NaN become a dash."""
    if not finite(value):
        return DASH
    rounded = round(value, digits)
    sign = "+" if rounded > 0 else "−" if rounded < 0 else "±"
    return f"{sign}{abs(rounded):.{digits}f}"


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def best_rows(values: Sequence[Any]) -> set[int]:
    """The rows holding the largest finite value, compared as shown (3 decimals, so equal cells
    win together); none among fewer than two finite values."""
    col = [(round(v, 3), r) for r, v in enumerate(values) if finite(v)]
    if len(col) < 2:
        return set()
    best = max(v for v, _ in col)
    return {r for v, r in col if v == best}


@dataclass
class Table:
    """A table rendered to Markdown or HTML the same way: a header, rows of cell texts, which
    columns are numbers (right-aligned), which cells are bold (row, column)."""

    header: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)
    bold: set[tuple[int, int]] = field(default_factory=set)
    code: set[int] = field(default_factory=set)
    """Columns shown as code (model and folder names)."""
    groups: list[tuple[str, int]] | None = None
    """HTML only: a header row above the column names, (label, columns spanned) left to right."""
    short_header: list[str] | None = None
    """HTML only: the column names under ``groups`` (default: ``header``)."""
    breaks: set[int] = field(default_factory=set)
    """HTML only: the rows that start a group of rows (a rule is drawn above each)."""

    def bold_best(self, columns: Sequence[int], values: list[list[float]]) -> None:
        """Bold the largest finite value of each column in ``columns`` (``values[r][c]``)."""
        for c in columns:
            self.bold |= {(r, c) for r in best_rows([row[c] for row in values])}

    def cells(self) -> list[list[Cell]]:
        """The body as cells: what either rendering shows, and how."""
        return [
            [
                Cell(
                    text,
                    numeric=c in self.numeric,
                    bold=(r, c) in self.bold,
                    code=c in self.code and text not in (DASH, ""),
                )
                for c, text in enumerate(row)
            ]
            for r, row in enumerate(self.rows)
        ]

    def head(self) -> list[Cell]:
        """The column names shown in HTML (``short_header`` under ``groups``, else ``header``)."""
        names = self.short_header or self.header
        return [Cell(h, numeric=c in self.numeric) for c, h in enumerate(names)]

    def markdown(self) -> str:
        def cell(c: Cell) -> str:
            text = c.text.replace("|", "\\|")
            if c.code:
                text = f"`{text}`"
            return f"**{text}**" if c.bold else text

        align = ["---:" if c in self.numeric else "---" for c in range(len(self.header))]
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in self.header) + " |"]
        lines.append("|" + "|".join(align) + "|")
        lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in self.cells()]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Cell:
    """One cell as both renderings show it."""

    text: str
    numeric: bool = False
    """Right-aligned."""
    bold: bool = False
    code: bool = False
    """Shown as code (model and folder names)."""
