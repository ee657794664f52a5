"""``vlcd demo`` and ``vlcd sweep``: pipelines of stages, run as subprocesses
(:mod:`vlcd_dist.pipelines`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlcd_dist.cli.argtypes import degrade_overrides, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``demo`` and ``sweep`` on the ``vlcd`` parser."""
    demo = sub.add_parser(
        "demo",
        help="the whole method on the built-in data, with a report at the end",
        description="Writes the built-in shards if absent, then runs train-teacher, predistill, "
        "distill and eval with the built-in demo recipe (the paper's architectures at a CPU-sized "
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
        "--config",
        type=Path,
        default=None,
        help="recipe: a YAML file or a built-in recipe's name (default: demo, the file "
        "vlcd_dist/configs/demo.yaml)",
    )
    demo.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field in every stage (repeatable)",
    )
    demo.add_argument(
        "--teacher",
        default=None,
        metavar="SOURCE:MODEL",
        help="distil from a foundation model instead of training the teacher: "
        "open_clip:MODEL (config name, hf-hub:org/name, folder with open_clip_config.json, or a "
        "model-config .json; weights: --set teacher.open_clip.pretrained=TAG-OR-FILE) or "
        "hf_clip:MODEL (CLIPModel folder or hub name); train-teacher is skipped "
        "(docs/teachers.md)",
    )
    demo.set_defaults(func=cmd_demo)

    sweep = sub.add_parser(
        "sweep",
        help="one distill (every student) + eval per point of a grid of recipe values; a "
        "table and a plot of mean AUC per point",
        description="Runs distill and eval for every point of the cartesian product of the "
        "--grid axes, each in OUT/<point>/, after training the teacher and the predistillation "
        "once (unless the recipe or --from gives them). A finished point is not rerun; an "
        "interrupted one resumes. Writes OUT/sweep.json, sweep.md, sweep.png (and sweep.svg) "
        "and OUT/tb.",
        epilog="example: vlcd sweep --config demo --out runs/sweep "
        "--grid loss.distill_lambda=0,0.01,0.1,1,10 --grid distill.init=predistilled,scratch",
    )
    sweep.add_argument(
        "--config",
        type=Path,
        required=True,
        help="recipe: a YAML file or a built-in recipe's name (demo, paper)",
    )
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Every stage on the built-in data; see :mod:`vlcd_dist.pipelines.demo`."""
    from vlcd_dist.pipelines.demo import run_demo

    return run_demo(
        args.out, nproc=args.nproc, config=args.config, overrides=args.set, teacher=args.teacher
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    """A grid of distill + eval runs; see :mod:`vlcd_dist.pipelines.sweep`."""
    from vlcd_dist.pipelines.sweep import run_sweep

    eval_sets = degrade_overrides(args.degrade)
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
