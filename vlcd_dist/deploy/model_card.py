"""The model card (``README.md``) of a packaged model, rendered with Jinja2 from the figures
:mod:`.package` wrote into package.json and the eval's heads.json: nothing in it is typed by
hand."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2

from vlcd_dist.io import write_text

TEMPLATE = "model_card.md.j2"


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _interval(value: Any) -> str:
    if not value or not all(isinstance(v, float) and math.isfinite(v) for v in value):
        return ""
    lo, hi = value
    return f" [{_num(lo)}, {_num(hi)}]"


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def render_model_card(package: dict[str, Any], heads: dict[str, Any]) -> str:
    """The card's Markdown from a package.json's content and the heads.json beside it."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("vlcd_dist.deploy", "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters.update(num=_num, interval=_interval, mb=_megabytes)
    points = [heads["operating_points"][t] for t in package["tasks"]]
    return env.get_template(TEMPLATE).render(p=package, heads=heads, points=points)


def write_model_card(path: Path, package: dict[str, Any], heads: dict[str, Any]) -> None:
    write_text(path, render_model_card(package, heads))
