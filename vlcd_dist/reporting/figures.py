"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Every figure is drawn from an :class:`~vlcd_dist.evaluation.results.EvalReport` (or a sweep
summary) alone and saved by :func:`save_figure` as a PNG, for the HTML page and TensorBoard, and
an SVG beside it (text kept as text) for papers. Layout is matplotlib's constrained layout with
legends outside the axes, so long model names (``mobilenetv3_large_100``) are shown whole; the
Pareto plot's point labels are placed by :func:`_place_labels` where they overlap nothing.

A model has the same colour in every figure: its position in the report's model order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from vlcd_dist.evaluation.results import EvalReport
from vlcd_dist.reporting.tables import finite

DPI = 100
"""Pixels per inch of the PNG files: a figure of w x h inches is a (100 w) x (100 h) image."""
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
GREY = "#6e6e6e"
# Line styles and markers of the second dimension of a line chart (corruption, sweep setting).
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D")


def colour(index: int | None) -> str:
    return GREY if index is None else PALETTE[index % len(PALETTE)]


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches under constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself: labels are measured with Agg's renderer
    fig.get_layout_engine().set(w_pad=0.06, h_pad=0.06)  # type: ignore[call-arg]
    return fig


def save_figure(fig: Figure, folder: str | Path, stem: str) -> np.ndarray:
    """Write ``folder/stem.png`` and ``folder/stem.svg``; returns the PNG's pixels, uint8
    [H, W, 3], for TensorBoard."""
    from matplotlib import rc_context
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{stem}.png"
    # No timestamps in the files, so an unchanged report gives unchanged figures.
    fig.savefig(png, dpi=DPI, metadata={"Software": None})
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": stem}):
        fig.savefig(folder / f"{stem}.svg", metadata={"Date": None})
    with Image.open(png) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Figures of one eval report


def auc_bars(report: EvalReport) -> Figure:
    """Grouped bars: a group per task and one for the mean, a bar per model; y from 0.5 (chance)
    or lower when an AUC is below it."""
    names = list(report.models)
    values_all = [v for r in report.models.values() for v in r.auc.values() if finite(v)]
    lo = min([0.5, *(math.floor(v * 10) / 10 for v in values_all)])
    groups = [*report.tasks, "mean"]
    fig = new_figure(max(7.5, 1.1 * len(groups) + 3.5), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        r = report.models[name]
        values = [r.auc[t] for t in report.tasks] + [r.auc_mean]
        # An undefined AUC is drawn as no bar (height 0 above lo), not as a 0.5 one.
        heights = [max(0.0, v - lo) if finite(v) else 0.0 for v in values]
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            heights,
            width * 0.92,
            bottom=lo,
            color=colour(i),
            label=name,
        )
    ax.set_xticks(x, groups)
    ax.set_ylim(lo, 1.0)
    ax.set_ylabel("test AUC-ROC")
    ax.set_title("test AUC-ROC per task (linear probe)", loc="left")
    ax.grid(axis="y", color="#e4e4e4")
    ax.set_axisbelow(True)
    fig.legend(loc="outside right upper", frameon=False)
    return fig


def roc_grid(report: EvalReport) -> Figure:
    """One ROC panel per task, a curve per model; each panel lists its models' AUCs, and one
    legend below the panels names the models."""
    names = list(report.models)
    cols = min(3, max(1, len(report.tasks)))
    rows = math.ceil(len(report.tasks) / cols)
    fig = new_figure(3.2 * cols + 0.4, 3.2 * rows + 0.3 + 0.25 * math.ceil(len(names) / 3))
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for t, task in enumerate(report.tasks):
        ax = axes[t // cols][t % cols]
        ax.plot([0, 1], [0, 1], color="#c8c8c8", lw=1, zorder=1)
        handles = []
        for i, name in enumerate(names):
            r = report.models[name]
            curve = r.roc.get(task)
            auc = r.auc.get(task, float("nan"))
            if curve is None or len(curve.fpr) < 2:
                continue
            (line,) = ax.plot(curve.fpr, curve.tpr, color=colour(i), lw=1.6, label=name)
            handles.append((line, "–" if not finite(auc) else f"{auc:.3f}"))
        ax.set_title(task, loc="left")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        if handles:
            # AUCs only in the panel (short, lower right, where ROC curves rarely go); the
            # names are in the figure legend, whole.
            ax.legend(
                [h for h, _ in handles],
                [a for _, a in handles],
                title="AUC",
                loc="lower right",
                fontsize=8,
                title_fontsize=8,
                handlelength=1.2,
                framealpha=0.9,
            )
        if t // cols == rows - 1:
            ax.set_xlabel("false positive rate")
        if t % cols == 0:
            ax.set_ylabel("true positive rate")
    for k in range(len(report.tasks), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    proxies = [Line2D([], [], color=colour(i), lw=2) for i in range(len(names))]
    fig.legend(proxies, names, loc="outside lower center", ncols=min(len(names), 3), frameon=False)
    return fig


def robustness_chart(report: EvalReport) -> Figure:
    """Mean AUC against severity (0: clean), a colour per model, a line style per corruption."""
    names = list(report.models)
    series = []
    curves = report.robustness_curves()
    for k, (corruption, per_model) in enumerate(curves.items()):
        for i, name in enumerate(names):
            points = per_model.get(name, [])
            series.append(
                Series(f"{name} {corruption}", [s for s, _ in points], [v for _, v in points], i, k)
            )
    legend: list[tuple[str, int | None, int | None]] = [(n, i, None) for i, n in enumerate(names)]
    if len(curves) > 1:
        legend += [(c, None, k) for k, c in enumerate(curves)]
    fig = new_figure(8.5, 4.4)
    line_panel(
        fig.add_subplot(),
        series,
        title=f"mean test AUC under {', '.join(curves)} (probes fitted on clean images)",
        x_label="severity (0: clean test images)",
        tick_labels={0.0: "clean"},
    )
    line_legend(fig, legend)
    return fig


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> list[bool]:
    """For each point, whether no other point is at least as cheap and as good, and strictly
    better in one of the two (lower cost, higher value). Non-finite points are never on it."""
    pts = [(float(c), float(v)) for c, v in zip(cost, value, strict=True)]
    out = []
    for i, (c, v) in enumerate(pts):
        if not (math.isfinite(c) and math.isfinite(v)):
            out.append(False)
            continue
        dominated = any(
            j != i
            and math.isfinite(c2)
            and math.isfinite(v2)
            and c2 <= c
            and v2 >= v
            and (c2 < c or v2 > v)
            for j, (c2, v2) in enumerate(pts)
        )
        out.append(not dominated)
    return out


def pareto_chart(report: EvalReport) -> Figure:
    """Mean AUC against latency, a point per model with its bootstrap interval; the Pareto front
    as a dashed staircase, its models filled, dominated ones hollow; each point labelled."""
    names = list(report.models)
    precision = report.latency.precisions[0]
    lat = [report.models[n].latency_ms.get(precision, math.nan) for n in names]
    auc = [report.models[n].auc_mean for n in names]
    front = pareto_front(lat, auc)
    fig = new_figure(8.5, 4.8)
    ax = fig.add_subplot()
    on = sorted((lat[i], auc[i]) for i in range(len(names)) if front[i])
    if on:
        xs, ys = [on[0][0]], [on[0][1]]
        for (_, y0), (x1, y1) in zip(on, on[1:], strict=False):
            xs += [x1, x1]
            ys += [y0, y1]
        # The staircase runs on to the right edge: anything slower and less accurate is behind.
        xs.append(max(lat_ for lat_ in lat if finite(lat_)) * 1.25)
        ys.append(on[-1][1])
        ax.plot(xs, ys, ls="--", color=GREY, lw=1.2, zorder=1, label="Pareto front")
    shown = [i for i in range(len(names)) if finite(lat[i]) and finite(auc[i])]
    for i in shown:
        ci = report.models[names[i]].ci.get("mean")
        if ci is not None and finite(ci[0]) and finite(ci[1]):
            ax.errorbar(
                lat[i],
                auc[i],
                yerr=[[auc[i] - ci[0]], [ci[1] - auc[i]]],
                color=colour(i),
                lw=1,
                capsize=3,
                zorder=2,
            )
        ax.plot(
            lat[i],
            auc[i],
            "o",
            ms=8,
            mec=colour(i),
            mew=2,
            zorder=3,
            mfc=colour(i) if front[i] else "white",
        )
    if shown:
        x_hi = max(lat[i] for i in shown) * 1.25
        ax.set_xlim(0, x_hi)
        lows = [auc[i] for i in shown] + [
            c[0] for n in names if (c := report.models[n].ci.get("mean")) and finite(c[0])
        ]
        highs = [auc[i] for i in shown] + [
            c[1] for n in names if (c := report.models[n].ci.get("mean")) and finite(c[1])
        ]
        span = max(0.02, max(highs) - min(lows))
        ax.set_ylim(max(0.0, min(lows) - 0.25 * span), min(1.0, max(highs) + 0.25 * span))
    ax.set_xlabel(
        f"median {report.latency.device.upper()} {precision} latency per forward of "
        f"{report.latency.batch} image(s) (ms)"
    )
    ax.set_ylabel("mean test AUC")
    ax.set_title("mean test AUC vs latency (up and left is better)", loc="left")
    ax.grid(color="#ececec")
    ax.set_axisbelow(True)
    handles = [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            ms=7,
            mec=colour(i),
            mew=2,
            mfc=colour(i) if front[i] else "white",
        )
        for i in range(len(names))
    ]
    labels = list(names)
    if on:
        handles.append(Line2D([], [], ls="--", color=GREY))
        labels.append("Pareto front (filled: on it)")
    fig.legend(handles, labels, loc="outside right upper", frameon=False)
    _place_labels(fig, ax, [(lat[i], auc[i], f"{names[i]} {auc[i]:.3f}", colour(i)) for i in shown])
    return fig


# Label positions tried around a point, nearest first: (dx, dy) in points and the alignment.
_OFFSETS = [
    (dx * r, dy * r, "left" if dx > 0 else "right", "bottom" if dy > 0 else "top")
    for r in (1, 2, 3.5, 5, 7, 9)
    for dx, dy in (
        (7, 5), (7, -5), (-7, 5), (-7, -5), (0.5, 11), (0.5, -11), (-0.5, 11), (-0.5, -11)
    )
]  # fmt: skip


def _place_labels(fig: Figure, ax: Axes, points: Sequence[tuple[float, float, str, str]]) -> None:
    """Annotate each (x, y, text, colour) at the first offset of :data:`_OFFSETS` where its
    text box stays inside the axes and overlaps no marker, error bar, line or earlier label (or,
    where no offset is free, the one whose box is least covered); labels moved off their point
    get a thin leader line. The layout is frozen first, so the
    boxes measured here are the ones saved."""
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    frame = ax.get_window_extent(renderer)
    taken: list[Bbox] = []

    def segments(xy: np.ndarray) -> None:
        # A long line's box covers the whole plot: keep its segments' boxes instead.
        px = ax.transData.transform(xy)
        taken.extend(
            Bbox([np.minimum(a, b) - 2, np.maximum(a, b) + 2])
            for a, b in zip(px, px[1:], strict=False)
        )

    for line in ax.lines:
        if len(line.get_xdata()) > 1:
            segments(np.column_stack(line.get_data()))
        else:
            taken.append(line.get_window_extent(renderer).padded(2))
    for collection in ax.collections:  # the error bars (a collection has no extent of its own)
        for segment in getattr(collection, "get_segments", list)():
            segments(np.asarray(segment))

    def annotate(x: float, y: float, text: str, c: str, dx: float, dy: float, ha: str, va: str):
        far = abs(dx) > 8 or abs(dy) > 12
        return ax.annotate(
            text,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=9,
            color="#202020",
            # The leader runs to the text's corner nearest the point.
            arrowprops={
                "arrowstyle": "-",
                "color": c,
                "lw": 0.8,
                "shrinkA": 0,
                "shrinkB": 5,
                "relpos": (0.0 if ha == "left" else 1.0, 0.0 if va == "bottom" else 1.0),
            }
            if far
            else None,
        )

    def overlap(box: Bbox) -> float:
        """Pixels of ``box`` covered by what is drawn already; inf when it leaves the axes."""
        if not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)):
            return float("inf")
        covered = 0.0
        for t in taken:
            both = Bbox.intersection(box, t)
            if both is not None:
                covered += both.width * both.height
        return covered

    def text_box(ann: Annotation) -> Bbox:
        # The text alone: an annotation's own extent also spans its leader line, which would
        # make every far spot look as crowded as the path to it.
        ann.update_positions(renderer)  # puts the text at its offset
        return Text.get_window_extent(ann, renderer).padded(1.5)

    for x, y, text, c in points:
        # The first free spot, nearest first; when none is free, the least covered one (a
        # crowded plot then still shows every label where it hides the least).
        best: tuple[float, tuple[float, float, str, str]] | None = None
        for offset in _OFFSETS:
            ann = annotate(x, y, text, c, *offset)
            cost = overlap(text_box(ann))
            ann.remove()
            if best is None or cost < best[0]:
                best = (cost, offset)
            if cost == 0:
                break
        assert best is not None
        ann = annotate(x, y, text, c, *best[1])
        taken.append(text_box(ann))


# ---------------------------------------------------------------------------------------------
# Line charts (robustness, sweeps)


@dataclass
class Series:
    """One line of :func:`line_panel`: points (x, y), a colour index (None: grey) and a style
    index into STYLES / MARKERS. Non-finite y values break the line."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    colour: int | None = 0
    style: int = 0


def x_scale(values: Sequence[float]) -> str:
    """How :func:`line_panel` spaces x: "linear"; "log" when the positive values span at least a
    decade; "log0" likewise with a 0 among them, drawn one decade left of the smallest positive
    value behind an axis break (the natural axis of a weight swept over 0, 0.01, ..., 10)."""
    vals = [float(v) for v in values if math.isfinite(v)]
    pos = [v for v in vals if v > 0]
    if not pos or any(v < 0 for v in vals) or max(pos) / min(pos) < 10:
        return "linear"
    return "log0" if any(v == 0 for v in vals) else "log"


def line_panel(
    ax: Axes,
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str = "mean test AUC",
    tick_labels: dict[float, str] | None = None,
) -> None:
    """Lines with markers on ``ax``, x spaced by :func:`x_scale`, a tick at every x of the data
    (``tick_labels`` renames some, e.g. 0 -> "clean")."""
    xs = sorted({float(x) for s in series for x in s.x if math.isfinite(x)})
    scale = x_scale(xs)
    positive = [v for v in xs if v > 0]
    zero_at = math.log10(min(positive)) - 1 if positive else 0.0

    def fx(v: float) -> float:
        # log0 puts 0 one decade left of the smallest positive value; the axis break below
        # says that gap is not to scale.
        if scale == "linear":
            return v
        return math.log10(v) if v > 0 else zero_at

    for s in series:
        pts = sorted(
            (fx(float(x)), float(y)) for x, y in zip(s.x, s.y, strict=True) if math.isfinite(x)
        )
        if not pts:
            continue
        ax.plot(
            [p for p, _ in pts],
            [v for _, v in pts],
            color=colour(s.colour),
            ls=STYLES[s.style % len(STYLES)],
            marker=MARKERS[s.style % len(MARKERS)],
            ms=5,
            lw=1.8,
        )
    shown = xs if len(xs) <= 12 else xs[:: math.ceil(len(xs) / 12)]
    ax.set_xticks([fx(v) for v in shown], [(tick_labels or {}).get(v, f"{v:g}") for v in shown])
    if scale == "log0" and len(xs) > 1:
        middle = (fx(xs[0]) + fx(xs[1])) / 2
        ax.plot(
            [middle],
            [0],
            transform=ax.get_xaxis_transform(),
            marker=r"$//$",
            ms=10,
            color="#505050",
            clip_on=False,
            zorder=5,
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, loc="left", fontsize=10)
    ax.grid(color="#e8e8e8")
    ax.set_axisbelow(True)


def line_legend(fig: Figure, entries: Sequence[tuple[str, int | None, int | None]]) -> None:
    """A legend outside the axes: (label, colour index or None for grey, style index or None
    for a plain colour line)."""
    handles = [
        Line2D(
            [],
            [],
            color=colour(c),
            lw=2 if style is None else 1.5,
            ls="-" if style is None else STYLES[style % len(STYLES)],
            marker=None if style is None else MARKERS[style % len(MARKERS)],
            ms=5,
        )
        for _, c, style in entries
    ]
    fig.legend(
        handles, [label for label, _, _ in entries], loc="outside right upper", frameon=False
    )
