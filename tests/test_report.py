"""``vlcd report``: the HTML page and report.md of a run folder, from its eval report.json."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from vlcd_dist.errors import VlcdError
from vlcd_dist.reporting.figures import pareto_front, x_scale
from vlcd_dist.reporting.page import write_report

TASKS = ["meconium", "fir", "mir"]
AUC = {
    "teacher": [0.815, 0.833, 0.839],
    "mobilenetv3_large_100": [0.599, 0.927, 0.877],
    "efficientnet_b0": [0.603, 0.851, 0.912],
}
LATENCY = {"teacher": 45.7, "mobilenetv3_large_100": 16.0, "efficientnet_b0": 17.8}


def make_report(degrade: bool = False, zero_shot: bool = False) -> dict:
    """A report.json as ``vlcd eval`` writes it (with the optional robustness and zero-shot)."""
    models = {}
    for name, aucs in AUC.items():
        mean = float(np.mean(aucs))
        models[name] = {
            "kind": "teacher" if name == "teacher" else "student",
            "arch": name,
            "auc": dict(zip(TASKS, aucs, strict=True)),
            "auc_mean": mean,
            "ci": {"mean": [mean - 0.03, mean + 0.03], **{t: None for t in TASKS}},
            "params": 5_000_000,
            "latency_ms": LATENCY[name],
            "speedup": LATENCY["teacher"] / LATENCY[name],
            "delta_vs_teacher": mean - float(np.mean(AUC["teacher"])),
        }
    report = {
        "tasks": TASKS,
        "samples": {"train": 40, "test": 8},
        "image_size": [32, 32],
        "latency": {"batch": 1, "threads": 1, "device": "cpu"},
        "bootstrap": {"resamples": 20, "confidence": 0.95},
        "models": models,
    }
    if degrade:
        report["degrade"] = {
            "corruption": "tablet_camera",
            "severities": [1, 3],
            "models": {
                name: {
                    "tablet_camera": {
                        str(s): {
                            "auc": {t: a - 0.01 * s for t, a in zip(TASKS, aucs, strict=True)},
                            "auc_mean": float(np.mean(aucs)) - 0.01 * s,
                            "drop": -0.01 * s,  # auc_mean - clean, as evaluate.py writes it
                        }
                        for s in (1, 3)
                    }
                }
                for name, aucs in AUC.items()
            },
        }
    if zero_shot:
        report["zero_shot"] = {
            "prompts": {t: [f"<b>{t}</b> & stained", f"no {t}"] for t in TASKS},
            "models": {"teacher": {"auc": {t: 0.61 for t in TASKS}, "auc_mean": 0.61}},
        }
    return report


def make_eval(folder: Path, report: dict) -> Path:
    """An eval folder: report.json, config.yaml and the two plots of ``vlcd eval``."""
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "config.yaml").write_text("run: {out: <here>}\n")
    for png in ("auc.png", "roc.png"):
        Image.new("RGB", (40, 30), "white").save(folder / png)
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
    report["models"]["<img src=x onerror=alert(1)>"] = dict(report["models"]["efficientnet_b0"])
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


def test_demo_ends_with_the_html_report(tmp_path, tiny_recipe, monkeypatch, capsys) -> None:
    from vlcd_dist.pipelines import demo

    ran = []
    monkeypatch.setattr(demo, "run_stage", lambda stage, *a, **k: ran.append(stage))
    eval_dir = make_eval(tmp_path / "eval", make_report())
    (eval_dir / "report.md").write_text("| model |\n")
    assert demo.run_demo(tmp_path, nproc=1, config=tiny_recipe) == 0
    assert ran == ["train-teacher", "predistill", "distill", "eval"]
    page = tmp_path / "report" / "report.html"
    assert f"HTML report: {page}" in capsys.readouterr().out
    assert "mobilenetv3_large_100" in check_page(page)
