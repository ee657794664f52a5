"""A report as a list of blocks, rendered to Markdown here and to HTML by the Jinja2 templates in
``templates/`` (autoescaped: every text from a run is data, never markup).

Both renderings walk the same blocks, so a table, note or figure is built once and appears in
report.md and report.html alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, ClassVar

from vlcd_dist.reporting.tables import Table

if TYPE_CHECKING:
    import jinja2


@dataclass
class Note:
    """A paragraph of explanation."""

    kind: ClassVar[str] = "note"
    text: str


@dataclass
class Heading:
    """A sub-heading inside a section (level 3)."""

    kind: ClassVar[str] = "heading"
    text: str


@dataclass
class TableBlock:
    kind: ClassVar[str] = "table"
    table: Table


@dataclass
class FigureBlock:
    """An image beside the page (``src`` is its file name) with its caption."""

    kind: ClassVar[str] = "figure"
    src: str
    caption: str


@dataclass
class Card:
    """One model's headline: its name, its mean AUC and short facts (text, CSS class)."""

    name: str
    value: str
    facts: list[tuple[str, str]]


@dataclass
class Cards:
    """HTML only: the headline numbers as cards (the table below holds them for Markdown)."""

    kind: ClassVar[str] = "cards"
    cards: list[Card]


@dataclass
class Details:
    """A long text, folded in HTML; Markdown names its file only."""

    kind: ClassVar[str] = "details"
    summary: str
    path: str
    text: str


Block = Note | Heading | TableBlock | FigureBlock | Cards | Details


@dataclass
class Section:
    anchor: str
    heading: str
    blocks: list[Block] = field(default_factory=list)


def markdown_blocks(blocks: list[Block]) -> str:
    """The blocks as Markdown, a blank line between two."""
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, Note):
            parts.append(b.text)
        elif isinstance(b, Heading):
            parts.append(f"### {b.text}")
        elif isinstance(b, TableBlock):
            parts.append(b.table.markdown())
        elif isinstance(b, FigureBlock):
            parts.append(f"![{b.caption}]({b.src})\n\n{b.caption}")
        elif isinstance(b, Details):
            parts.append(f"{b.summary}: `{b.path}`")
    return "\n".join(p.rstrip("\n") + "\n" for p in parts)


def markdown_page(title: str, run: str, sections: list[Section]) -> str:
    lines = [f"# {title}\n", f"Run folder: `{run}`\n"]
    for s in sections:
        lines += [f"\n## {s.heading}\n", markdown_blocks(s.blocks)]
    return "\n".join(lines)


@cache
def _environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("vlcd_dist.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def html_page(title: str, run: str, sections: list[Section], markdown_file: str | None) -> str:
    """The page: ``templates/page.html.j2`` with the stylesheet inlined."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        _environment()
        .get_template("page.html.j2")
        .render(title=title, run=run, sections=sections, written=now, markdown_file=markdown_file)
    )
