"""Small charts drawn with PIL (no plotting dependency): AUC bars and ROC curves.

Both return uint8 RGB arrays [H, W, 3], ready for PNG files and TensorBoard images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    size: int = 12,
    anchor: str = "la",
) -> None:
    draw.text(xy, text, fill=(20, 20, 20), font=_font(size), anchor=anchor)


def _legend(draw: ImageDraw.ImageDraw, names: Sequence[str], x: int, y: int) -> None:
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle([x, y + 18 * i + 3, x + 12, y + 18 * i + 15], fill=colour)
        _text(draw, (x + 18, y + 18 * i + 2), name)


def auc_bars(
    groups: Sequence[str], values: dict[str, Sequence[float]], lo: float = 0.5
) -> np.ndarray:
    """Grouped bars: one group per task (and "mean"), one bar per model; y from ``lo`` to 1."""
    names = list(values)
    width, height = max(640, 120 * len(groups) + 220), 400
    left, right, top, bottom = 60, 200, 30, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    plot_w, plot_h = width - left - right, height - top - bottom

    def y_of(v: float) -> float:
        v = min(1.0, max(lo, v if np.isfinite(v) else lo))
        return top + plot_h * (1 - (v - lo) / (1 - lo))

    for k in range(6):
        v = lo + (1 - lo) * k / 5
        y = y_of(v)
        draw.line([left, y, left + plot_w, y], fill=(225, 225, 225))
        _text(draw, (left - 6, y), f"{v:.2f}", anchor="rm")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(80, 80, 80))
    group_w = plot_w / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, len(names))
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for i, name in enumerate(names):
            v = values[name][g]
            x = x0 + i * bar_w
            draw.rectangle(
                [x, y_of(v), x + bar_w - 2, top + plot_h], fill=PALETTE[i % len(PALETTE)]
            )
        _text(draw, (left + (g + 0.5) * group_w, top + plot_h + 8), group, anchor="ma")
    _text(draw, (left, 8), "test AUC-ROC per task (linear probe)", size=14)
    _legend(draw, names, left + plot_w + 16, top)
    return np.asarray(img)


def roc_grid(
    tasks: Sequence[str],
    curves: dict[str, Sequence[tuple[np.ndarray, np.ndarray]]],
    aucs: dict[str, dict[str, float]],
    panel: int = 260,
) -> np.ndarray:
    """One ROC panel per task, a curve per model (AUC in the legend of each panel)."""
    names = list(curves)
    cols = min(3, max(1, len(tasks)))
    rows = (len(tasks) + cols - 1) // cols
    pad, title = 40, 22
    width, height = cols * (panel + pad) + pad, rows * (panel + pad + title) + pad
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for t, task in enumerate(tasks):
        r, c = divmod(t, cols)
        x0 = pad + c * (panel + pad)
        y0 = pad + r * (panel + pad + title) + title
        draw.rectangle([x0, y0, x0 + panel, y0 + panel], outline=(80, 80, 80))
        draw.line([x0, y0 + panel, x0 + panel, y0], fill=(200, 200, 200))
        _text(draw, (x0, y0 - title + 2), task, size=14)
        for i, name in enumerate(names):
            fpr, tpr = curves[name][t]
            pts = [
                (x0 + float(f) * panel, y0 + panel - float(p) * panel)
                for f, p in zip(fpr, tpr, strict=True)
            ]
            if len(pts) > 1:
                draw.line(pts, fill=PALETTE[i % len(PALETTE)], width=2)
            label = f"{name[:18]} {aucs[name][task]:.3f}"
            draw.rectangle(
                [
                    x0 + panel - 150,
                    y0 + panel - 16 * (len(names) - i) - 4,
                    x0 + panel - 142,
                    y0 + panel - 16 * (len(names) - i) + 4,
                ],
                fill=PALETTE[i % len(PALETTE)],
            )
            _text(
                draw,
                (x0 + panel - 138, y0 + panel - 16 * (len(names) - i)),
                label,
                size=11,
                anchor="lm",
            )
        _text(draw, (x0 + panel / 2, y0 + panel + 4), "false positive rate", size=11, anchor="ma")
    return np.asarray(img)


# --- line charts and the accuracy-latency plot (sweeps, robustness, the HTML report) ----------

# On/off pixel runs of the line styles: solid, dashed, dotted, dash-dot.
DASHES: tuple[tuple[int, ...], ...] = ((), (9, 5), (2, 4), (10, 4, 2, 4))


class Series:
    """One line of :func:`line_chart`: points (x, y), a PALETTE colour index and a style index
    (0 solid with circles, 1 dashed with squares, 2 dotted with triangles, 3 dash-dot with
    diamonds). Non-finite y values break the line."""

    def __init__(
        self, label: str, x: Sequence[float], y: Sequence[float], colour: int = 0, style: int = 0
    ) -> None:
        self.label, self.x, self.y = label, [float(v) for v in x], [float(v) for v in y]
        self.colour, self.style = colour, style


def _colour(index: int | None) -> tuple[int, int, int]:
    return (110, 110, 110) if index is None else PALETTE[index % len(PALETTE)]


def _text_width(draw: ImageDraw.ImageDraw, text: str, size: int = 12) -> float:
    return draw.textlength(text, font=_font(size))


def _marker(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    style: int,
    colour: tuple[int, int, int],
    r: float = 4.5,
    filled: bool = True,
) -> None:
    x, y = xy
    fill = colour if filled else (255, 255, 255)
    kind = style % 4
    if kind == 0:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=colour, width=2)
    elif kind == 1:
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill, outline=colour, width=2)
    elif kind == 2:
        draw.polygon(
            [(x, y - r - 1), (x + r + 1, y + r), (x - r - 1, y + r)], fill=fill, outline=colour
        )
    else:
        s = r + 1.5
        draw.polygon([(x, y - s), (x + s, y), (x, y + s), (x - s, y)], fill=fill, outline=colour)


def _polyline(
    draw: ImageDraw.ImageDraw,
    pts: Sequence[tuple[float, float]],
    colour: tuple[int, int, int],
    style: int = 0,
    width: int = 3,
) -> None:
    """A polyline in one of DASHES; the dash phase carries over the vertices. (PIL draws a
    sloped line of width w about w - 1 pixels thick, hence 3 for a 2-pixel line.)"""
    dash = DASHES[style % len(DASHES)]
    if len(pts) < 2:
        return
    if not dash:
        draw.line(list(pts), fill=colour, width=width, joint="curve")
        return
    idx, left = 0, float(dash[0])
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        seg = float(np.hypot(x1 - x0, y1 - y0))
        pos = 0.0
        while seg > 0 and pos < seg:
            step = min(left, seg - pos)
            if idx % 2 == 0:
                a, b = pos / seg, (pos + step) / seg
                draw.line(
                    [
                        (x0 + (x1 - x0) * a, y0 + (y1 - y0) * a),
                        (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b),
                    ],
                    fill=colour,
                    width=width,
                )
            pos += step
            left -= step
            if left <= 1e-9:
                idx = (idx + 1) % len(dash)
                left = float(dash[idx])


def nice_range(lo: float, hi: float, max_ticks: int = 7) -> tuple[float, float, float]:
    """(lo, hi, step) widened to multiples of a 1-2-5 step giving at most ``max_ticks`` gaps."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return 0.0, 1.0, 0.2
    if hi - lo < 1e-12:
        lo, hi = lo - 0.05 * (abs(lo) or 1), hi + 0.05 * (abs(hi) or 1)
    raw = (hi - lo) / max_ticks
    base = 10 ** np.floor(np.log10(raw))
    step = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    return (
        float(np.floor(lo / step + 1e-9) * step),
        float(np.ceil(hi / step - 1e-9) * step),
        float(step),
    )


def x_scale(values: Sequence[float]) -> str:
    """How :func:`line_chart` spaces x: "linear"; "log" when the positive values span at least a
    decade; "log0" likewise with a 0 among them, drawn one decade left of the smallest positive
    value behind an axis break (the natural axis of a weight swept over 0, 0.01, ..., 10)."""
    vals = [float(v) for v in values if np.isfinite(v)]
    pos = [v for v in vals if v > 0]
    if not pos or any(v < 0 for v in vals) or max(pos) / min(pos) < 10:
        return "linear"
    return "log0" if any(v == 0 for v in vals) else "log"


def _x_transform(values: Sequence[float], scale: str) -> tuple[float, float, object]:
    pos = [v for v in values if v > 0]
    zero_at = float(np.log10(min(pos))) - 1 if pos else 0.0

    def f(v: float) -> float:
        if scale == "linear":
            return v
        return float(np.log10(v)) if v > 0 else zero_at

    t = [f(v) for v in values]
    return min(t), max(t), f


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str = "mean test AUC",
    legend: Sequence[tuple[str, int | None, int | None]] | None = None,
    y_bounds: tuple[float, float] = (0.0, 1.0),
    plot_size: tuple[int, int] = (520, 320),
    x_tick_labels: dict[float, str] | None = None,
) -> np.ndarray:
    """Lines with markers; x spaced by :func:`x_scale`, a tick at every x of the data.

    ``legend``: entries (label, colour index or None for grey, style index or None for a plain
    colour swatch); default: one entry per series. ``x_tick_labels`` renames ticks (e.g. 0 ->
    "clean"). Returns a uint8 RGB array [H, W, 3]."""
    xs = sorted({x for s in series for x in s.x if np.isfinite(x)})
    scale = x_scale(xs)
    tlo, thi, fx = _x_transform(xs or [0.0, 1.0], scale)
    if thi - tlo < 1e-12:
        tlo, thi = tlo - 1, thi + 1
    pad_x = 0.06 * (thi - tlo)
    tlo, thi = tlo - pad_x, thi + pad_x
    ys = [y for s in series for y in s.y if np.isfinite(y)]
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.5, 1.0)
    margin = max(0.01, 0.08 * (y_hi - y_lo))
    y_lo, y_hi, y_step = nice_range(
        max(y_bounds[0], y_lo - margin), min(y_bounds[1], y_hi + margin)
    )
    entries = list(legend) if legend is not None else [(s.label, s.colour, s.style) for s in series]

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_w = max([_text_width(probe, e[0]) for e in entries] + [0]) + 70
    left, top, bottom = 64, 52, 62
    plot_w, plot_h = plot_size
    width = int(left + plot_w + 24 + legend_w)
    height = int(top + plot_h + bottom)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    def px(x: float) -> float:
        return left + plot_w * (fx(x) - tlo) / (thi - tlo)  # type: ignore[operator]

    def py(y: float) -> float:
        return top + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    n_ticks = int(round((y_hi - y_lo) / y_step))
    for k in range(n_ticks + 1):
        v = y_lo + k * y_step
        draw.line([left, py(v), left + plot_w, py(v)], fill=(228, 228, 228))
        _text(
            draw,
            (left - 6, py(v)),
            f"{v:.{max(0, -int(np.floor(np.log10(y_step))))}f}",
            anchor="rm",
        )
    shown = xs if len(xs) <= 12 else xs[:: int(np.ceil(len(xs) / 12))]
    for v in shown:
        draw.line([px(v), top + plot_h, px(v), top + plot_h + 4], fill=(80, 80, 80))
        label = (x_tick_labels or {}).get(v, f"{v:g}")
        _text(draw, (px(v), top + plot_h + 7), label, anchor="ma")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(80, 80, 80))
    if scale == "log0" and len(xs) > 1:
        # An axis break between 0 and the smallest positive value: the gap is not to scale.
        xb = (px(xs[0]) + px(xs[1])) / 2
        yb = top + plot_h
        draw.rectangle([xb - 5, yb - 3, xb + 5, yb + 3], fill="white")
        for dx in (-4, 2):
            draw.line([xb + dx, yb + 5, xb + dx + 3, yb - 5], fill=(80, 80, 80), width=1)
    _text(draw, (left, 8), title, size=15)
    _text(draw, (left + plot_w / 2, top + plot_h + 28), x_label, anchor="ma")
    _text(draw, (8, top - 18), y_label, size=12)

    for s in series:
        colour = _colour(s.colour)
        run: list[tuple[float, float]] = []
        pts = sorted(zip(s.x, s.y, strict=True))
        for x, y in pts + [(float("nan"), float("nan"))]:
            if np.isfinite(x) and np.isfinite(y):
                run.append((px(x), py(y)))
                continue
            _polyline(draw, run, colour, s.style)
            run = []
        for x, y in pts:
            if np.isfinite(x) and np.isfinite(y):
                _marker(draw, (px(x), py(y)), s.style, colour)

    lx, ly = left + plot_w + 24, top
    for i, (label, colour_i, style) in enumerate(entries):
        y = ly + 20 * i + 8
        colour = _colour(colour_i)
        if style is None:
            draw.rectangle([lx, y - 5, lx + 26, y + 5], fill=colour)
        else:
            _polyline(draw, [(lx, y), (lx + 30, y)], colour, style)
            _marker(draw, (lx + 15, y), style, colour, r=4)
        _text(draw, (lx + 38, y), label, anchor="lm")
    return np.asarray(img)


def pareto_front(cost: Sequence[float], value: Sequence[float]) -> list[bool]:
    """For each point, whether no other point is at least as cheap and as good, and strictly
    better in one of the two (lower cost, higher value). Non-finite points are never on it."""
    pts = [(float(c), float(v)) for c, v in zip(cost, value, strict=True)]
    out = []
    for i, (c, v) in enumerate(pts):
        if not (np.isfinite(c) and np.isfinite(v)):
            out.append(False)
            continue
        dominated = any(
            j != i
            and np.isfinite(c2)
            and np.isfinite(v2)
            and c2 <= c
            and v2 >= v
            and (c2 < c or v2 > v)
            for j, (c2, v2) in enumerate(pts)
        )
        out.append(not dominated)
    return out


def pareto_chart(
    names: Sequence[str],
    latency_ms: Sequence[float],
    auc: Sequence[float],
    ci: Sequence[Sequence[float] | None] | None = None,
    *,
    title: str = "mean test AUC vs CPU latency (up and left is better)",
    x_label: str = "latency per forward (ms)",
    plot_size: tuple[int, int] = (560, 340),
) -> np.ndarray:
    """One point per model (its PALETTE colour by position, as in :func:`auc_bars`), vertical
    bars for the confidence interval, the Pareto front as a step line with filled markers;
    dominated models are hollow. Returns a uint8 RGB array [H, W, 3]."""
    front = pareto_front(latency_ms, auc)
    ci = list(ci) if ci is not None else [None] * len(names)
    lows = [c[0] for c in ci if c] + [a for a in auc if np.isfinite(a)]
    highs = [c[1] for c in ci if c] + [a for a in auc if np.isfinite(a)]
    y_lo, y_hi, y_step = nice_range(
        max(0.0, min(lows, default=0.5) - 0.02), min(1.0, max(highs, default=1.0) + 0.02)
    )
    lat = [v for v in latency_ms if np.isfinite(v)]
    x_lo, x_hi, x_step = nice_range(0.0, max(lat, default=1.0) * 1.15)

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_w = (
        max([_text_width(probe, n) for n in names] + [_text_width(probe, "Pareto front")]) + 60
    )
    left, top, bottom = 64, 52, 62
    plot_w, plot_h = plot_size
    width, height = int(left + plot_w + 24 + legend_w), int(top + plot_h + bottom)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    def px(x: float) -> float:
        return left + plot_w * (x - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        return top + plot_h * (1 - (min(max(y, y_lo), y_hi) - y_lo) / (y_hi - y_lo))

    decimals = max(0, -int(np.floor(np.log10(y_step))))
    for k in range(int(round((y_hi - y_lo) / y_step)) + 1):
        v = y_lo + k * y_step
        draw.line([left, py(v), left + plot_w, py(v)], fill=(228, 228, 228))
        _text(draw, (left - 6, py(v)), f"{v:.{decimals}f}", anchor="rm")
    for k in range(int(round((x_hi - x_lo) / x_step)) + 1):
        v = x_lo + k * x_step
        draw.line([px(v), top, px(v), top + plot_h], fill=(240, 240, 240))
        _text(draw, (px(v), top + plot_h + 7), f"{v:g}", anchor="ma")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(80, 80, 80))
    _text(draw, (left, 8), title, size=15)
    _text(draw, (left + plot_w / 2, top + plot_h + 28), x_label, anchor="ma")
    _text(draw, (8, top - 18), "mean test AUC", size=12)

    on = sorted((latency_ms[i], auc[i]) for i in range(len(names)) if front[i])
    steps: list[tuple[float, float]] = []
    if on:
        steps = [(px(on[0][0]), py(on[0][1]))]
        for (_x0, y0), (x1, y1) in zip(on, on[1:], strict=False):
            steps += [(px(x1), py(y0)), (px(x1), py(y1))]
        steps.append((left + plot_w, py(on[-1][1])))
        _polyline(draw, steps, (90, 90, 90), style=1)

    # Markers and intervals first, then each label at the first free spot around its point.
    shown = [i for i in range(len(names)) if np.isfinite(latency_ms[i]) and np.isfinite(auc[i])]
    taken: list[tuple[float, float, float, float]] = [
        (min(a[0], b[0]), min(a[1], b[1]) - 2, max(a[0], b[0]), max(a[1], b[1]) + 2)
        for a, b in zip(steps, steps[1:], strict=False)
    ]
    for i in shown:
        x, y = px(latency_ms[i]), py(auc[i])
        colour = _colour(i)
        if ci[i]:
            lo, hi = py(ci[i][0]), py(ci[i][1])
            draw.line([x, lo, x, hi], fill=colour, width=1)
            for yy in (lo, hi):
                draw.line([x - 4, yy, x + 4, yy], fill=colour, width=1)
            taken.append((x - 4, hi, x + 4, lo))
        _marker(draw, (x, y), 0, colour, r=6 if front[i] else 5, filled=front[i])
        taken.append((x - 8, y - 8, x + 8, y + 8))

    def free(box: tuple[float, float, float, float]) -> bool:
        inside = left + 2 <= box[0] and box[2] <= left + plot_w - 2
        inside = inside and top + 2 <= box[1] and box[3] <= top + plot_h - 2
        return inside and not any(
            box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken
        )

    for i in shown:
        x, y = px(latency_ms[i]), py(auc[i])
        label = f"{names[i]} {auc[i]:.3f}"
        w = _text_width(draw, label)
        spots = [
            (x + dx if dx > 0 else x + dx - w, y - 7 + dy)
            for dy in (0, -16, 16, -32, 32, -48, 48)
            for dx in (11, -11)
        ]
        lx, ly = next(((a, b) for a, b in spots if free((a, b, a + w, b + 14))), spots[0])
        if abs(ly - (y - 7)) > 1:  # displaced: a leader line to its point
            ex = lx if lx > x else lx + w
            draw.line([x, y, ex, ly + 7], fill=(170, 170, 170), width=1)
        taken.append((lx, ly, lx + w, ly + 14))
        _text(draw, (lx, ly), label)

    lx, y = left + plot_w + 24, top + 8
    for i, name in enumerate(names):
        _marker(draw, (lx + 8, y), 0, _colour(i), r=5, filled=front[i])
        _text(draw, (lx + 22, y), name, anchor="lm")
        y += 20
    y += 6
    _polyline(draw, [(lx, y), (lx + 16, y)], (90, 90, 90), style=1)
    _text(draw, (lx + 22, y), "Pareto front", anchor="lm")
    _text(draw, (lx, y + 16), "filled: on the front", size=11)
    _text(draw, (lx, y + 30), "hollow: dominated", size=11)
    return np.asarray(img)


def robustness_curves(
    curves: dict[str, dict[str, Sequence[tuple[float, float]]]],
    title: str = "mean test AUC vs corruption severity (probes fitted on clean images)",
) -> np.ndarray:
    """Mean AUC against severity (0: clean), drawn by :func:`line_chart`: a line per model
    (PALETTE colour by position, as in :func:`auc_bars`), a line style per corruption.

    ``curves``: {corruption: {model: [(severity, mean AUC), ...]}}. Returns uint8 [H, W, 3].
    """
    corruptions = list(curves)
    models = list(dict.fromkeys(m for per_model in curves.values() for m in per_model))
    series = []
    for i, name in enumerate(models):
        for k, corruption in enumerate(corruptions):
            pts = sorted(curves[corruption].get(name, []))
            if pts:
                xs, ys = [s for s, _ in pts], [v for _, v in pts]
                series.append(Series(f"{name} {corruption}", xs, ys, colour=i, style=k))
    legend: list[tuple[str, int | None, int | None]] = [(n, i, None) for i, n in enumerate(models)]
    if len(corruptions) > 1:
        legend += [(c, None, k) for k, c in enumerate(corruptions)]
    return line_chart(
        series,
        title=title,
        x_label="severity (0: clean test images)",
        legend=legend,
        x_tick_labels={0.0: "clean"},
    )
