"""The training subcommands of ``vlcd``: train-teacher, predistill, distill, eval, demo, sweep
and report.

Each parses its options, loads the recipe, builds the stage and runs it; the work lives in
:mod:`vlcd_dist.train`. Under several processes, launch them with
``accelerate launch [--multi_gpu --num_processes N] -m vlcd_dist <stage> ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlcd_dist.argtypes import positive_int

STAGES = {
    "train-teacher": "stage 0: contrastive (CLIP loss) pretraining of the teacher on placenta "
    "shards, then its text-anchor cache",
    "predistill": "stage 1: unsupervised predistillation of every student at once on "
    "natural-image shards",
    "distill": "stage 2: VLCD of every student at once on placenta shards (students start from "
    "distill.init_from or students.N.init_from when given)",
    "eval": "linear probes (AUC per task, bootstrap CI), zero-shot AUCs (eval.zero_shot_prompts), "
    "robustness to camera degradations (--degrade), size and CPU latency of the teacher and "
    "every student; report.json, report.md, TensorBoard",
}


def _recipe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML recipe, e.g. configs/demo.yaml (default: the built-in defaults)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (sets run.out)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field, e.g. --set optim.lr=3e-4 (repeatable)",
    )


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the stage subcommands and ``demo`` on the ``vlcd`` parser."""
    for name, text in STAGES.items():
        p = sub.add_parser(
            name,
            help=text,
            description=f"{text}. On several processes: accelerate launch -m vlcd_dist {name} ...",
        )
        _recipe_options(p)
        if name != "eval":
            p.add_argument(
                "--resume",
                action="store_true",
                help="continue from the newest complete checkpoint under OUT/checkpoints",
            )
            p.add_argument(
                "--backend",
                choices=("accelerate", "deepspeed"),
                default=None,
                help="engine of the trained models (sets run.backend): accelerate (DDP, the "
                "default) or deepspeed (ZeRO stage from run.zero_stage or run.deepspeed_config, "
                "e.g. --set run.deepspeed_config=launchers/deepspeed/zero2.json)",
            )
        else:
            p.add_argument(
                "--degrade",
                nargs="?",
                const="",
                default=None,
                metavar="CORRUPTIONS",
                help="also evaluate on the test split corrupted at eval.degrade.severities; "
                "optionally a comma-separated list of corruptions (default: "
                "eval.degrade.corruptions, e.g. tablet_camera)",
            )
        p.set_defaults(func=cmd_stage)

    demo = sub.add_parser(
        "demo",
        help="the whole method on the built-in data, with a report at the end",
        description="Writes the built-in shards if absent, then runs train-teacher, predistill, "
        "distill and eval with configs/demo.yaml (the paper's architectures at a CPU-sized "
        "resolution), each under `accelerate launch` when --nproc > 1, and prints the report.",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    demo.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        help="processes (ranks); default: the GPU count, else 2 when 2 CPUs are present",
    )
    demo.add_argument(
        "--config", type=Path, default=None, help="recipe (default: configs/demo.yaml)"
    )
    demo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field in every stage (repeatable)",
    )
    demo.set_defaults(func=cmd_demo)

    sweep = sub.add_parser(
        "sweep",
        help="one distill (every student) + eval per point of a grid of recipe values; a "
        "table and a plot of mean AUC per point",
        description="Runs distill and eval for every point of the cartesian product of the "
        "--grid axes, each in OUT/<point>/, after training the teacher and the predistillation "
        "once (unless the recipe or --from gives them). A finished point is not rerun; an "
        "interrupted one resumes. Writes OUT/sweep.json, sweep.md, sweep.png and OUT/tb.",
        epilog="example: vlcd sweep --config configs/demo.yaml --out runs/sweep "
        "--grid loss.distill_lambda=0,0.01,0.1,1,10 --grid distill.init=predistilled,scratch",
    )
    sweep.add_argument("--config", type=Path, required=True, help="YAML recipe")
    sweep.add_argument("--out", type=Path, required=True, help="output folder of the sweep")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2,...",
        help="an axis: a recipe field and its values (YAML; brackets keep a list's commas), "
        "or distill.init=predistilled,scratch (with/without predistillation); repeatable, "
        "the points are the cartesian product",
    )
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field in every stage of every point (repeatable)",
    )
    sweep.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="RUN",
        help="reuse RUN/teacher and RUN/predistill (e.g. a vlcd demo folder) instead of "
        "training them in OUT",
    )
    sweep.add_argument(
        "--degrade",
        nargs="?",
        const="",
        default=None,
        metavar="CORRUPTIONS",
        help="every eval also runs the robustness study (as vlcd eval --degrade); the table "
        "gets degraded mean AUCs",
    )
    sweep.add_argument(
        "--nproc",
        type=positive_int,
        default=None,
        help="processes (ranks) per stage; default: the GPU count, else 2 when 2 CPUs are present",
    )
    sweep.add_argument(
        "--dry-run", action="store_true", help="print the points and their overrides, run nothing"
    )
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser(
        "report",
        help="one HTML page (and report.md) with the tables and plots of a run",
        description="Gathers the eval table, ROC curves, AUC bars, an accuracy-latency plot "
        "with its Pareto front, the robustness study and zero-shot table (when evaluated), the "
        "lambda sweep (OUT/sweep or --sweep) and the stages of a run folder into "
        "OUT/report/report.html, with the PNG files beside it and TensorBoard logs in "
        "OUT/report/tb.",
    )
    report.add_argument(
        "run",
        type=Path,
        metavar="OUT",
        help="a demo folder (with eval/), an eval folder or a sweep folder",
    )
    report.add_argument(
        "--sweep",
        type=Path,
        default=None,
        help="a vlcd sweep folder to include (default: OUT/sweep)",
    )
    report.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write the page (default: OUT/report)",
    )
    report.add_argument(
        "--no-tensorboard", action="store_true", help="do not write TensorBoard logs"
    )
    report.set_defaults(func=cmd_report)


def cmd_stage(args: argparse.Namespace) -> int:
    """Load the recipe, build the stage, run it, release the process group."""
    from .config import load_config

    overrides = list(args.set)
    if getattr(args, "degrade", None) is not None:
        overrides.append("eval.degrade.enabled=true")
        if args.degrade:
            names = [c.strip() for c in args.degrade.split(",") if c.strip()]
            overrides.append(f"eval.degrade.corruptions=[{', '.join(names)}]")
    cfg = load_config(args.config, overrides)
    if args.out is not None:
        cfg.run.out = str(args.out)
    if getattr(args, "resume", False):
        cfg.checkpoint.resume = True
    if getattr(args, "backend", None):
        cfg.run.backend = args.backend
    if args.command == "eval":
        from .evaluate import Evaluator

        runner = Evaluator(cfg)
    else:
        from .stages import create_stage

        runner = create_stage(cfg, args.command)
    try:
        runner.run()
    finally:
        runner.backend.close()
    # A preempted stage checkpointed and stopped early: 0 (requeued, or rerun with --resume),
    # or preemption.EXIT_NOT_REQUEUED on rank 0 when a SLURM requeue failed.
    return int(getattr(runner, "exit_status", 0))


def cmd_demo(args: argparse.Namespace) -> int:
    """Every stage on the built-in data; see :mod:`vlcd_dist.train.demo`."""
    from .demo import run_demo

    return run_demo(args.out, nproc=args.nproc, config=args.config, overrides=args.set)


def cmd_sweep(args: argparse.Namespace) -> int:
    """A grid of distill + eval runs; see :mod:`vlcd_dist.train.sweep`."""
    from .sweep import run_sweep

    eval_sets = []
    if args.degrade is not None:
        eval_sets.append("eval.degrade.enabled=true")
        names = [c.strip() for c in args.degrade.split(",") if c.strip()]
        if names:
            eval_sets.append(f"eval.degrade.corruptions=[{', '.join(names)}]")
    run_sweep(
        args.config,
        args.out,
        args.grid,
        args.set,
        nproc=args.nproc,
        source=args.source,
        dry_run=args.dry_run,
        eval_sets=eval_sets,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The HTML report of a run folder; see :mod:`vlcd_dist.train.report`."""
    from .report import write_report

    page = write_report(
        args.run, out=args.out, sweep=args.sweep, tensorboard=not args.no_tensorboard
    )
    print(f"report: {page} (and report.md, PNG files beside it)")
    return 0
