"""The training subcommands of ``vlcd``: train-teacher, predistill, distill, eval and demo.

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
    "eval": "linear probes (AUC per task, bootstrap CI), size and CPU latency of the teacher and "
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


def cmd_stage(args: argparse.Namespace) -> int:
    """Load the recipe, build the stage, run it, release the process group."""
    from .config import load_config

    cfg = load_config(args.config, args.set)
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
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Every stage on the built-in data; see :mod:`vlcd_dist.train.demo`."""
    from .demo import run_demo

    return run_demo(args.out, nproc=args.nproc, config=args.config, overrides=args.set)
