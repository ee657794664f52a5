"""The sweep's table, notes and chart, and its files (sweep.json, sweep.md, sweep.png and .svg,
tb/)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vlcd_dist.io import write_json, write_text
from vlcd_dist.reporting.tables import DASH, Table, best_rows, fmt

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INIT_KEY = "distill.init"
"""The sweep axis that chooses the students' start (predistilled or scratch)."""
LAMBDA_KEY = "loss.distill_lambda"


def _number(text: str) -> float | None:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _label(key: str) -> str:
    return "init" if key == INIT_KEY else key.split(".")[-1]


def sweep_table(summary: dict[str, Any]) -> Table:
    """Grid point x model: the validation and the test mean AUC (and the degraded test mean
    AUC); bold: per model, the point with the best validation AUC, i.e. the one a user would
    choose, and its test figures. Nothing is bold without a validation split: choosing on test
    would select on test."""
    keys = [g["key"] for g in summary["grid"]]
    students = summary["students"]
    degraded = summary.get("degrade") is not None
    done = [p for p in summary["points"] if p.get("report")]
    teacher_col = len({p.get("teacher_auc_mean") for p in done}) > 1
    fields = [("val_auc_mean", "val"), ("auc_mean", "test")]
    if degraded:
        fields.append(("degraded_auc_mean", "degraded"))
    models = [*students, *(["teacher"] if teacher_col else [])]
    header = [_label(k) for k in keys]
    first = len(header)
    header += [f"{m} {label}" for m in models for _, label in fields]
    rows, values = [], []
    for p in summary["points"]:
        row = [p["values"][k] for k in keys]
        vals: list[Any] = []
        for m in models:
            for key, _ in fields:
                v = _model_value(p, m, key)
                row.append(fmt(v) if p.get("report") else "not run")
                vals.append(v)
        rows.append(row)
        values.append(vals)
    numeric_keys = {
        i for i, g in enumerate(summary["grid"]) if all(_number(v) is not None for v in g["values"])
    }
    table = Table(header, rows, numeric=numeric_keys | set(range(first, len(header))))
    for mi in range(len(models)):
        chosen = best_rows([vals[mi * len(fields)] for vals in values])
        table.bold |= {
            (r, first + mi * len(fields) + f) for r in chosen for f in range(len(fields))
        }
    table.groups = [("", first), *((m, len(fields)) for m in models)]
    table.short_header = header[:first] + [label for _ in models for _, label in fields]
    return table


def _model_value(point: dict[str, Any], model: str, key: str) -> Any:
    """A point's ``key`` figure of ``model``: students' are {student: value} maps, the
    teacher's a "teacher_<key>" value."""
    if model == "teacher":
        return point.get(f"teacher_{key}")
    got = point.get(key)
    return got.get(model) if isinstance(got, dict) else None


def sweep_notes(summary: dict[str, Any]) -> str:
    """What the sweep table shows, in one paragraph."""
    points = summary["points"]
    done = sum(1 for p in points if p.get("report"))
    grid = " x ".join(f"{g['key']} in {{{', '.join(g['values'])}}}" for g in summary["grid"])
    text = (
        f"Recipe {summary['recipe']}, {len(points)} points ({grid}), {done} evaluated; each "
        "point is one distill of every student and one eval. Cells: mean AUC-ROC over the "
        f"{len(summary['tasks']) or '?'} tasks (linear probes) on the validation rows held out "
        "of the train split (val) and on the test split (test). Bold: per model, the point "
        "with the best validation AUC (the one to choose) and its test AUC; the test split "
        "plays no part in the choice. Each point's folder is named after its values, e.g. "
        f"{points[0]['name'] if points else 'distill_lambda-0.1'}/."
    )
    teachers = {p.get("teacher_auc_mean") for p in points if p.get("report")}
    if len(teachers) == 1 and None not in teachers:
        text += f" The teacher (the same in every point) has mean AUC {fmt(next(iter(teachers)))}."
    if summary.get("degrade"):
        text += (
            f" Degraded: the mean test AUC averaged over {summary['degrade']} (probes fitted on "
            "clean images)."
        )
    if any(g["key"] == INIT_KEY for g in summary["grid"]):
        text += (
            " init: predistilled students start from the predistillation; scratch ones from "
            "their configured initialisation."
        )
    return text


def sweep_chart(summary: dict[str, Any]) -> Figure | None:
    """Mean AUC against the swept value: lambda when it is an axis, else the first numeric
    axis, else the points in order; a colour per student, a line style per combination of the
    other axes (e.g. predistilled / scratch). Two panels (clean, degraded) when degraded AUCs
    exist. None before any point is evaluated."""
    from vlcd_dist.reporting.figures import Series, line_legend, line_panel, new_figure

    grid = summary["grid"]
    keys = [g["key"] for g in grid]
    numeric = [g["key"] for g in grid if all(_number(v) is not None for v in g["values"])]
    x_key = LAMBDA_KEY if LAMBDA_KEY in keys else (numeric[0] if numeric else None)
    points = [p for p in summary["points"] if p.get("report")]
    students = summary["students"]
    if not points or not students:
        return None
    if x_key is not None:
        others = [k for k in keys if k != x_key]
        tick_labels = None
        x_of = {p["name"]: _number(p["values"][x_key]) for p in points}
        x_label = f"{x_key}" + (" (0: no distillation terms)" if x_key == LAMBDA_KEY else "")
    else:
        others = keys[1:]
        firsts = list(dict.fromkeys(p["values"][keys[0]] for p in points))
        x_of = {p["name"]: float(firsts.index(p["values"][keys[0]])) for p in points}
        tick_labels = {float(i): v for i, v in enumerate(firsts)}
        x_label = keys[0]
    combos = list(dict.fromkeys(tuple(p["values"][k] for k in others) for p in points))

    def combo_label(combo: tuple[str, ...]) -> str:
        parts = []
        for k, v in zip(others, combo, strict=True):
            if k == INIT_KEY:
                parts.append("predistilled" if v == "predistilled" else "from scratch")
            else:
                parts.append(f"{_label(k)}={v}")
        return ", ".join(parts)

    def series(field_name: str) -> list[Series]:
        out = []
        for si, student in enumerate(students):
            for ci, combo in enumerate(combos):
                chosen = [p for p in points if tuple(p["values"][k] for k in others) == combo]
                ys = [
                    float(v)
                    if isinstance(v := (p.get(field_name) or {}).get(student), (int, float))
                    else float("nan")
                    for p in chosen
                ]
                xs = [x_of[p["name"]] for p in chosen]
                out.append(Series(f"{student} {combo_label(combo)}", xs, ys, si, ci))  # type: ignore[arg-type]
        return out

    panels = [("auc_mean", "students' mean test AUC (clean test images)")]
    if summary.get("degrade"):
        panels.append(("degraded_auc_mean", f"mean test AUC, degraded: {summary['degrade']}"))
    fig = new_figure(8.5, 3.8 * len(panels))
    for ax, (field_name, title) in zip(
        fig.subplots(len(panels), 1, squeeze=False)[:, 0], panels, strict=True
    ):
        line_panel(ax, series(field_name), title=title, x_label=x_label, tick_labels=tick_labels)
    legend: list[tuple[str, int | None, int | None]] = [
        (s, i, None) for i, s in enumerate(students)
    ]
    if len(combos) > 1:
        legend += [(combo_label(c), None, i) for i, c in enumerate(combos)]
    line_legend(fig, legend)
    return fig


def write_outputs(out: Path, summary: dict[str, Any]) -> None:
    """sweep.json, sweep.md, sweep.png and .svg, and TensorBoard (OUT/tb, rewritten each time)."""
    from vlcd_dist.reporting.figures import save_figure

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "sweep.json", summary)
    table = sweep_table(summary)
    md = f"# VLCD sweep\n\n{table.markdown()}\n{sweep_notes(summary)}\n"
    for suffix in (".png", ".svg"):
        (out / f"sweep{suffix}").unlink(missing_ok=True)
    fig = sweep_chart(summary)
    chart = save_figure(fig, out, "sweep") if fig is not None else None
    if chart is not None:
        md += "\n![sweep](sweep.png)\n"
    write_text(out / "sweep.md", md)
    _tensorboard(out / "tb", summary, chart, table.markdown())


def _tensorboard(folder: Path, summary: dict[str, Any], chart: Any, table: str) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return
    shutil.rmtree(folder, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for p in summary["points"]:
            if not p.get("report"):
                continue
            hparams: dict[str, Any] = {}
            for key, value in p["values"].items():
                number = _number(value)
                hparams[key] = number if number is not None else value
            metrics = {f"auc_mean/{s}": v for s, v in p["auc_mean"].items() if v is not None}
            for s, v in (p.get("val_auc_mean") or {}).items():
                if v is not None:
                    metrics[f"val_auc_mean/{s}"] = v
            for s, v in (p.get("degraded_auc_mean") or {}).items():
                if v is not None:
                    metrics[f"degraded_auc_mean/{s}"] = v
            writer.add_hparams(hparams, metrics, run_name=p["name"])
        if chart is not None:
            writer.add_image("sweep/mean_auc", chart, 0, dataformats="HWC")
        writer.add_text("sweep/table", table.replace(DASH, "-"), 0)
    finally:
        writer.close()
