"""``vlcd cache-teacher``: the frozen teacher's image embeddings of A seeded views of every
sample of a stage's shard set, stored once so that predistill / distill with
``teacher.cache: DIR`` never run (or build) the teacher's image tower. The work lives in
:mod:`vlcd_dist.train.teacher_cache`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlcd_dist.cli.stages import _recipe_options

HELP = "store the frozen teacher's image embeddings of A seeded views per sample (teacher.cache)"

DESCRIPTION = """\
Run the recipe's frozen teacher once over the shard set of --stage (distill: data.placenta,
train split; predistill: data.natural) and store, for every sample and each of its A views, the
teacher's image embedding, in DIR (one safetensors file per shard, manifest.json last). View v
of a sample is the recipe's training augmentation (data.image_size, data.crop_scale,
data.color_jitter) drawn from a seed derived from (run.seed, sample key, v), so any run can
regenerate its pixels. Then train with `vlcd STAGE --set teacher.cache=DIR`: each sample shows
one of its A views per epoch, the students see that view's pixels and learn from its stored
embedding; the teacher's image tower is never built (summary.json: teacher_forwards 0). That run
gives the same losses as a live-teacher run with --set data.views=A. A cache written for another
teacher, shard set, stage or augmentation recipe is refused, naming what differs. Runs on one
process (GPU if there is one)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vlcd cache-teacher``."""
    p = sub.add_parser(
        "cache-teacher",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_options(p)
    p.add_argument(
        "--views",
        type=int,
        required=True,
        metavar="A",
        help="seeded augmented views stored per sample (each epoch shows one of them)",
    )
    p.add_argument(
        "--stage",
        choices=("distill", "predistill"),
        default="distill",
        help="whose shard set: distill (placenta train split, the default) or predistill "
        "(natural images)",
    )
    p.add_argument(
        "--dtype",
        choices=("fp16", "fp32"),
        default="fp16",
        help="precision of the stored embeddings (default fp16; fp32 reproduces a live-teacher "
        "fp32 run to rounding)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="where the teacher runs, e.g. cpu or cuda:0 (default: cuda if available, else cpu)",
    )
    p.set_defaults(func=cmd_cache_teacher)
    # --out is the cache folder here (not run.out): required.
    for action in p._actions:
        if action.dest == "out":
            action.required = True
            action.metavar = "DIR"
            action.help = "the cache folder to write (then: --set teacher.cache=DIR)"


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    import torch

    from vlcd_dist.config import load_config
    from vlcd_dist.train.stages import load_frozen_teacher
    from vlcd_dist.train.teacher_cache import write_cache

    cfg = load_config(args.config, args.set)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = write_cache(
        cfg,
        load_frozen_teacher(cfg, device),
        stage=args.stage,
        views=args.views,
        out=Path(args.out),
        dtype=args.dtype,
    )
    print(f"cache-teacher: {out} (use --set teacher.cache={out})")
    return 0
