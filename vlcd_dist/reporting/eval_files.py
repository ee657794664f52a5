"""The files ``vlcd eval`` writes from its report, after the stage: report.md, the figures
(auc, roc and, with ``--degrade``, robustness; PNG and SVG) and TensorBoard's images and text.

The eval stage (:mod:`vlcd_dist.train.eval_stage`) writes config.yaml and the TensorBoard
scalars, then calls :func:`write_eval_outputs` on rank 0 (the ``eval`` command hands it over, so
the harness never imports the reporting code), then writes report.json, its finish marker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlcd_dist.evaluation.results import EvalReport
from vlcd_dist.io import write_text
from vlcd_dist.reporting.document import markdown_blocks
from vlcd_dist.reporting.eval_tables import eval_blocks
from vlcd_dist.reporting.figures import auc_bars, robustness_chart, roc_grid, save_figure


def eval_markdown(report: EvalReport) -> str:
    """report.md of an eval folder."""
    return markdown_blocks(eval_blocks(report))


def eval_figures(report: EvalReport, folder: Path) -> dict[str, np.ndarray]:
    """auc, roc and (with a robustness study) robustness as PNG and SVG in ``folder``;
    returns {file stem: PNG pixels}. A robustness figure of an earlier report is removed."""
    images = {
        "auc": save_figure(auc_bars(report), folder, "auc"),
        "roc": save_figure(roc_grid(report), folder, "roc"),
    }
    for suffix in (".png", ".svg"):
        (folder / f"robustness{suffix}").unlink(missing_ok=True)
    if report.degrade is not None:
        images["robustness"] = save_figure(robustness_chart(report), folder, "robustness")
    return images


# The TensorBoard tags of the eval figures, as vlcd eval has always named them.
TB_TAGS = {"auc": "eval/auc_bars", "roc": "eval/roc_curves", "robustness": "eval/robustness"}


def write_eval_outputs(out: str | Path, report: EvalReport, tensorboard: bool = True) -> None:
    """report.md, the figures and TensorBoard images and text in ``out`` (beside the stage's
    report.json and config.yaml)."""
    out = Path(out)
    markdown = eval_markdown(report)
    write_text(out / "report.md", markdown)
    images = eval_figures(report, out)
    if not tensorboard:
        return
    from vlcd_dist.train.logging import TBLogger

    config = out / "config.yaml"
    tb = TBLogger(out / "tb", True)
    try:
        for stem, image in images.items():
            tb.image(TB_TAGS[stem], image)
        tb.text("eval/report", markdown)
        if config.is_file():
            tb.text("config", "```yaml\n" + config.read_text() + "\n```")
    finally:
        tb.close()
