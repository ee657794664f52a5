"""``vlcd report``: the HTML page and report.md of a run folder, from its eval report.json."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.results import (
    BootstrapSetup,
    Degrade,
    DegradedResult,
    EvalReport,
    LatencySetup,
    ModelResult,
    Paired,
    Roc,
    Samples,
    ZeroShot,
    ZeroShotResult,
)
from vlcd_dist.reporting.eval_files import eval_markdown
from vlcd_dist.reporting.figures import DPI, pareto_chart, pareto_front, roc_grid, x_scale
from vlcd_dist.reporting.page import write_report

TASKS = ["meconium", "fir", "mir"]
AUC = {
    "teacher": [0.815, 0.833, 0.839],
    "mobilenetv3_large_100": [0.599, 0.927, 0.877],
    "efficientnet_b0": [0.603, 0.851, 0.912],
    "efficientformer_l1": [0.612, 0.848, 0.905],
}
# Two students close in both latency and AUC: their Pareto labels used to overlap.
LATENCY = {
    "teacher": 45.7,
    "mobilenetv3_large_100": 16.0,
    "efficientnet_b0": 17.8,
    "efficientformer_l1": 18.1,
}
# The same models timed in bf16 (under autocast): slower than fp32 here, as on many CPUs.
LATENCY_BF16 = {
    "teacher": 60.2,
    "mobilenetv3_large_100": 30.1,
    "efficientnet_b0": 20.0,
    "efficientformer_l1": 24.3,
}


def _roc(k: int) -> Roc:
    fpr = [0.0, 0.1 * k, 0.5, 1.0]
    return Roc(fpr, [0.0, 0.5, [0.8, 0.82, 0.84, 0.86][k], 1.0])


def make_report(degrade: bool = False, zero_shot: bool = False) -> EvalReport:
    """A report as ``vlcd eval`` builds it (with the optional robustness and zero-shot)."""
    teacher_mean = float(np.mean(AUC["teacher"]))
    models = {}
    for k, (name, aucs) in enumerate(AUC.items()):
        mean = float(np.mean(aucs))
        models[name] = ModelResult(
            kind="teacher" if name == "teacher" else "student",
            arch=name,
            auc=dict(zip(TASKS, aucs, strict=True)),
            auc_mean=mean,
            ci={"mean": (mean - 0.03, mean + 0.03), **{t: None for t in TASKS}},
            probe_c={t: 1.0 for t in TASKS},
            params=5_000_000,
            latency_ms={"fp32": LATENCY[name], "bf16": LATENCY_BF16[name]},
            roc={t: _roc(k) for t in TASKS},
            speedup={
                "fp32": LATENCY["teacher"] / LATENCY[name],
                "bf16": LATENCY_BF16["teacher"] / LATENCY_BF16[name],
            },
            val_auc={t: a - 0.02 for t, a in zip(TASKS, aucs, strict=True)},
            val_auc_mean=mean - 0.02,
            vs_teacher={}
            if name == "teacher"
            else {
                **{
                    t: Paired(a - b, (a - b - 0.05, a - b + 0.05))
                    for t, a, b in zip(TASKS, aucs, AUC["teacher"], strict=True)
                },
                "mean": Paired(
                    mean - teacher_mean, (mean - teacher_mean - 0.02, mean - teacher_mean + 0.02)
                ),
            },
            weights=f"{name}.safetensors",
        )
    report = EvalReport(
        tasks=TASKS,
        samples=Samples(train=32, val=8, test=8),
        image_size=(32, 32),
        latency=LatencySetup(batch=1, threads=1, precisions=["fp32", "bf16"]),
        bootstrap=BootstrapSetup(resamples=20, confidence=0.95),
        models=models,
    )
    if degrade:
        report.degrade = Degrade(
            corruptions=["tablet_camera"],
            severities=[1, 3],
            seed=0,
            models={
                name: {
                    "tablet_camera": {
                        s: DegradedResult(
                            auc={t: a - 0.01 * s for t, a in zip(TASKS, aucs, strict=True)},
                            auc_mean=float(np.mean(aucs)) - 0.01 * s,
                            drop=-0.01 * s,
                        )
                        for s in (1, 3)
                    }
                }
                for name, aucs in AUC.items()
            },
        )
    if zero_shot:
        report.zero_shot = ZeroShot(
            tasks=TASKS,
            prompts={
                t: ([f"<b>{t}</b> & stained", f"{t}, e.g. green"], [f"clear {t}"]) for t in TASKS
            },
            models={"teacher": ZeroShotResult({t: 0.61 for t in TASKS}, 0.61)},
        )
    return report


def make_eval(folder: Path, report: EvalReport) -> Path:
    """An eval folder as the eval stage leaves it: report.json and config.yaml."""
    folder.mkdir(parents=True)
    report.save(folder / "report.json")
    (folder / "config.yaml").write_text("run: {out: <here>}\n")
    return folder


class Refs(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]


def check_page(page: Path) -> str:
    """The page's text, after checking that each file it references exists beside it."""
    text = page.read_text()
    parser = Refs()
    parser.feed(text)
    files = [r for r in parser.refs if not r.startswith("#")]
    assert files, "the page shows no image"
    for ref in files:
        assert "://" not in ref and not ref.startswith("/"), ref
        assert (page.parent / ref).is_file(), f"{ref} is referenced but missing"
    return text


def test_report_of_a_demo_folder_without_degrade_or_sweep(tmp_path) -> None:
    run = tmp_path / "run"
    make_eval(run / "eval", make_report())
    (run / "distill").mkdir()
    (run / "distill" / "summary.json").write_text(
        json.dumps({"stage": "distill", "steps": 3, "samples": 12, "trainees": ["a", "b"]})
    )
    page = write_report(run)
    assert page == run / "report" / "report.html"
    text = check_page(page)
    for name, aucs in AUC.items():
        assert name in text
        assert all(f"{a:.3f}" in text for a in aucs)
        assert f"{np.mean(aucs):.3f}" in text
    assert 'src="pareto.png"' in text and 'src="roc.png"' in text and 'src="auc.png"' in text
    # Drawn from report.json alone (the eval folder holds no image), each with its SVG.
    for stem in ("auc", "roc", "pareto"):
        assert (page.parent / f"{stem}.png").stat().st_size > 5000
        assert "mobilenetv3_large_100" in (page.parent / f"{stem}.svg").read_text()
    assert "robustness" not in text.lower() and "Sweep" not in text and "Zero-shot" not in text
    assert not (page.parent / "robustness.png").exists()
    assert "<style>" in text and "<script" not in text
    md = (page.parent / "report.md").read_text()
    assert "| `efficientnet_b0` |" in md and "0.912" in md and "](pareto.png)" in md
    assert "| distill |" in md  # the stages table from summary.json
    # The new plots are in TensorBoard too.
    assert list((page.parent / "tb").glob("events.out.tfevents.*"))


def test_report_of_an_eval_folder_with_degrade_and_zero_shot(tmp_path) -> None:
    report = make_report(degrade=True, zero_shot=True)
    report.models["<img src=x onerror=alert(1)>"] = report.models["efficientnet_b0"]
    folder = make_eval(tmp_path / "eval", report)
    assert run_cli("report", folder, "--no-tensorboard") == 0
    page = folder / "report" / "report.html"
    text = check_page(page)
    # Robustness: a table (mean AUC and the drop per severity) and curves drawn from the data.
    assert "tablet_camera" in text and "severity 3" in text and 'src="robustness.png"' in text
    teacher_mean = float(np.mean(AUC["teacher"]))
    assert f"{teacher_mean - 0.03:.3f} (−0.030)" in text
    # Zero-shot: the AUC table and the prompts, escaped.
    assert "Zero-shot" in text and "0.610" in text
    assert "&lt;b&gt;fir&lt;/b&gt; &amp; stained" in text and "<b>fir</b>" not in text
    assert "fir, e.g. green" in text and "clear fir" in text  # every prompt of a side
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert not (page.parent / "tb").exists()


def test_report_includes_a_sweep_and_refuses_an_empty_folder(tmp_path, capsys) -> None:
    from vlcd_dist.reporting.sweep import write_outputs

    run = tmp_path / "run"
    make_eval(run / "eval", make_report())
    summary = {
        "recipe": "tiny.yaml",
        "overrides": [],
        "grid": [{"key": "loss.distill_lambda", "values": ["0", "1"]}],
        "teacher": "t",
        "predistill": "p",
        "tasks": TASKS,
        "students": ["s1"],
        "degrade": None,
        "points": [
            {
                "name": f"distill_lambda-{v}",
                "values": {"loss.distill_lambda": v},
                "overrides": [],
                "report": f"distill_lambda-{v}/eval/report.json",
                "auc_mean": {"s1": a},
                "teacher_auc_mean": 0.8,
            }
            for v, a in (("0", 0.701), ("1", 0.745))
        ],
    }
    write_outputs(run / "sweep", summary)
    text = check_page(write_report(run, tensorboard=False))
    assert 'src="sweep.png"' in text and "0.701" in text and "0.745" in text

    (tmp_path / "empty").mkdir()
    with pytest.raises(VlcdError, match="nothing to report"):
        write_report(tmp_path / "empty")
    assert run_cli("report", tmp_path / "missing") == 2
    assert "not a folder" in capsys.readouterr().err


def test_pareto_front_and_x_scale() -> None:
    # (latency, AUC): the fast one and the accurate one are on the front, the slow worse one not.
    assert pareto_front([16.0, 45.7, 20.0, float("nan")], [0.79, 0.82, 0.70, 0.9]) == [
        True,
        True,
        False,
        False,
    ]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # ties dominate nobody
    assert x_scale([0, 0.01, 0.1, 1, 10]) == "log0"
    assert x_scale([0.01, 1]) == "log"
    assert x_scale([0, 1]) == "linear"


def test_the_typed_report_round_trips_through_report_json(tmp_path) -> None:
    report = make_report(degrade=True, zero_shot=True)
    report.models["teacher"].auc["fir"] = float("nan")  # a task without positives
    report.degrade.models["teacher"]["tablet_camera"][3].zero_shot = ZeroShotResult(
        {t: 0.55 for t in TASKS}, 0.55
    )
    path = report.save(tmp_path / "report.json")
    raw = json.loads(path.read_text())
    assert raw["format"] == "vlcd-eval-report" and raw["version"] == 4
    assert raw["zero_shot"]["prompts"]["fir"] == {
        "positive": ["<b>fir</b> & stained", "fir, e.g. green"],
        "negative": ["clear fir"],
    }
    # One spelling of the robustness study: a list of corruptions, integer severities.
    assert raw["degrade"]["corruptions"] == ["tablet_camera"] and "corruption" not in raw["degrade"]
    assert raw["degrade"]["severities"] == [1, 3]
    assert raw["models"]["efficientnet_b0"]["roc"]["mir"] == {
        "fpr": [0.0, 0.2, 0.5, 1.0],
        "tpr": [0.0, 0.5, 0.84, 1.0],
    }
    back = EvalReport.load(path)
    assert json.dumps(back.to_json()) == json.dumps(report.to_json())  # NaN included
    assert np.isnan(back.models["teacher"].auc["fir"])
    assert back.degrade.models["teacher"]["tablet_camera"][3].zero_shot.auc_mean == 0.55
    assert back.degrade.models["efficientnet_b0"]["tablet_camera"][1].drop == -0.01
    assert back.models["teacher"].ci["mean"] == report.models["teacher"].ci["mean"]
    assert back.zero_shot.prompts["fir"] == (
        ["<b>fir</b> & stained", "fir, e.g. green"],
        ["clear fir"],
    )
    assert back.degraded_mean("teacher") == pytest.approx(float(np.mean(AUC["teacher"])) - 0.02)
    assert back.robustness_curves()["tablet_camera"]["teacher"][0] == (
        0,
        report.models["teacher"].auc_mean,
    )


def test_an_old_or_broken_report_json_names_the_file_and_says_to_rerun(tmp_path) -> None:
    old = tmp_path / "old" / "report.json"
    old.parent.mkdir()
    old.write_text(json.dumps({"tasks": TASKS, "models": {}}))  # what vlcd eval wrote before
    with pytest.raises(
        VlcdError,
        match=rf"{old}: not an eval report .*rerun the eval \(`vlcd eval --config RECIPE --out "
        rf"{old.parent}`, or the demo or sweep that made it\)",
    ):
        EvalReport.load(old)
    # Version 3: no validation split, no paired intervals.
    older = dict(make_report().to_json(), version=3)
    (tmp_path / "report.json").write_text(json.dumps(older))
    with pytest.raises(VlcdError, match=r"eval report version 3, this vlcd reads version 4; rerun"):
        EvalReport.load(tmp_path / "report.json")
    broken = make_report().to_json()
    del broken["models"]["teacher"]["roc"]
    (tmp_path / "report.json").write_text(json.dumps(broken))
    with pytest.raises(VlcdError, match=r"malformed eval report \(KeyError\('roc'\)\)"):
        EvalReport.load(tmp_path / "report.json")
    with pytest.raises(VlcdError, match="not an eval report"):
        write_report(old.parent)


class Cells(HTMLParser):
    """The cell texts of each <table> of a page, row by row (header rows included)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def markdown_cells(md: str, first_line: str) -> list[list[str]]:
    """The cells of the Markdown table starting at the line ``first_line``, without the
    separator row and with the code and bold marks taken off."""
    lines = md.splitlines()
    start = lines.index(first_line)
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if set(line) <= set("|-:"):
            continue  # the alignment row
        rows.append([c.strip().strip("*").strip("`") for c in line.strip("|").split(" | ")])
    return rows


def test_markdown_and_html_tables_show_the_same_cells(tmp_path) -> None:
    from vlcd_dist.reporting.eval_tables import eval_table

    report = make_report(degrade=True, zero_shot=True)
    page = write_report(make_eval(tmp_path / "eval", report), tensorboard=False)
    parser = Cells()
    parser.feed(page.read_text())
    table = eval_table(report)
    header = "| " + " | ".join(table.header) + " |"
    html_rows = parser.tables[0]
    assert html_rows == [table.header, *table.rows]
    assert len(html_rows) == 1 + len(AUC) and html_rows[1][1] == "0.815"
    for md in ((page.parent / "report.md").read_text(), eval_markdown(report)):
        assert markdown_cells(md, header) == html_rows
    # The robustness table too, in the page and in the eval folder's report.md.
    robust_html = next(t for t in parser.tables if t[0][:2] == ["model", "clean"])
    md = eval_markdown(report)
    robust_md = markdown_cells(md, "| model | clean | severity 1 | severity 3 |")
    assert robust_md == robust_html and robust_md[1][3] == "0.799 (−0.030)"


def test_figures_are_png_with_an_svg_beside_each_and_names_whole(tmp_path) -> None:

    from vlcd_dist.reporting.eval_files import write_eval_outputs

    report = make_report(degrade=True)
    out = make_eval(tmp_path / "eval", report)
    write_eval_outputs(out, report, tensorboard=True)
    md = (out / "report.md").read_text()
    assert md.startswith("| model | meconium | fir | mir | mean AUC | 95% CI |")
    assert "### Robustness: tablet_camera" in md and "| `efficientformer_l1` |" in md
    sizes = {}
    for stem in ("auc", "roc", "robustness"):
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        with Image.open(png) as image:
            assert image.format == "PNG" and image.mode in ("RGB", "RGBA")
            sizes[stem] = image.size
        assert min(sizes[stem]) >= 300 and png.stat().st_size > 5000
        text = svg.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text
        # Text stays text in the SVG, so each long model name can be found whole.
        assert all(name in text for name in AUC), stem
    # Inches x DPI: 4 bar groups (3 tasks and the mean); 3 ROC panels in a row, 2 legend rows.
    assert sizes == {"auc": (790, 420), "roc": (1000, 400), "robustness": (850, 440)}
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_pareto_labels_and_legends_overlap_nothing() -> None:
    fig = pareto_chart(make_report())
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text().split()[0] for t in labels) == sorted(AUC)
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        assert ax.bbox.contains(a.x0, a.y0) and ax.bbox.contains(a.x1, a.y1)
        for b in boxes[i + 1 :]:
            assert not a.overlaps(b), (a, b)
    # The legends lie inside the image, outside the plot, with every name in full.
    for f in (fig, roc_grid(make_report())):
        f.canvas.draw()
        legend = f.legends[0]
        box = legend.get_window_extent(f.canvas.get_renderer())
        width, height = f.get_size_inches() * DPI
        assert 0 <= box.x0 and box.x1 <= width and 0 <= box.y0 and box.y1 <= height
        assert [t.get_text() for t in legend.get_texts()][: len(AUC)] == list(AUC)
        assert not any(box.overlaps(a.bbox) for a in f.axes if a.get_visible())


def test_pareto_labels_clear_every_error_bar_marker_and_line_of_a_crowded_plot() -> None:
    # The fresh-clone demo's figures: three students within 5 ms of each other, long names.
    report = make_report()
    demo = {
        "teacher": (22.3, 0.822, (0.791, 0.849)),
        "mobilenetv3_large_100": (4.7, 0.790, (0.764, 0.815)),
        "efficientnet_b0": (5.7, 0.766, (0.737, 0.793)),
        "efficientformer_l1": (9.2, 0.802, (0.771, 0.830)),
    }
    for name, (latency, mean, ci) in demo.items():
        model = report.models[name]
        model.latency_ms["fp32"], model.auc_mean, model.ci["mean"] = latency, mean, ci
    fig = pareto_chart(report)
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    drawn = []  # pixel boxes of every segment, marker and cap in the plot
    for line in ax.lines:
        xy = ax.transData.transform(np.column_stack(line.get_data()))
        if len(xy) > 1:
            drawn += [
                Bbox([np.minimum(a, b), np.maximum(a, b)]) for a, b in zip(xy, xy[1:], strict=False)
            ]
        elif line.get_marker() not in (None, "None", ""):
            drawn.append(line.get_window_extent(renderer))
    for collection in ax.collections:
        for seg in collection.get_segments():
            a, b = ax.transData.transform(np.asarray(seg))
            drawn.append(Bbox([np.minimum(a, b), np.maximum(a, b)]))
    labels = [t for t in ax.texts if t.get_text()]
    assert len(labels) == len(demo)
    texts = []
    for label in labels:
        label.update_positions(renderer)
        texts.append(Text.get_window_extent(label, renderer))  # the text, not its leader line
    for i, box in enumerate(texts):
        hit = [d for d in drawn if Bbox.intersection(box, d) is not None]
        assert not hit, (labels[i].get_text(), box, hit)
        assert not any(box.overlaps(other) for other in texts[i + 1 :])


def test_latency_and_speed_up_are_reported_per_precision() -> None:
    from vlcd_dist.reporting.eval_tables import eval_notes, eval_table

    report = make_report()
    report.models["efficientformer_l1"].resizes_to = (224, 224)
    table = eval_table(report)
    columns = ["latency fp32 (ms)", "speed-up fp32", "latency bf16 (ms)", "speed-up bf16"]
    assert table.header[-4:] == columns
    rows = {row[0]: row[-4:] for row in table.rows}
    # Each speed-up is the teacher's time over the model's in the same precision.
    assert rows["mobilenetv3_large_100"] == ["16.0", "2.9x", "30.1", "2.0x"]
    assert rows["teacher"] == ["45.7", "1.0x", "60.2", "1.0x"]
    notes = eval_notes(report)
    assert "every model timed in each precision alike (fp32, bf16 under autocast)" in notes
    assert "Resized inside the model, and timed so: efficientformer_l1 to 224x224." in notes
    back = EvalReport.from_json(json.loads(json.dumps(report.to_json())))
    assert back.models["efficientformer_l1"].resizes_to == (224, 224)
    assert back.models["efficientnet_b0"].speedup == report.models["efficientnet_b0"].speedup
    assert back.latency.precisions == ["fp32", "bf16"]


def test_paired_comparison_table_marks_where_a_student_matches_the_teacher(tmp_path) -> None:
    from vlcd_dist.reporting.eval_tables import paired_table

    report = make_report()
    table = paired_table(report)
    students = ["mobilenetv3_large_100", "efficientnet_b0", "efficientformer_l1"]
    assert table.header == ["task", *students]
    assert [row[0] for row in table.rows] == [*TASKS, "mean", "matches on"]
    col = {name: [row[i + 1] for row in table.rows] for i, name in enumerate(students)}
    # meconium: 0.599 - 0.815 = -0.216, interval +-0.05 below 0; fir: +0.094, above 0.
    assert col["mobilenetv3_large_100"][0] == "-0.216 [-0.266, -0.166]"
    assert col["mobilenetv3_large_100"][1] == "+0.094 [+0.044, +0.144] ✓"
    # 0.877 - 0.839 = +0.038: its interval [-0.012, +0.088] contains 0, a match.
    assert col["mobilenetv3_large_100"][2] == "+0.038 [-0.012, +0.088] ✓"
    assert col["mobilenetv3_large_100"][-1] == "2/3 tasks"
    # The HTML page and report.md show the section with the same cells.
    run = tmp_path / "run"
    make_eval(run / "eval", report)
    text = check_page(write_report(run))
    assert "Students vs teacher (paired)" in text and "+0.094 [+0.044, +0.144] ✓" in text
    md = (run / "report" / "report.md").read_text()
    assert "| meconium | -0.216 [-0.266, -0.166] | " in md
    # Without a teacher there is nothing to pair with.
    del report.models["teacher"]
    for r in report.models.values():
        r.vs_teacher = {}
    assert paired_table(report) is None
