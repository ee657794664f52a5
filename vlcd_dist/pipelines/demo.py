"""``vlcd demo``: the whole method on the built-in data, one stage after another.

1. Writes the built-in shards when absent (synthetic placenta pairs; natural crops of the
   scikit-image photographs), at the built-in recipe's own data folders only; any other data
   folder the recipe names must exist.
2. Runs ``train-teacher`` (skipped for an open_clip / hf_clip teacher: ``--teacher`` or
   ``teacher.source``), ``predistill``, ``distill`` and ``eval`` with the demo recipe, each
   as its own ``accelerate launch`` of ``python -m vlcd_dist`` (or a plain process for one rank),
   exactly the commands a user would type; each stage's output folder feeds the next.
3. Packages every evaluated model for deployment (``vlcd package OUT``: ONNX fp32 and int8,
   the timm folder, the probes, a model card) into ``OUT/package/``.
4. Prints the report table and the fp32 vs int8 figures, writes the HTML report (``vlcd
   report``, with its deployment section) into ``OUT/report/`` and says where it and the
   TensorBoard logs are.

A stage whose output already holds a finished run of the same resolved recipe is not rerun, and
an interrupted stage continues from its newest checkpoint (``--resume``); the package is rebuilt
when the eval is newer than it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from vlcd_dist.config import builtin_recipe, load_config, resolve_recipe
from vlcd_dist.errors import VlcdError
from vlcd_dist.evaluation.results import EvalReport
from vlcd_dist.pipelines.builtin_data import ensure_builtin_shards
from vlcd_dist.pipelines.launch import default_nproc, run_stage, run_step, stage_env


def teacher_overrides(spec: str | None) -> list[str]:
    """The recipe keys of ``--teacher SOURCE:MODEL`` (open_clip:NAME-OR-FOLDER-OR-JSON, with
    hf-hub:org/name allowed, or hf_clip:FOLDER-OR-HUB-NAME); none for None."""
    if spec is None:
        return []
    source, _, model = spec.partition(":")
    if source not in ("open_clip", "hf_clip") or not model:
        raise VlcdError(
            f"--teacher {spec!r}: use open_clip:MODEL (a config name, hf-hub:org/name, a folder "
            "with open_clip_config.json or a model-config .json) or hf_clip:MODEL (a CLIPModel "
            "folder or hub name); see docs/teachers.md"
        )
    return [f"teacher.source={source}", f"teacher.{source}.model={model}"]


def _stage_plan(out: Path, foreign: bool = False) -> list[tuple[str, Path, list[str]]]:
    if foreign:
        # A foundation-model teacher is not trained: distill builds its text anchors.
        return [
            ("predistill", out / "predistill", []),
            ("distill", out / "distill", [f"distill.init_from={out / 'predistill'}"]),
            ("eval", out / "eval", [f"eval.students_from={out / 'distill'}"]),
        ]
    teacher = out / "teacher" / "export" / "teacher.safetensors"
    return [
        ("train-teacher", out / "teacher", []),
        ("predistill", out / "predistill", [f"teacher.checkpoint={teacher}"]),
        (
            "distill",
            out / "distill",
            [f"teacher.checkpoint={teacher}", f"distill.init_from={out / 'predistill'}"],
        ),
        (
            "eval",
            out / "eval",
            [f"teacher.checkpoint={teacher}", f"eval.students_from={out / 'distill'}"],
        ),
    ]


def run_demo(
    out: Path,
    nproc: int | None = None,
    config: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    teacher: str | None = None,
) -> int:
    """Run every stage on the built-in data, print the report and write the HTML report.
    ``teacher``: ``open_clip:MODEL`` or ``hf_clip:MODEL`` (:func:`teacher_overrides`) to distil
    from a foundation model instead (train-teacher is then skipped). Returns an exit status."""
    from vlcd_dist.reporting.eval_files import eval_markdown
    from vlcd_dist.reporting.page import write_report

    config = resolve_recipe(config) if config is not None else builtin_recipe("demo")
    out = Path(out)
    overrides = [*teacher_overrides(teacher), *overrides]
    cfg = load_config(config, overrides)
    foreign = cfg.teacher.source != "vlcd"
    ensure_builtin_shards(cfg)
    nproc = nproc or default_nproc()
    env = stage_env(nproc)
    started = time.perf_counter()
    print(f"==> vlcd demo: {nproc} rank(s), recipe {config}, output {out}", flush=True)
    if foreign:
        print(f"==> train-teacher: skipped (teacher.source={cfg.teacher.source})", flush=True)
    for stage, folder, extra in _stage_plan(out, foreign):
        run_stage(stage, folder, config, [*overrides, *extra], nproc, env)
    package_models(out, env)
    report_md = out / "eval" / "report.md"
    report = EvalReport.load(out / "eval" / "report.json")
    print()
    # Rendered from report.json, the eval stage's marker of a finished run, rather than read
    # from report.md, which the eval command writes after it.
    print(eval_markdown(report))
    _print_verdict(report)
    _print_deployment(out / "package")
    html = write_report(out)
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"report: {report_md} (and report.json, auc.png, roc.png and their SVGs beside it)")
    print(f"HTML report: {html} (open it in a browser; `vlcd report {out}` rewrites it)")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return 0


def package_models(out: Path, env: dict[str, str]) -> bool:
    """``vlcd package OUT`` into OUT/package (one process: it times models, so it runs alone),
    unless its deployment.json is newer than the eval's report.json. Returns whether it ran."""
    record = out / "package" / "deployment.json"
    report = out / "eval" / "report.json"
    if record.is_file() and record.stat().st_mtime >= report.stat().st_mtime:
        print(f"==> package: already done in {record.parent} (delete it to rerun)", flush=True)
        return False
    cmd = [sys.executable, "-m", "vlcd_dist", "package", str(out), "--out", str(record.parent)]
    failure = (
        "vlcd package failed with exit status {rc}; fix the cause above and rerun the demo (the "
        "finished stages are kept)"
    )
    print(f"==> package: done in {run_step('package', cmd, env, failure):.0f} s", flush=True)
    return True


def _print_deployment(folder: Path) -> None:
    from vlcd_dist.deploy.record import DeploymentReport

    record = DeploymentReport.load(folder / "deployment.json")
    print(f"packaged for deployment in {folder} (vlcd predict --model {folder}/NAME IMAGES...):")
    threads = record.latency.threads[0]
    for name, m in record.models.items():
        print(
            f"  {name}: test mean AUC ONNX fp32 {m.auc.fp32['mean']:.3f}, int8 "
            f"{m.auc.int8['mean']:.3f}; batch-1 ms at {threads} thread(s): eager "
            f"{m.latency_ms[threads]['eager']:.1f}, fp32 {m.latency_ms[threads]['onnx_fp32']:.1f}, "
            f"int8 {m.latency_ms[threads]['onnx_int8']:.1f}"
        )


def _print_verdict(report: EvalReport) -> None:
    teacher = report.models.get("teacher")
    if teacher is None:
        return
    print(f"teacher mean test AUC: {teacher.auc_mean:.3f}")
    for name, r in report.models.items():
        if r.kind == "student":
            speed = ", ".join(f"{v:.1f}x faster in {p}" for p, v in r.speedup.items())
            mean = r.vs_teacher["mean"]
            paired = f"{mean.delta:+.3f}"
            if mean.ci is not None:
                paired += f" [{mean.ci[0]:+.3f}, {mean.ci[1]:+.3f}]"
            verdicts = [r.vs_teacher[t].matches for t in report.tasks]
            known = [v for v in verdicts if v is not None]
            matches = f", matches it on {sum(known)}/{len(known)} tasks" if known else ""
            print(f"  {name}: {r.auc_mean:.3f} ({paired} vs teacher{matches}; {speed})")
