"""The stage commands of ``vlcd``: train-teacher, predistill, distill and eval.

Each parses its options, loads the recipe, builds the stage and runs it; the work lives in
:mod:`vlcd_dist.train`. Under several processes, launch them with
``accelerate launch [--multi_gpu --num_processes N] -m vlcd_dist <stage> ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlcd_dist.cli.argtypes import degrade_overrides

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
        help="recipe: a YAML file, or a built-in recipe's name: demo, paper (the files "
        "vlcd_dist/configs/*.yaml; default: the schema's defaults)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (sets run.out)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field, e.g. --set optim.lr=3e-4 (repeatable)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the stage subcommands on the ``vlcd`` parser."""
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


def cmd_stage(args: argparse.Namespace) -> int:
    """Load the recipe, build the stage, run it, release the process group."""
    from vlcd_dist.config import load_config

    overrides = [*args.set, *degrade_overrides(getattr(args, "degrade", None))]
    cfg = load_config(args.config, overrides)
    if args.out is not None:
        cfg.run.out = str(args.out)
    if getattr(args, "resume", False):
        cfg.checkpoint.resume = True
    if getattr(args, "backend", None):
        cfg.run.backend = args.backend
    if args.command == "train-teacher" and cfg.teacher.source != "vlcd":
        print(
            f"train-teacher: skipped: teacher.source={cfg.teacher.source} is a frozen foundation "
            "model, nothing to train. Run predistill and distill with the same recipe (distill "
            "builds the text anchors; docs/teachers.md)"
        )
        return 0
    if args.command == "eval":
        from vlcd_dist.reporting.eval_files import write_eval_outputs
        from vlcd_dist.train.eval_stage import Evaluator

        # The stage writes report.md and the figures through the reporting layer's renderer,
        # before report.json, its marker of a finished run.
        runner = Evaluator(cfg, render=write_eval_outputs)
    else:
        from vlcd_dist.train.stages import create_stage

        runner = create_stage(cfg, args.command)
    try:
        runner.run()
    finally:
        runner.backend.close()
    # A preempted stage checkpointed and stopped early: 0 (requeued, or rerun with --resume),
    # or preemption.EXIT_NOT_REQUEUED on rank 0 when a SLURM requeue failed.
    return int(getattr(runner, "exit_status", 0))
