"""``vlcd report``: one HTML page (and report.md) with every table and plot of a run.

It reads a run folder: a demo folder (``teacher/``, ``predistill/``, ``distill/``, ``eval/``), an
eval folder (``report.json``) or a sweep folder (``sweep.json``); a sweep in ``RUN/sweep/`` or
given with ``--sweep`` is added to the page. It writes ``RUN/report/`` (or ``--out``)::

    report.html   the page: inline CSS, no script, images referenced by file name
    report.md     the same tables in Markdown
    *.png         the plots the page shows: copied from eval/ and the sweep, or drawn here
    tb/           the plots drawn here and the Markdown, for TensorBoard

The page holds the linear-probe table (AUC per task, mean with its interval, size, latency,
speed-up), the AUC bars and ROC curves of ``vlcd eval``, an accuracy-latency plot with the
Pareto front, the robustness study and zero-shot table when the eval report has them, the
lambda sweep, the stages that produced the run, and the resolved recipe. Every text from the
run is HTML-escaped; only files that exist beside the page are referenced.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlcd_dist.errors import VlcdError
from vlcd_dist.reporting.tables import DASH, Table, finite, fmt

STAGE_DIRS = ("teacher", "predistill", "distill")
# Pictures copied from the eval folder: (file, caption).
EVAL_PLOTS = (
    ("auc.png", "Test AUC-ROC per task and the mean, per model (linear probes)."),
    ("roc.png", "ROC curves of the linear probes on the test split, one panel per task."),
)


def eval_table(report: dict[str, Any]) -> Table:
    """Model x task AUC, the mean with its interval, the gap to the teacher, size and speed."""
    tasks = list(report["tasks"])
    level = int(round(report.get("bootstrap", {}).get("confidence", 0.95) * 100))
    header = ["model", *tasks, "mean AUC", f"{level}% CI", "Δ vs teacher"]
    header += ["params (M)", "latency (ms)", "speed-up"]
    rows, values = [], []
    for name, r in report["models"].items():
        ci = (r.get("ci") or {}).get("mean")
        delta = r.get("delta_vs_teacher")
        speed = r.get("speedup")
        aucs = [r["auc"].get(t) for t in tasks]
        rows.append(
            [
                name,
                *(fmt(v) for v in aucs),
                fmt(r.get("auc_mean")),
                f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else DASH,
                DASH if delta is None or r.get("kind") == "teacher" else f"{delta:+.3f}",
                fmt(r["params"] / 1e6, 1) if r.get("params") else DASH,
                fmt(r.get("latency_ms"), 1),
                f"{speed:.1f}x" if finite(speed) else DASH,
            ]
        )
        values.append([None, *aucs, r.get("auc_mean")])
    table = Table(header, rows, numeric=set(range(1, len(header))), code={0})
    table.bold_best(range(1, 2 + len(tasks)), values)
    return table


def eval_notes(report: dict[str, Any]) -> str:
    """One sentence on what the numbers are."""
    samples, lat = report.get("samples", {}), report.get("latency", {})
    size = report.get("image_size")
    boot = report.get("bootstrap", {})
    parts = [
        "Test AUC-ROC of logistic-regression probes on frozen, L2-normalised image features ",
        f"({samples.get('train', '?')} train / {samples.get('test', '?')} test samples"
        + (f", {size[0]}x{size[1]} px)" if size else ")"),
        f"; the interval is a percentile bootstrap over test samples ({boot.get('resamples', 0)} "
        "resamples)"
        if boot.get("resamples")
        else "",
        f". Latency: median {lat.get('device', 'cpu').upper()} forward of a batch of "
        f"{lat.get('batch', 1)} with {lat.get('threads', 1)} thread(s); the teacher's is its "
        "image tower's. Bold: the best value of each AUC column.",
    ]
    return "".join(parts)


def _degrade_corruptions(report: dict[str, Any]) -> list[str]:
    """The corruptions present in report["degrade"], in the order they appear."""
    deg = report.get("degrade") or {}
    names: list[str] = []
    declared = deg.get("corruption", deg.get("corruptions"))
    if isinstance(declared, str):
        names.append(declared)
    elif isinstance(declared, (list, tuple)):
        names += [str(c) for c in declared]
    for per_model in (deg.get("models") or {}).values():
        if isinstance(per_model, dict):
            names += [c for c, v in per_model.items() if isinstance(v, dict)]
    return list(dict.fromkeys(names))


def _degrade_severities(report: dict[str, Any], corruption: str) -> list[str]:
    deg = report.get("degrade") or {}
    found: list[str] = [str(s) for s in deg.get("severities") or []]
    for per_model in (deg.get("models") or {}).values():
        found += [str(s) for s in ((per_model or {}).get(corruption) or {})]
    return sorted(dict.fromkeys(found), key=lambda s: (float(s) if _number(s) else math.inf, s))


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def degrade_entry(report: dict[str, Any], model: str, corruption: str, severity: str) -> dict:
    """report["degrade"]["models"][model][corruption][severity], or {} when absent."""
    models = (report.get("degrade") or {}).get("models") or {}
    entry = ((models.get(model) or {}).get(corruption) or {}).get(str(severity))
    return entry if isinstance(entry, dict) else {}


def degraded_mean(report: dict[str, Any], model: str) -> float | None:
    """Mean AUC of ``model`` averaged over every corruption and severity of the robustness
    study (severity 0, the identity, excluded); None without one."""
    values = []
    for corruption in _degrade_corruptions(report):
        for sev in _degrade_severities(report, corruption):
            if _number(sev) and float(sev) == 0:
                continue
            v = degrade_entry(report, model, corruption, sev).get("auc_mean")
            if finite(v):
                values.append(float(v))
    return sum(values) / len(values) if values else None


def degrade_description(report: dict[str, Any]) -> str:
    corruptions = _degrade_corruptions(report)
    sevs = sorted(
        {s for c in corruptions for s in _degrade_severities(report, c) if s not in ("0", "0.0")},
        key=lambda s: float(s) if _number(s) else math.inf,
    )
    return f"{', '.join(corruptions) or '?'} at severities {', '.join(sevs) or '?'}"


def robustness_tables(report: dict[str, Any]) -> list[tuple[str, Table]]:
    """Per corruption: model x severity mean AUC, with its change from the clean AUC."""
    out = []
    for corruption in _degrade_corruptions(report):
        sevs = _degrade_severities(report, corruption)
        header = ["model", "clean", *(f"severity {s}" for s in sevs)]
        rows, values = [], []
        for name, r in report["models"].items():
            row, vals = [name, fmt(r.get("auc_mean"))], [None, r.get("auc_mean")]
            for s in sevs:
                e = degrade_entry(report, name, corruption, s)
                mean, clean = e.get("auc_mean"), r.get("auc_mean")
                text = fmt(mean)
                # The change is computed here, not read from "drop", whose sign is a convention.
                if finite(mean) and finite(clean):
                    change = round(mean - clean, 3)
                    text += (
                        f" ({'+' if change > 0 else '−' if change < 0 else '±'}{abs(change):.3f})"
                    )
                row.append(text)
                vals.append(mean)
            rows.append(row)
            values.append(vals)
        if any(len(row) > 2 for row in rows):
            table = Table(header, rows, numeric=set(range(1, len(header))), code={0})
            table.bold_best(range(1, len(header)), values)
            out.append((corruption, table))
    return out


def zero_shot_tables(report: dict[str, Any]) -> tuple[Table, Table] | None:
    """(prompts: task, positive, negative; AUC: model x task and mean), or None."""
    zs = report.get("zero_shot")
    if not isinstance(zs, dict) or not zs.get("models"):
        return None
    prompts = zs.get("prompts") or {}
    prompt_rows = [
        [task, str(pair[0]), str(pair[1])]
        for task, pair in prompts.items()
        if isinstance(pair, (list, tuple)) and len(pair) == 2
    ]
    tasks = list(prompts) or list(report.get("tasks", []))
    header = ["model", *tasks, "mean AUC"]
    rows, values = [], []
    for name, r in zs["models"].items():
        aucs = [(r.get("auc") or {}).get(t) for t in tasks]
        rows.append([name, *(fmt(v) for v in aucs), fmt(r.get("auc_mean"))])
        values.append([None, *aucs, r.get("auc_mean")])
    auc = Table(header, rows, numeric=set(range(1, len(header))), code={0})
    auc.bold_best(range(1, len(header)), values)
    return Table(["task", "positive prompt", "negative prompt"], prompt_rows, code={0}), auc


def stages_table(root: Path) -> Table | None:
    """The training stages of a demo folder, from their summary.json."""
    rows = []
    for stage in STAGE_DIRS:
        path = root / stage / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        skipped = sum((s.get("skipped_samples") or {}).values())
        skipped_steps = sum(
            (c or {}).get("skipped_steps", 0) for c in (s.get("counters") or {}).values()
        )
        rows.append(
            [
                str(s.get("stage", stage)),
                f"{stage}/",
                ", ".join(s.get("trainees", [])),
                str(s.get("steps", DASH)),
                str(s.get("samples", DASH)),
                str(s.get("world_size", DASH)),
                str(skipped),
                str(skipped_steps),
            ]
        )
    if not rows:
        return None
    header = ["stage", "folder", "trained", "steps", "samples", "ranks"]
    header += ["bad samples skipped", "updates skipped"]
    return Table(header, rows, numeric={3, 4, 5, 6, 7}, code={1})


def pareto_models(report: dict[str, Any]) -> tuple[list[str], list[bool]]:
    """Model names and whether each is on the accuracy-latency Pareto front."""
    from vlcd_dist.reporting.figures import pareto_front

    names = list(report["models"])
    lat = [_float(report["models"][n].get("latency_ms")) for n in names]
    auc = [_float(report["models"][n].get("auc_mean")) for n in names]
    return names, pareto_front(lat, auc)


def _float(value: Any) -> float:
    return float(value) if finite(value) else float("nan")


# ---------------------------------------------------------------------------------------------
# Finding the pieces of a run


@dataclass
class RunFolders:
    """Where the parts of a run are: the eval folder, the sweep folder, the stages' root."""

    run: Path
    eval: Path | None
    sweep: Path | None
    root: Path


def locate(run: str | Path, sweep: str | Path | None = None) -> RunFolders:
    """Find the eval report and the sweep of ``run``; VlcdError when it holds neither."""
    run = Path(run)
    if not run.is_dir():
        raise VlcdError(f"report: {run} is not a folder; give a demo, eval or sweep folder")
    eval_dir = None
    if (run / "report.json").is_file():
        eval_dir = run
    elif (run / "eval" / "report.json").is_file():
        eval_dir = run / "eval"
    if sweep is not None:
        sweep = Path(sweep)
        if not (sweep / "sweep.json").is_file():
            raise VlcdError(f"report: --sweep {sweep} holds no sweep.json (written by vlcd sweep)")
    elif (run / "sweep.json").is_file():
        sweep = run
    elif (run / "sweep" / "sweep.json").is_file():
        sweep = run / "sweep"
    if eval_dir is None and sweep is None:
        raise VlcdError(
            f"report: nothing to report in {run}: expected {run}/report.json (an eval folder), "
            f"{run}/eval/report.json (a demo folder) or {run}/sweep.json (a sweep folder)"
        )
    return RunFolders(run=run, eval=eval_dir, sweep=sweep, root=run)


# ---------------------------------------------------------------------------------------------
# The page

CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
  color: #1d2125; background: #f4f5f7; margin: 0; }
main { max-width: 1320px; margin: 0 auto; padding: 8px 24px 40px; }
header.top { background: #1f3b57; color: #fff; padding: 18px 24px 14px; }
header.top h1 { margin: 0 0 4px; font-size: 24px; font-weight: 600; }
header.top p { margin: 0; color: #c9d6e3; font-size: 13px; }
header.top code { color: #fff; background: rgba(255,255,255,.12); }
nav { max-width: 1320px; margin: 0 auto; padding: 10px 24px 0; font-size: 14px; }
nav a { color: #1f5c99; text-decoration: none; margin-right: 16px; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
section { background: #fff; border: 1px solid #dfe2e6; border-radius: 6px;
  padding: 4px 22px 18px; margin: 16px 0; }
h2 { font-size: 19px; margin: 16px 0 8px; color: #1f3b57; }
h3 { font-size: 15px; margin: 16px 0 6px; }
p.note { color: #555d66; font-size: 13px; margin: 6px 0 10px; max-width: 1000px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 8px 0 4px; }
.card { border: 1px solid #dfe2e6; border-radius: 6px; padding: 8px 14px; flex: 1 1 200px;
  background: #fafbfc; }
.card .name { font-size: 12px; color: #555d66; font-family: "DejaVu Sans Mono", Menlo, monospace; }
.card .value { font-size: 22px; font-weight: 600; }
.card .sub { font-size: 12px; color: #555d66; }
.up { color: #1a7f37; } .down { color: #b42318; }
.table-wrap { overflow-x: auto; margin: 6px 0 8px; }
table { border-collapse: collapse; font-size: 14px; }
caption { text-align: left; font-size: 13px; color: #555d66; padding: 0 0 4px; }
th, td { padding: 5px 8px; border-bottom: 1px solid #e6e8eb; text-align: left;
  white-space: nowrap; }
th { background: #eef1f4; font-weight: 600; border-bottom: 2px solid #cfd5db;
  white-space: normal; vertical-align: bottom; min-width: 3.5em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td strong { color: #0b3d91; }
th.group { text-align: center; border-bottom: 1px solid #cfd5db; }
code { font: 13px "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #f0f2f4;
  padding: 1px 4px; border-radius: 3px; }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; border-radius: 4px;
  background: #fff; }
figcaption { font-size: 13px; color: #555d66; margin-top: 4px; max-width: 1000px; }
details pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: 10px; overflow-x: auto;
  font-size: 12px; line-height: 1.35; max-height: 480px; }
footer { color: #6a737d; font-size: 12px; margin-top: 20px; }
"""


@dataclass
class Page:
    """Sections of the HTML page and of report.md, filled side by side."""

    title: str
    sections: list[tuple[str, str, list[str], list[str]]] = field(default_factory=list)
    """(anchor, heading, HTML parts, Markdown parts)."""

    def add(self, anchor: str, heading: str) -> tuple[list[str], list[str]]:
        parts: tuple[list[str], list[str]] = ([], [])
        self.sections.append((anchor, heading, *parts))
        return parts


def _figure(folder: Path, name: str, caption: str) -> tuple[str, str]:
    """An <img> of ``folder/name`` and its Markdown; empty when the file is missing."""
    if not (folder / name).is_file():
        return "", ""
    src = html.escape(name, quote=True)
    return (
        f'<figure><img src="{src}" alt="{html.escape(caption, quote=True)}" loading="lazy">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>",
        f"![{caption}]({name})\n\n{caption}\n",
    )


def _p(text: str) -> tuple[str, str]:
    return f'<p class="note">{html.escape(text)}</p>', text + "\n"


def _summary_cards(report: dict[str, Any]) -> str:
    models = report["models"]
    teacher = models.get("teacher")
    cards = []
    for name, r in models.items():
        sub = []
        if r.get("kind") == "student" and teacher and finite(r.get("delta_vs_teacher")):
            d = r["delta_vs_teacher"]
            cls = "up" if d >= 0 else "down"
            sub.append(f'<span class="{cls}">{d:+.3f}</span> vs teacher')
        if finite(r.get("speedup")) and r.get("kind") != "teacher":
            sub.append(f"{r['speedup']:.1f}x faster")
        if finite(r.get("latency_ms")):
            sub.append(f"{r['latency_ms']:.1f} ms")
        cards.append(
            f'<div class="card"><div class="name">{html.escape(name)}</div>'
            f'<div class="value">{fmt(r.get("auc_mean"))}</div>'
            f'<div class="sub">mean AUC · {" · ".join(sub) or html.escape(str(r.get("kind", "")))}'
            "</div></div>"
        )
    return '<div class="cards">' + "".join(cards) + "</div>"


def _clear(folder: Path, names: Sequence[str]) -> None:
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _save(image: Any, path: Path) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def robustness_chart(report: dict[str, Any]) -> Any:
    """Mean AUC vs severity (0 = clean), a line per model, a style per corruption."""
    from vlcd_dist.reporting.figures import Series, line_chart

    corruptions = _degrade_corruptions(report)
    series, legend = [], []
    for i, name in enumerate(report["models"]):
        legend.append((name, i, None))
        for k, corruption in enumerate(corruptions):
            xs, ys = [0.0], [_float(report["models"][name].get("auc_mean"))]
            for s in _degrade_severities(report, corruption):
                if _number(s) and float(s) != 0:
                    xs.append(float(s))
                    ys.append(_float(degrade_entry(report, name, corruption, s).get("auc_mean")))
            series.append(Series(f"{name} {corruption}", xs, ys, colour=i, style=k))
    if len(corruptions) > 1:
        legend += [(c, None, k) for k, c in enumerate(corruptions)]
    return line_chart(
        series,
        title=f"mean test AUC under {', '.join(corruptions)} (probes fitted on clean images)",
        x_label="severity (0: clean test images)",
        legend=legend,
        x_tick_labels={0.0: "clean"},
    )


def write_report(
    run: str | Path,
    out: str | Path | None = None,
    sweep: str | Path | None = None,
    tensorboard: bool = True,
) -> Path:
    """Write ``report.html``, ``report.md``, the plots and TensorBoard logs into ``out``
    (default ``RUN/report``). Returns the path of the HTML page."""
    where = locate(run, sweep)
    out = Path(out) if out is not None else where.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, Any] = {}  # plots made here, for TensorBoard
    _clear(out, [n for n, _ in EVAL_PLOTS] + ["pareto.png", "robustness.png", "sweep.png"])

    page = Page(title=f"VLCD report: {where.run.resolve().name}")
    report = None
    if where.eval is not None:
        report = json.loads((where.eval / "report.json").read_text())
        _eval_sections(page, report, where.eval, out, drawn)
    if where.sweep is not None:
        _sweep_section(page, where.sweep, out)
    stages = stages_table(where.root)
    if stages is not None:
        h, m = page.add("stages", "Stages")
        h.append(stages.html())
        m.append(stages.markdown())
        note = "From each stage's summary.json; the folders are relative to the run folder."
        h.append(_p(note)[0])
        m.append(_p(note)[1])
    config = where.eval / "config.yaml" if where.eval is not None else None
    if config is not None and config.is_file():
        h, m = page.add("recipe", "Recipe")
        text = config.read_text()
        h.append(
            "<details><summary>The resolved recipe of the evaluation "
            f"(<code>{html.escape(str(config))}</code>)</summary>"
            f"<pre>{html.escape(text)}</pre></details>"
        )
        m.append(f"The resolved recipe of the evaluation: `{config}`\n")

    md = _markdown(page, where)
    (out / "report.md").write_text(md)
    html_path = out / "report.html"
    html_path.write_text(_html(page, where, out))
    if tensorboard:
        _tensorboard(out / "tb", drawn, md)
    return html_path


def _eval_sections(
    page: Page, report: dict[str, Any], eval_dir: Path, out: Path, drawn: dict[str, Any]
) -> None:
    from vlcd_dist.reporting.figures import pareto_chart

    models = report["models"]
    h, m = page.add("results", "Linear-probe results")
    h.append(_summary_cards(report))
    table = eval_table(report)
    h.append(table.html())
    m.append(table.markdown())
    note = _p(eval_notes(report))
    h.append(note[0])
    m.append(note[1])
    for name, caption in EVAL_PLOTS:
        if (eval_dir / name).is_file():
            shutil.copyfile(eval_dir / name, out / name)
            fig = _figure(out, name, caption)
            h.append(fig[0])
            m.append(fig[1])

    names, front = pareto_models(report)
    h, m = page.add("pareto", "Accuracy vs latency")
    ci = [(models[n].get("ci") or {}).get("mean") for n in names]
    chart = pareto_chart(
        names,
        [_float(models[n].get("latency_ms")) for n in names],
        [_float(models[n].get("auc_mean")) for n in names],
        ci,
        x_label=f"median {report.get('latency', {}).get('device', 'cpu').upper()} latency "
        f"per forward of {report.get('latency', {}).get('batch', 1)} image(s) (ms)",
    )
    _save(chart, out / "pareto.png")
    drawn["report/pareto"] = chart
    on = sorted(
        (n for n, f in zip(names, front, strict=True) if f), key=lambda n: models[n]["latency_ms"]
    )
    text = (
        "On the Pareto front (no other model is both faster and more accurate): "
        + ", ".join(
            f"{n} ({fmt(models[n]['auc_mean'])} AUC, {fmt(models[n]['latency_ms'], 1)} ms)"
            for n in on
        )
        + ". Bars: the bootstrap interval of the mean AUC."
    )
    fig = _figure(
        out,
        "pareto.png",
        "Mean test AUC against latency; the dashed staircase is the Pareto front.",
    )
    h += [fig[0], _p(text)[0]]
    m += [fig[1], _p(text)[1]]

    if report.get("degrade"):
        tables = robustness_tables(report)
        h, m = page.add("robustness", "Robustness to camera degradations")
        intro = (
            f"The test split again under {degrade_description(report)}; the probes are the ones "
            "fitted on clean training images. Each cell: mean AUC (change from clean)."
        )
        h.append(_p(intro)[0])
        m.append(_p(intro)[1])
        for corruption, t in tables:
            h.append(f"<h3>{html.escape(corruption)}</h3>" + t.html())
            m.append(f"### {corruption}\n\n" + t.markdown())
        if (eval_dir / "robustness.png").is_file():
            shutil.copyfile(eval_dir / "robustness.png", out / "robustness.png")
        elif tables:
            chart = robustness_chart(report)
            _save(chart, out / "robustness.png")
            drawn["report/robustness"] = chart
        fig = _figure(out, "robustness.png", "Mean test AUC against corruption severity.")
        h.append(fig[0])
        m.append(fig[1])

    pair = zero_shot_tables(report)
    if pair is not None:
        prompts, auc = pair
        h, m = page.add("zero-shot", "Zero-shot (text prompts)")
        intro = (
            "No probe: an image's score for a task is cos(z, positive prompt) - cos(z, negative "
            "prompt), the prompts embedded by the teacher's text tower and z the model's image "
            "embedding (students share the teacher's embedding space). Test AUC-ROC per task."
        )
        h += [_p(intro)[0], auc.html(), "<h3>Prompts</h3>", prompts.html()]
        m += [_p(intro)[1], auc.markdown(), "\n### Prompts\n\n" + prompts.markdown()]


def _sweep_section(page: Page, sweep_dir: Path, out: Path) -> None:
    from vlcd_dist.reporting.sweep import sweep_notes, sweep_table

    summary = json.loads((sweep_dir / "sweep.json").read_text())
    h, m = page.add("sweep", "Sweep")
    table = sweep_table(summary)
    notes = sweep_notes(summary)
    h.append(_p(f"Sweep folder {sweep_dir}. " + notes)[0])
    m.append(_p(f"Sweep folder `{sweep_dir}`. " + notes)[1])
    h.append(table.html())
    m.append(table.markdown())
    if (sweep_dir / "sweep.png").is_file():
        shutil.copyfile(sweep_dir / "sweep.png", out / "sweep.png")
        fig = _figure(out, "sweep.png", "Mean test AUC of each student against the swept value.")
        h.append(fig[0])
        m.append(fig[1])


def _markdown(page: Page, where: RunFolders) -> str:
    lines = [f"# {page.title}\n", f"Run folder: `{where.run}`\n"]
    for _anchor, heading, _h, md in page.sections:
        lines.append(f"\n## {heading}\n")
        lines += [part.rstrip("\n") + "\n" for part in md if part]
    return "\n".join(lines)


def _html(page: Page, where: RunFolders, out: Path) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(
        f'<a href="#{html.escape(anchor, quote=True)}">{html.escape(heading)}</a>'
        for anchor, heading, _, _ in page.sections
    )
    body = "\n".join(
        f'<section id="{html.escape(anchor, quote=True)}"><h2>{html.escape(heading)}</h2>\n'
        + "\n".join(p for p in parts if p)
        + "\n</section>"
        for anchor, heading, parts, _ in page.sections
    )
    md_link = '<a href="report.md">report.md</a>' if (out / "report.md").is_file() else "report.md"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(page.title)}</title>
<style>{CSS}</style>
</head>
<body>
<header class="top"><h1>{html.escape(page.title)}</h1>
<p>Run folder <code>{html.escape(str(where.run.resolve()))}</code> · written {now} by
<code>vlcd report</code></p></header>
<nav>{nav}</nav>
<main>
{body}
<footer>The same tables in Markdown: {md_link}. Images are the PNG files beside this page.</footer>
</main>
</body>
</html>
"""


def _tensorboard(folder: Path, drawn: dict[str, Any], md: str) -> None:
    """The plots drawn here and the Markdown, in ``folder`` (replacing an earlier report's)."""
    try:
        from vlcd_dist.train.logging import TBLogger

        if folder.is_dir():
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        tb = TBLogger(folder, True)
    except ImportError:
        return
    try:
        for tag, image in drawn.items():
            tb.image(tag, image)
        tb.text("report/markdown", md)
    finally:
        tb.close()
