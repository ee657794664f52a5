"""The report's deployment section, from a package's deployment.json (vlcd_dist.deploy.record):
the typed record, its errors, and the section in report.md and report.html."""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import pytest
from helpers import run_cli, scalars
from test_report import AUC, TASKS, Cells, check_page, make_eval, make_report, markdown_cells

from vlcd_dist.deploy.record import (
    FORMAT,
    Aucs,
    DeployedModel,
    DeploymentRecordError,
    DeploymentReport,
    Intervals,
    LatencySetup,
    SizeOnDisk,
    TimmCheck,
    Verification,
)
from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.results import BootstrapSetup
from vlcd_dist.reporting.deploy_tables import (
    accuracy_table,
    int8_verdict,
    latency_table,
    per_task_table,
)
from vlcd_dist.reporting.page import write_report

# int8 minus fp32 per model and task: efficientnet_b0 loses 0.012 on fir, the most.
INT8_CHANGE = {
    "teacher": {"meconium": -0.002, "fir": -0.002, "mir": -0.002},
    "mobilenetv3_large_100": {"meconium": -0.005, "fir": -0.005, "mir": -0.005},
    "efficientnet_b0": {"meconium": 0.0, "fir": -0.012, "mir": 0.0},
    "efficientformer_l1": {"meconium": 0.001, "fir": 0.001, "mir": 0.001},
}
# Bytes on disk: PyTorch safetensors, ONNX fp32, ONNX int8.
SIZES = {
    "teacher": (343_260_000, 343_100_000, 87_400_000),
    "mobilenetv3_large_100": (17_050_000, 16_980_000, 4_520_000),
    "efficientnet_b0": (16_460_000, 16_300_000, 4_390_000),
    "efficientformer_l1": (48_300_000, 48_150_000, 12_410_000),
}
# ms at batch 1: {threads: (eager, onnx fp32, onnx int8)}.
LATENCY = {
    "teacher": {1: (95.0, 80.0, 40.0), 4: (30.0, 25.0, 14.0)},
    "mobilenetv3_large_100": {1: (9.8, 4.2, 2.1), 4: (4.0, 1.9, 1.2)},
    "efficientnet_b0": {1: (12.5, 6.0, 2.5), 4: (5.1, 2.4, 1.6)},
    "efficientformer_l1": {1: (21.0, 14.0, 8.0), 4: (8.8, 5.5, 3.3)},
}


def mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


def make_record(bootstrap: bool = True) -> DeploymentReport:
    """A deployment record as vlcd package writes it for the models of make_report(): the ONNX
    fp32 AUCs equal the eval's, int8 moves them by INT8_CHANGE."""
    models = {}
    for name, aucs in AUC.items():
        eval_auc = dict(zip(TASKS, aucs, strict=True))
        int8 = {t: round(a + INT8_CHANGE[name][t], 6) for t, a in eval_auc.items()}
        fp32_mean, int8_mean = mean(eval_auc), mean(int8)
        ci_fp32 = {t: (a - 0.05, a + 0.05) for t, a in eval_auc.items()}
        ci_int8 = {t: (a - 0.05, a + 0.05) for t, a in int8.items()}
        ci_fp32["mean"] = (fp32_mean - 0.03, fp32_mean + 0.03)
        ci_int8["mean"] = (int8_mean - 0.03, int8_mean + 0.03)
        if not bootstrap:
            ci_fp32 = dict.fromkeys(ci_fp32)
            ci_int8 = dict.fromkeys(ci_int8)
        models[name] = DeployedModel(
            kind="teacher" if name == "teacher" else "student",
            arch=name,
            params=5_300_000 if name != "teacher" else 86_000_000,
            folder=name,
            size_bytes=SizeOnDisk(*SIZES[name]),
            auc=Aucs(
                eval={**eval_auc, "mean": fp32_mean},
                fp32={**eval_auc, "mean": fp32_mean},
                int8={**int8, "mean": int8_mean},
            ),
            ci=Intervals(ci_fp32, ci_int8),
            latency_ms={
                t: dict(zip(("eager", "onnx_fp32", "onnx_int8"), ms, strict=True))
                for t, ms in LATENCY[name].items()
            },
            verify=Verification(3.2e-6, 0.021, 0.9968 if name != "efficientnet_b0" else 0.9931),
            timm=TimmCheck(plain=True, note=""),
        )
    return DeploymentReport(
        run="runs/demo",
        tasks=list(TASKS),
        zero_shot_tasks=list(TASKS),
        image_size=(96, 128),
        test_samples=8,
        bootstrap=BootstrapSetup(resamples=200 if bootstrap else 0, confidence=0.95),
        latency=LatencySetup(
            batch=1, threads=[1, 4], iters=50, cpu="AMD EPYC 7B13 64-Core Processor", cores=16
        ),
        models=models,
    )


def make_run(root: Path, record: DeploymentReport | None = None) -> Path:
    """A demo folder: eval/ from make_report() and, unless ``record`` is None, package/ with
    its deployment.json."""
    make_eval(root / "eval", make_report(zero_shot=True))
    if record is not None:
        (root / "package").mkdir()
        record.save(root / "package" / "deployment.json")
    return root


def html_table(tables: list[list[list[str]]], first_header: list[str]) -> list[list[str]]:
    """The table of the page whose column-name row (after any group row) is ``first_header``."""
    return next(t for t in tables if first_header in t[:2])


# ---------------------------------------------------------------------------------------------
# The record


def test_the_record_round_trips_through_deployment_json(tmp_path) -> None:
    record = make_record()
    record.models["teacher"].auc.int8["fir"] = math.nan  # an undefined AUC survives
    path = record.save(tmp_path / "deployment.json")
    assert [p.name for p in tmp_path.iterdir()] == ["deployment.json"]  # no temporary file left
    raw = json.loads(path.read_text())
    assert raw["format"] == FORMAT == "vlcd-deployment/1"
    assert raw["latency"] == {
        "batch": 1,
        "threads": [1, 4],
        "iters": 50,
        "cpu": "AMD EPYC 7B13 64-Core Processor",
        "cores": 16,
    }
    m = raw["models"]["efficientnet_b0"]
    assert m["size_bytes"] == {
        "pytorch": 16_460_000,
        "onnx_fp32": 16_300_000,
        "onnx_int8": 4_390_000,
    }
    assert m["latency_ms"]["4"] == {"eager": 5.1, "onnx_fp32": 2.4, "onnx_int8": 1.6}
    assert m["auc"]["int8"]["fir"] == 0.839 and m["ci"]["fp32"]["mir"] == pytest.approx(
        [0.862, 0.962]
    )
    assert m["timm"] == {"plain": True, "note": ""} and m["verify"]["fp32_max_diff"] == 3.2e-6
    back = DeploymentReport.load(path)
    assert json.dumps(back.to_json()) == json.dumps(record.to_json())  # NaN included
    assert back.models["efficientnet_b0"].latency_ms[1]["onnx_int8"] == 2.5
    assert back.models["efficientnet_b0"].int8_change("fir") == pytest.approx(-0.012)
    assert math.isnan(back.models["teacher"].auc.int8["fir"])
    assert back.image_size == (96, 128) and back.bootstrap.resamples == 200
    # Students first, the teacher (the reference) last.
    assert [n for n, _ in back.ordered()] == [*list(AUC)[1:], "teacher"]
    # Unknown keys (the lead may add some) are ignored.
    raw["models"]["teacher"]["provenance"] = {"git": "abc"}
    raw["extra"] = 1
    path.write_text(json.dumps(raw))
    assert DeploymentReport.load(path).models["teacher"].arch == "teacher"


@pytest.mark.parametrize(
    ("breaks", "says"),
    [
        (
            lambda d: d["models"]["efficientnet_b0"]["auc"]["int8"].pop("fir"),
            "field models.efficientnet_b0.auc.int8.fir is missing",
        ),
        (
            lambda d: d["models"]["teacher"]["latency_ms"].pop("4"),
            "field models.teacher.latency_ms.4 is missing",
        ),
        (
            lambda d: d["models"]["teacher"]["size_bytes"].update(onnx_int8="87 MB"),
            'field models.teacher.size_bytes.onnx_int8 is str "87 MB", not a whole number',
        ),
        (
            lambda d: d["models"]["teacher"]["ci"]["fp32"].update(mean=[0.7]),
            "field models.teacher.ci.fp32.mean is list [0.7], not [low, high] or null",
        ),
        (
            lambda d: d["latency"]["threads"].append("8"),
            'field latency.threads[2] is str "8", not a whole number',
        ),
        (lambda d: d.pop("test_samples"), "field test_samples is missing"),
        (lambda d: d.update(models=[]), "field models is list .*, not an object"),  # a regex
    ],
)
def test_a_broken_deployment_json_names_the_file_and_the_field(tmp_path, breaks, says) -> None:
    data = make_record().to_json()
    breaks(data)
    path = tmp_path / "package" / "deployment.json"
    path.parent.mkdir()
    path.write_text(json.dumps(data))
    rerun = f"rerun `vlcd package runs/demo --out {path.parent}` to rewrite it"
    message = re.escape(f"{path}: {says}; {rerun}")
    if "models is list" in says:
        message = re.escape(f"{path}: ") + says + re.escape(f"; {rerun}")
    with pytest.raises(DeploymentRecordError, match=f"^{message}$"):
        DeploymentReport.load(path)


def test_a_missing_unreadable_or_foreign_deployment_json_is_refused(tmp_path) -> None:
    path = tmp_path / "deployment.json"
    with pytest.raises(
        DeploymentRecordError,
        match=re.escape(
            f"{path}: no deployment record here; `vlcd package RUN --out {tmp_path}` writes it"
        ),
    ):
        DeploymentReport.load(path)
    path.write_text('{"format": "vlcd-deployment/1", ')
    with pytest.raises(
        DeploymentRecordError, match=re.escape(f"{path}: unreadable JSON (") + ".*; rerun `vlcd"
    ):
        DeploymentReport.load(path)
    path.write_text(json.dumps(dict(make_record().to_json(), format="vlcd-deployment/2")))
    with pytest.raises(
        DeploymentRecordError,
        match=r"not a deployment record this vlcd reads \(format 'vlcd-deployment/2'; expected "
        r"'vlcd-deployment/1'\); rerun `vlcd package runs/demo",
    ):
        DeploymentReport.load(path)
    path.write_text(json.dumps(make_report().to_json()))  # an eval report in its place
    with pytest.raises(DeploymentRecordError, match=r"format 'vlcd-eval-report'"):
        DeploymentReport.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(DeploymentRecordError, match=r"\(no format field; expected"):
        DeploymentReport.load(path)


# ---------------------------------------------------------------------------------------------
# The section


def test_the_deployment_section_shows_the_same_numbers_in_markdown_and_html(tmp_path) -> None:
    run = make_run(tmp_path / "run", make_record())
    (run / "distill").mkdir()
    (run / "distill" / "summary.json").write_text(json.dumps({"stage": "distill", "steps": 3}))
    page = write_report(run)
    text = html.unescape(check_page(page))
    md = (page.parent / "report.md").read_text()
    # After the evaluation sections, before the stages.
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Linear-probe results",
        "## Students vs teacher (paired)",
        "## Accuracy vs latency",
        "## Zero-shot (text prompts)",
        "## Deployment",
        "## Stages",
        "## Recipe",
    ]
    assert '<section id="deployment"><h2>Deployment</h2>' in text
    assert '<a href="#deployment">Deployment</a>' in text
    parser = Cells()
    parser.feed(text)

    # (a) accuracy and size: students first, the teacher last; the HTML's group row on top.
    short = ["model", "params (M)", "eval", "ONNX fp32", "95% CI", "ONNX int8", "95% CI"]
    short += ["int8 − fp32", "PyTorch", "ONNX fp32", "ONNX int8"]
    cells = html_table(parser.tables, short)
    assert cells[0] == ["", "mean test AUC", "size on disk (MB)"]
    assert cells[1] == short
    b0 = ["efficientnet_b0", "5.3", "0.789", "0.789", "0.759–0.819", "0.785", "0.755–0.815"]
    b0 += ["−0.004", "16.5", "16.3", "4.4"]
    assert cells[3] == b0
    assert cells[2][0] == "mobilenetv3_large_100" and cells[2][7] == "−0.005"
    assert cells[4][0] == "efficientformer_l1" and cells[4][7] == "+0.001"
    teacher = ["teacher", "86.0", "0.829", "0.829", "0.799–0.859", "0.827", "0.797–0.857"]
    teacher += ["−0.002", "343.3", "343.1", "87.4"]
    assert cells[5] == teacher and len(cells) == 6
    full = "| model | params (M) | mean AUC eval | mean AUC ONNX fp32 | fp32 95% CI |"
    full += " mean AUC ONNX int8 | int8 95% CI | int8 − fp32 | size PyTorch (MB) |"
    full += " size ONNX fp32 (MB) | size ONNX int8 (MB) |"
    assert markdown_cells(md, full)[1:] == cells[2:]
    # Bold: the best student of each AUC column (the teacher is the reference, never bold).
    assert (
        "| `mobilenetv3_large_100` | 5.3 | **0.801** | **0.801** | 0.771–0.831 | **0.796** |" in md
    )
    assert "| `efficientformer_l1` | 5.3 | 0.788 | 0.788 | 0.758–0.818 | 0.789 |" in md
    assert "| `teacher` | 86.0 | 0.829 | 0.829 |" in md

    # (b) latency at batch 1 with 1 and 4 threads.
    lat = ["model", "eager (ms)", "ONNX fp32 (ms)", "ONNX int8 (ms)", "int8 speed-up"]
    lat += lat[1:]
    cells = html_table(parser.tables, lat)
    assert cells[0] == ["", "1 thread", "4 threads"]
    assert cells[3] == [
        "efficientnet_b0",
        "12.5",
        "6.0",
        "2.5",
        "2.4x",
        "5.1",
        "2.4",
        "1.6",
        "1.5x",
    ]
    assert cells[5] == ["teacher", "95.0", "80.0", "40.0", "2.0x", "30.0", "25.0", "14.0", "1.8x"]
    full = "| model | 1 thread eager (ms) | 1 thread ONNX fp32 (ms) | 1 thread ONNX int8 (ms) |"
    full += " 1 thread int8 speed-up vs fp32 | 4 threads eager (ms) | 4 threads ONNX fp32 (ms) |"
    full += " 4 threads ONNX int8 (ms) | 4 threads int8 speed-up vs fp32 |"
    assert markdown_cells(md, full)[1:] == cells[2:]

    # (c) per task: fp32, int8 and the change, three rows a model.
    header = ["model", "test AUC", "meconium", "fir", "mir", "mean"]
    cells = html_table(parser.tables, header)
    assert cells[4:7] == [
        ["efficientnet_b0", "ONNX fp32", "0.603", "0.851", "0.912", "0.789"],
        ["", "ONNX int8", "0.603", "0.839", "0.912", "0.785"],
        ["", "int8 − fp32", "±0.000", "−0.012", "±0.000", "−0.004"],
    ]
    assert cells[10] == ["teacher", "ONNX fp32", "0.815", "0.833", "0.839", "0.829"]
    assert len(cells) == 1 + 3 * len(AUC)
    assert markdown_cells(md, "| model | test AUC | meconium | fir | mir | mean |") == cells
    assert "| `efficientnet_b0` | ONNX fp32 | 0.603 |" in md and "|  | ONNX int8 | 0.603 |" in md
    # In HTML a rule above each model's rows but the first.
    assert text.count('<tr class="break"><td><code>') == len(AUC) - 1
    assert '<tr class="break"><td><code>efficientnet_b0</code>' in text

    # The notes: the verdict and ratios computed from the figures, then the setup.
    verdict = (
        "Int8 keeps the AUC within the bootstrap intervals: the largest drop of a student's mean "
        "test AUC is 0.005 (mobilenetv3_large_100, 0.801 to 0.796), inside its fp32 95% "
        "interval 0.771–0.831. The largest drop on one task: 0.012 (efficientnet_b0, fir)."
    )
    ratios = (
        "Across the students: at 1 thread, ONNX int8 runs at 1.8x–2.4x the speed of ONNX fp32 "
        "and 2.6x–5.0x that of eager PyTorch; at 4 threads, ONNX int8 runs at 1.5x–1.7x the "
        "speed of ONNX fp32 and 2.7x–3.3x that of eager PyTorch; model.int8.onnx is 3.7x–3.9x "
        "smaller than model.onnx on disk."
    )
    assert f"{verdict}\n\n{ratios}\n" in md
    assert f'<p class="note">{verdict}</p>\n<p class="note">{ratios}</p>' in text
    setup = (
        "Latency: a batch of 1 at 1 and 4 threads on AMD EPYC 7B13 64-Core Processor (16 "
        "cores), 50 timed iterations per runtime; eager PyTorch, ONNX Runtime fp32 (model.onnx) "
        "and ONNX Runtime int8 (model.int8.onnx, static quantization) measured side by side in "
        "one run."
    )
    assert setup in md and setup in text
    assert f"From {run / 'package' / 'deployment.json'}, written by vlcd package." in md
    assert "(8 samples, 96x128 px); the intervals are a bootstrap over test samples (200 " in md
    checks = (
        "Checked against PyTorch on sample images (worst over the models): ONNX fp32 outputs "
        "within 3.2e-06; int8 probabilities within 0.021, embedding cosine at least 0.9931. ONNX "
        "fp32 reproduces the eval's test AUCs of the students within 0.0000. Every tower rebuilds in plain timm "
        "from its folder."
    )
    assert checks in md and "Caution" not in md

    # TensorBoard: the Markdown (with the section) and the figures as scalars.
    logged = scalars(page.parent / "tb")
    assert logged["deploy/efficientnet_b0/auc_fir_int8"] == [(0, pytest.approx(0.839))]
    assert logged["deploy/teacher/latency_ms_onnx_int8_4threads"] == [(0, 14.0)]
    assert logged["deploy/mobilenetv3_large_100/size_mb_onnx_int8"] == [(0, pytest.approx(4.52))]
    assert len([t for t in logged if t.startswith("deploy/")]) == 4 * (3 + 2 * 3 + 3 + 2 * 3)


def test_without_a_package_the_report_has_no_deployment_section(tmp_path) -> None:
    run = make_run(tmp_path / "run")
    page = write_report(run)
    md = (page.parent / "report.md").read_text()
    assert "Linear-probe results" in md and "Deployment" not in md and "int8" not in md
    assert "deployment" not in page.read_text().lower()
    assert not [t for t in scalars(page.parent / "tb") if t.startswith("deploy/")]
    # A package folder without deployment.json is no package either.
    (run / "package").mkdir()
    assert "Deployment" not in write_report(run, tensorboard=False).read_text()


def test_deployment_option_finds_a_package_elsewhere_or_says_what_is_wrong(
    tmp_path, capsys
) -> None:
    run = make_run(tmp_path / "run")
    elsewhere = tmp_path / "shipped"
    elsewhere.mkdir()
    make_record().save(elsewhere / "deployment.json")
    assert run_cli("report", run, "--deployment", elsewhere, "--no-tensorboard") == 0
    assert "## Deployment" in (run / "report" / "report.md").read_text()

    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("report", run, "--deployment", empty) == 2
    err = capsys.readouterr().err
    assert f"--deployment {empty} holds no deployment.json" in err
    assert "`vlcd package RUN --out DIR`" in err
    nowhere = tmp_path / "nowhere"
    with pytest.raises(VlcdError, match=re.escape(f"--deployment {nowhere} is not a folder")):
        write_report(run, deployment=tmp_path / "nowhere")

    # A broken record stops the report with the record's own message (file and field).
    data = make_record().to_json()
    del data["models"]["teacher"]["verify"]
    (elsewhere / "deployment.json").write_text(json.dumps(data))
    assert run_cli("report", run, "--deployment", elsewhere) == 2
    err = capsys.readouterr().err
    assert f"{elsewhere / 'deployment.json'}: field models.teacher.verify is missing" in err


def test_a_package_alone_is_reported_and_a_stale_one_is_flagged(tmp_path) -> None:
    package = tmp_path / "pkg"
    (package / "package").mkdir(parents=True)
    make_record().save(package / "package" / "deployment.json")
    md = (write_report(package, tensorboard=False).parent / "report.md").read_text()
    assert [line for line in md.splitlines() if line.startswith("## ")] == ["## Deployment"]

    # Packaged from another eval: its eval AUCs are not report.json's.
    record = make_record()
    record.models["efficientnet_b0"].auc.eval["mean"] = 0.75
    del record.models["teacher"]
    run = make_run(tmp_path / "run", record)
    md = (write_report(run, tensorboard=False).parent / "report.md").read_text()
    assert (
        "Caution: the package was not made from this run's eval (mean AUC eval: efficientnet_b0 "
        "0.750 in deployment.json, 0.789 in report.json). Rerun vlcd package" in md
    )


def test_the_verdict_follows_the_figures() -> None:
    record = make_record()
    # int8 lowers no student's mean.
    for name in ("mobilenetv3_large_100", "efficientnet_b0"):
        m = record.models[name]
        m.auc.int8 = dict(m.auc.fp32)
    assert int8_verdict(record) == (
        "Int8 keeps the AUC: no student's mean test AUC is lower in int8 than in fp32 (changes "
        "±0.000 to +0.001). No task's AUC is lower in int8."
    )
    # One student falls below its fp32 interval.
    m = record.models["efficientnet_b0"]
    m.auc.int8 = {k: v - 0.05 for k, v in m.auc.fp32.items()}
    assert int8_verdict(record).startswith(
        "Int8 does not keep the AUC of every student: efficientnet_b0 drops by 0.050 to 0.739, "
        "below its fp32 95% interval 0.759–0.819. The largest drop on one task: 0.050 "
        "(efficientnet_b0, "  # each of its tasks drops by 0.050
    )
    # Without a bootstrap only the numbers are given, and the tables show dashes.
    record = make_record(bootstrap=False)
    assert int8_verdict(record).startswith(
        "The largest drop of a student's mean test AUC in int8 is 0.005 (mobilenetv3_large_100); "
        "no bootstrap intervals were computed to judge it against."
    )
    assert accuracy_table(record).rows[0][4] == "–" and accuracy_table(record).rows[0][6] == "–"
    # A teacher-only package is judged as it is.
    del record.models["mobilenetv3_large_100"], record.models["efficientnet_b0"]
    del record.models["efficientformer_l1"]
    assert "a model's mean test AUC in int8 is 0.002 (teacher)" in int8_verdict(record)
    assert len(latency_table(record).rows) == 1 and len(per_task_table(record).rows) == 3


def test_demo_ends_with_the_package_and_the_html_report(tmp_path, tiny_recipe, monkeypatch, capsys):
    from vlcd_dist.pipelines import demo
    from vlcd_dist.reporting.eval_files import eval_markdown

    ran = []
    monkeypatch.setattr(demo, "run_stage", lambda stage, *a, **k: ran.append(stage))
    record = make_record()
    monkeypatch.setattr(
        demo, "package_models", lambda out, env: ran.append("package") or make_run(out, record)
    )
    assert demo.run_demo(tmp_path, nproc=1, config=tiny_recipe) == 0
    assert ran == ["train-teacher", "predistill", "distill", "eval", "package"]
    page = tmp_path / "report" / "report.html"
    printed = capsys.readouterr().out
    assert f"HTML report: {page}" in printed
    report = make_report(zero_shot=True)
    assert eval_markdown(report) in printed
    assert f"teacher mean test AUC: {report.models['teacher'].auc_mean:.3f}" in printed
    m = record.models["efficientnet_b0"]
    assert (
        f"  efficientnet_b0: test mean AUC ONNX fp32 {m.auc.fp32['mean']:.3f}, int8 "
        f"{m.auc.int8['mean']:.3f}; batch-1 ms at 1 thread(s): eager "
        f"{m.latency_ms[1]['eager']:.1f}"
    ) in printed
    text = check_page(page)
    assert "mobilenetv3_large_100" in text and "Deployment" in text


def test_demo_packages_again_only_when_the_eval_is_newer(tmp_path, monkeypatch, capsys) -> None:
    import os

    from vlcd_dist.pipelines import demo, launch

    calls = []
    monkeypatch.setattr(launch, "execute", lambda cmd, env: calls.append(cmd) or 0)
    make_run(tmp_path, make_record())
    report, record = tmp_path / "eval" / "report.json", tmp_path / "package" / "deployment.json"
    os.utime(report, (1_000, 1_000))
    os.utime(record, (2_000, 2_000))
    assert demo.package_models(tmp_path, {}) is False
    assert calls == []
    os.utime(report, (3_000, 3_000))
    assert demo.package_models(tmp_path, {}) is True
    assert calls[0][-4:] == ["package", str(tmp_path), "--out", str(tmp_path / "package")]
    monkeypatch.setattr(launch, "execute", lambda cmd, env: 1)
    with pytest.raises(VlcdError, match="vlcd package failed with exit status 1"):
        demo.package_models(tmp_path, {})


def test_a_broken_record_found_beside_the_run_leaves_out_the_section_only(tmp_path, caplog):
    run = make_run(tmp_path / "run", make_record())
    record = run / "package" / "deployment.json"
    record.write_text(json.dumps({"format": "vlcd-deployment/0"}))
    md = (write_report(run, tensorboard=False).parent / "report.md").read_text()
    assert "## Deployment" not in md and "## Linear-probe results" in md
    assert f"no deployment section: {record}" in caplog.text
    # Asked for by name, the same file is an error.
    with pytest.raises(VlcdError, match="vlcd-deployment/0"):
        write_report(run, tensorboard=False, deployment=run / "package")
