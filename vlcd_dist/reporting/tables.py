"""Tables built once and rendered to Markdown or HTML the same way."""

from __future__ import annotations

import html
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


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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

    def bold_best(self, columns: Sequence[int], values: list[list[float]]) -> None:
        """Bold the largest finite value of each column in ``columns`` (``values[r][c]``)."""
        for c in columns:
            # Compared as shown (3 decimals), so equal cells are bold together.
            col = [
                (round(values[r][c], 3), r) for r in range(len(self.rows)) if finite(values[r][c])
            ]
            if len(col) > 1:
                best = max(v for v, _ in col)
                self.bold |= {(r, c) for v, r in col if v == best}

    def markdown(self) -> str:
        def cell(r: int, c: int, text: str) -> str:
            text = text.replace("|", "\\|")
            if c in self.code and text != DASH:
                text = f"`{text}`"
            return f"**{text}**" if (r, c) in self.bold else text

        align = ["---:" if c in self.numeric else "---" for c in range(len(self.header))]
        lines = ["| " + " | ".join(h.replace("|", "\\|") for h in self.header) + " |"]
        lines.append("|" + "|".join(align) + "|")
        for r, row in enumerate(self.rows):
            lines.append("| " + " | ".join(cell(r, c, t) for c, t in enumerate(row)) + " |")
        return "\n".join(lines) + "\n"

    def html(self, caption: str | None = None) -> str:
        def td(r: int, c: int, text: str) -> str:
            body = html.escape(text)
            if c in self.code and text != DASH:
                body = f"<code>{body}</code>"
            if (r, c) in self.bold:
                body = f"<strong>{body}</strong>"
            return f'<td class="num">{body}</td>' if c in self.numeric else f"<td>{body}</td>"

        head = "".join(
            f'<th class="num">{html.escape(h)}</th>'
            if c in self.numeric
            else f"<th>{html.escape(h)}</th>"
            for c, h in enumerate(self.short_header or self.header)
        )
        if self.groups:
            top = "".join(
                f'<th colspan="{span}" class="group">{html.escape(label)}</th>'
                for label, span in self.groups
            )
            head = f"{top}</tr><tr>{head}"
        body = "\n".join(
            "<tr>" + "".join(td(r, c, t) for c, t in enumerate(row)) + "</tr>"
            for r, row in enumerate(self.rows)
        )
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        return (
            f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table></div>"
        )
