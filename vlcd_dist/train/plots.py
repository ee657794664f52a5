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
