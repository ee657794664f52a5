"""``vlcd report``: one HTML page (and report.md) with every table and figure of a run.

It reads a run folder: a demo folder (``teacher/``, ``predistill/``, ``distill/``, ``eval/``), an
eval folder (``report.json``) or a sweep folder (``sweep.json``); a sweep in ``RUN/sweep/`` or
given with ``--sweep`` is added to the page. It writes ``RUN/report/`` (or ``--out``)::

    report.html   the page (templates/page.html.j2): inline CSS, no script, images by file name
    report.md     the same blocks in Markdown
    *.png, *.svg  the figures, drawn here from report.json and sweep.json
    tb/           the figures and the Markdown, for TensorBoard

The page holds the linear-probe table (AUC per task, mean with its interval, size, latency,
speed-up), the AUC bars and ROC curves, an accuracy-latency plot with the Pareto front, the
robustness study and zero-shot table when the eval report has them, the deployment section
when the run was packaged (``RUN/package/deployment.json`` or ``--deployment DIR``: fp32 vs int8
AUC, size on disk and CPU latency per model), the lambda sweep, the stages that produced the
run, and the resolved recipe. The template autoescapes every text
from the run; only files that exist beside the page are referenced.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlcd_dist.deploy.record import FILE_NAME, DeploymentRecordError, DeploymentReport
from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.results import EvalReport
from vlcd_dist.io import write_text
from vlcd_dist.reporting.deploy_tables import deployment_blocks, deployment_scalars
from vlcd_dist.reporting.document import (
    Block,
    Card,
    Cards,
    Details,
    FigureBlock,
    Note,
    Section,
    TableBlock,
    html_page,
    markdown_page,
)
from vlcd_dist.reporting.eval_tables import (
    eval_notes,
    eval_table,
    paired_blocks,
    robustness_blocks,
    zero_shot_blocks,
)
from vlcd_dist.reporting.tables import DASH, Table, finite, fmt

logger = logging.getLogger("vlcd_dist.report")

STAGE_DIRS = ("teacher", "predistill", "distill")
FIGURE_STEMS = ("auc", "roc", "pareto", "robustness", "sweep")


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


def summary_cards(report: EvalReport) -> Cards:
    """A card per model: mean AUC, its gap to the teacher, its speed-up and latency."""
    teacher = report.models.get("teacher")
    cards = []
    for name, r in report.models.items():
        facts: list[tuple[str, str]] = []
        if r.kind == "student" and teacher is not None and finite(r.delta_vs_teacher):
            d = r.delta_vs_teacher
            matches = r.vs_teacher["mean"].matches
            facts.append((f"{d:+.3f} vs teacher", "up" if d >= 0 else "down"))  # type: ignore[operator]
            if matches is not None:
                facts.append(("matches the teacher" if matches else "below the teacher", ""))
        for precision, ms in r.latency_ms.items():
            speedup = r.speedup.get(precision)
            if finite(speedup) and r.kind != "teacher":
                facts.append((f"{speedup:.1f}x faster in {precision}", ""))
            if finite(ms):
                facts.append((f"{ms:.1f} ms {precision}", ""))
        cards.append(Card(name, fmt(r.auc_mean), facts or [(r.kind, "")]))
    return Cards(cards)


def pareto_note(report: EvalReport) -> str:
    """The models on the accuracy-latency front, fastest first."""
    from vlcd_dist.reporting.figures import pareto_front

    names = list(report.models)
    precision = report.latency.precisions[0]
    lat = {n: report.models[n].latency_ms.get(precision, math.nan) for n in names}
    front = pareto_front([lat[n] for n in names], [report.models[n].auc_mean for n in names])
    on = sorted((n for n, f in zip(names, front, strict=True) if f), key=lambda n: lat[n])
    listed = ", ".join(
        f"{n} ({fmt(report.models[n].auc_mean)} AUC, {fmt(lat[n], 1)} ms)" for n in on
    )
    return (
        f"On the Pareto front of {precision} latency (no other model is both faster and more "
        f"accurate): {listed}. Bars: the bootstrap interval of the mean AUC."
    )


# ---------------------------------------------------------------------------------------------
# Finding the pieces of a run


@dataclass
class RunFolders:
    """Where the parts of a run are: the eval folder, the sweep folder, the stages' root."""

    run: Path
    eval: Path | None
    sweep: Path | None
    root: Path
    deployment: Path | None = None
    """The package's deployment.json (``vlcd package``), when there is one."""


PACKAGE_DIR = "package"
"""Where ``vlcd package RUN`` writes by default, and so where the report looks."""


def locate(
    run: str | Path, sweep: str | Path | None = None, deployment: str | Path | None = None
) -> RunFolders:
    """Find the eval report, the sweep and the package's deployment record of ``run``
    (``deployment``: a package folder given by the user, which must hold deployment.json);
    VlcdError when it holds none of them."""
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
    record = None
    if deployment is not None:
        record = Path(deployment) / FILE_NAME
        if not Path(deployment).is_dir():
            raise VlcdError(
                f"report: --deployment {deployment} is not a folder; give the folder of "
                f"`vlcd package RUN --out DIR` (default RUN/{PACKAGE_DIR})"
            )
        if not record.is_file():
            raise VlcdError(
                f"report: --deployment {deployment} holds no {FILE_NAME}; give the folder that "
                f"`vlcd package RUN --out DIR` wrote, or run it (after `vlcd eval`)"
            )
    elif (run / PACKAGE_DIR / FILE_NAME).is_file():
        record = run / PACKAGE_DIR / FILE_NAME
    if eval_dir is None and sweep is None and record is None:
        raise VlcdError(
            f"report: nothing to report in {run}: expected {run}/report.json (an eval folder), "
            f"{run}/eval/report.json (a demo folder), {run}/sweep.json (a sweep folder) or "
            f"{run}/{PACKAGE_DIR}/{FILE_NAME} (a package)"
        )
    return RunFolders(run=run, eval=eval_dir, sweep=sweep, root=run, deployment=record)


# ---------------------------------------------------------------------------------------------
# The page


def write_report(
    run: str | Path,
    out: str | Path | None = None,
    sweep: str | Path | None = None,
    tensorboard: bool = True,
    deployment: str | Path | None = None,
) -> Path:
    """Write ``report.html``, ``report.md``, the figures and TensorBoard logs into ``out``
    (default ``RUN/report``). ``deployment``: the package folder whose deployment.json gives the
    deployment section (default ``RUN/package`` when it holds one). Returns the path of the HTML
    page."""
    where = locate(run, sweep, deployment)
    out = Path(out) if out is not None else where.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    # Figures of an earlier report that this one may not draw (no robustness study, no sweep).
    for stem in FIGURE_STEMS:
        for suffix in (".png", ".svg"):
            (out / f"{stem}{suffix}").unlink(missing_ok=True)
    drawn: dict[str, np.ndarray] = {}  # for TensorBoard
    scalars: dict[str, float] = {}
    sections: list[Section] = []
    report = None
    if where.eval is not None:
        report = EvalReport.load(where.eval / "report.json")
        sections += eval_sections(report, out, drawn)
    record = None
    if where.deployment is not None:
        try:
            record = DeploymentReport.load(where.deployment)
        except DeploymentRecordError as exn:
            if deployment is not None or where.eval is None:
                raise  # asked for, or all there is to report
            # Found by itself beside the run (an older vlcd's, say): the rest still reports.
            logger.warning("report: no deployment section: %s", exn)
    if record is not None:
        blocks = deployment_blocks(record, where.deployment, report)
        sections.append(Section("deployment", "Deployment", blocks))
        scalars.update(deployment_scalars(record))
    if where.sweep is not None:
        sections.append(sweep_section(where.sweep, out, drawn))
    stages = stages_table(where.root)
    if stages is not None:
        note = "From each stage's summary.json; the folders are relative to the run folder."
        sections.append(Section("stages", "Stages", [TableBlock(stages), Note(note)]))
    config = where.eval / "config.yaml" if where.eval is not None else None
    if config is not None and config.is_file():
        recipe = Details("The resolved recipe of the evaluation", str(config), config.read_text())
        sections.append(Section("recipe", "Recipe", [recipe]))

    title = f"VLCD report: {where.run.resolve().name}"
    md = markdown_page(title, str(where.run), sections)
    write_text(out / "report.md", md)
    html_path = out / "report.html"
    write_text(html_path, html_page(title, str(where.run.resolve()), sections, "report.md"))
    if tensorboard:
        _tensorboard(out / "tb", drawn, md, scalars)
    return html_path


def _figure(stem: str, image: np.ndarray, drawn: dict[str, np.ndarray], caption: str) -> Block:
    """The page's block of a figure just drawn, which also goes to TensorBoard."""
    drawn[f"report/{stem}"] = image
    return FigureBlock(f"{stem}.png", caption)


def eval_sections(report: EvalReport, out: Path, drawn: dict[str, np.ndarray]) -> list[Section]:
    """Linear-probe results, accuracy vs latency, robustness and zero-shot, with their figures
    drawn into ``out`` (and added to ``drawn`` for TensorBoard)."""
    from vlcd_dist.reporting.eval_files import eval_figures
    from vlcd_dist.reporting.figures import pareto_chart, save_figure

    images = eval_figures(report, out)
    results = Section(
        "results",
        "Linear-probe results",
        [
            summary_cards(report),
            TableBlock(eval_table(report)),
            Note(eval_notes(report)),
            _figure(
                "auc",
                images["auc"],
                drawn,
                "Test AUC-ROC per task and the mean, per model (linear probes).",
            ),
            _figure(
                "roc",
                images["roc"],
                drawn,
                "ROC curves of the linear probes on the test split, one panel per task.",
            ),
        ],
    )
    pareto = Section(
        "pareto",
        "Accuracy vs latency",
        [
            _figure(
                "pareto",
                save_figure(pareto_chart(report), out, "pareto"),
                drawn,
                "Mean test AUC against latency; the dashed staircase is the Pareto front.",
            ),
            Note(pareto_note(report)),
        ],
    )
    sections = [results]
    paired = paired_blocks(report)
    if paired:
        sections.append(Section("paired", "Students vs teacher (paired)", paired))
    sections.append(pareto)
    if report.degrade is not None:
        blocks = robustness_blocks(report)
        blocks.append(
            _figure(
                "robustness",
                images["robustness"],
                drawn,
                "Mean test AUC against corruption severity.",
            )
        )
        sections.append(Section("robustness", "Robustness to camera degradations", blocks))
    zero_shot = zero_shot_blocks(report)
    if zero_shot:
        sections.append(Section("zero-shot", "Zero-shot (text prompts)", zero_shot))
    return sections


def sweep_section(sweep_dir: Path, out: Path, drawn: dict[str, np.ndarray]) -> Section:
    """The sweep's table and chart, drawn again from its sweep.json."""
    from vlcd_dist.reporting.figures import save_figure
    from vlcd_dist.reporting.sweep import sweep_chart, sweep_notes, sweep_table

    summary = json.loads((sweep_dir / "sweep.json").read_text())
    blocks: list[Block] = [
        Note(f"Sweep folder {sweep_dir}. " + sweep_notes(summary)),
        TableBlock(sweep_table(summary)),
    ]
    fig = sweep_chart(summary)
    if fig is not None:
        blocks.append(
            _figure(
                "sweep",
                save_figure(fig, out, "sweep"),
                drawn,
                "Mean test AUC of each student against the swept value.",
            )
        )
    return Section("sweep", "Sweep", blocks)


def _tensorboard(
    folder: Path, drawn: dict[str, Any], md: str, scalars: dict[str, float] | None = None
) -> None:
    """The plots drawn here, the Markdown and ``scalars`` (step 0: the deployment figures,
    which no stage logs), in ``folder`` (replacing an earlier report's)."""
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
        tb.scalars(scalars or {}, 0)
    finally:
        tb.close()
