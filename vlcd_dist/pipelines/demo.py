"""``vlcd demo``: the whole method on the built-in data, one stage after another.

1. Writes the built-in shards when absent (synthetic placenta pairs; natural crops of the
   scikit-image photographs), at the built-in recipe's own data folders only; any other data
   folder the recipe names must exist.
2. Runs ``train-teacher``, ``predistill``, ``distill`` and ``eval`` with the demo recipe, each
   as its own ``accelerate launch`` of ``python -m vlcd_dist`` (or a plain process for one rank),
   exactly the commands a user would type; each stage's output folder feeds the next.
3. Prints the report table, writes the HTML report (``vlcd report``) into ``OUT/report/`` and
   says where it and the TensorBoard logs are.

A stage whose output already holds a finished run of the same resolved recipe is not rerun, and
an interrupted stage continues from its newest checkpoint (``--resume``).
"""

from __future__ import annotations

import time
from pathlib import Path

from vlcd_dist.config import builtin_recipe, load_config, resolve_recipe
from vlcd_dist.evaluation.results import EvalReport
from vlcd_dist.pipelines.builtin_data import ensure_builtin_shards
from vlcd_dist.pipelines.launch import default_nproc, run_stage, stage_env


def _stage_plan(out: Path) -> list[tuple[str, Path, list[str]]]:
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
) -> int:
    """Run every stage on the built-in data, print the report and write the HTML report.
    Returns an exit status."""
    from vlcd_dist.reporting.eval_files import eval_markdown
    from vlcd_dist.reporting.page import write_report

    config = resolve_recipe(config) if config is not None else builtin_recipe("demo")
    out = Path(out)
    cfg = load_config(config, overrides)
    ensure_builtin_shards(cfg)
    nproc = nproc or default_nproc()
    env = stage_env(nproc)
    started = time.perf_counter()
    print(f"==> vlcd demo: {nproc} rank(s), recipe {config}, output {out}", flush=True)
    for stage, folder, extra in _stage_plan(out):
        run_stage(stage, folder, config, [*overrides, *extra], nproc, env)
    report_md = out / "eval" / "report.md"
    report = EvalReport.load(out / "eval" / "report.json")
    print()
    # Rendered from report.json, the eval stage's marker of a finished run, rather than read
    # from report.md, which the eval command writes after it.
    print(eval_markdown(report))
    _print_verdict(report)
    html = write_report(out)
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"report: {report_md} (and report.json, auc.png, roc.png and their SVGs beside it)")
    print(f"HTML report: {html} (open it in a browser; `vlcd report {out}` rewrites it)")
    print(f"TensorBoard: tensorboard --logdir {out}")
    return 0


def _print_verdict(report: EvalReport) -> None:
    teacher = report.models.get("teacher")
    if teacher is None:
        return
    print(f"teacher mean test AUC: {teacher.auc_mean:.3f}")
    for name, r in report.models.items():
        if r.kind == "student":
            delta = r.auc_mean - teacher.auc_mean
            speed = ", ".join(f"{v:.1f}x faster in {p}" for p, v in r.speedup.items())
            print(f"  {name}: {r.auc_mean:.3f} ({delta:+.3f} vs teacher, {speed})")
