"""``vlcd bench``: its options here, the work in :mod:`vlcd_dist.evaluation.efficiency`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vlcd_dist.cli.argtypes import positive_int
from vlcd_dist.errors import VlcdError

# The paper's students and teacher: what ``vlcd bench models`` compares by default.
PAPER_STUDENTS = ("mobilenetv3_large_100", "efficientnet_b0", "efficientformer_l1")
PAPER_TEACHER = "resnet50_bert"

DESCRIPTION = """\
For every model: parameters, MACs per image (counted by ``torch.utils.flop_counter``), latency
at batch 1 and throughput at batch B in each precision (fp32, and bf16/fp16 under autocast), on
CPU and on the GPU when there is one, and the speed-up over the teacher.

Fairness: every model gets the same input, warm-up calls before timing, and the timed repeats
run round-robin over the models (a different model first in each round), so a burst of load on
a shared machine hits all models alike; the median of the repeats is reported and every raw time
is kept in the JSON. Weights are random: speed and MACs do not depend on their values. Every
model is built for --image-size, as training builds it for data.image_size (EfficientFormer's
attention grid is re-laid for it), so no model resizes its input inside.
"""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _hw(values: Sequence[int]) -> tuple[int, int]:
    """--image-size H [W] -> (H, W)."""
    if len(values) not in (1, 2) or min(values) < 8:
        raise VlcdError(f"--image-size {values}: give SIDE or HEIGHT WIDTH, each at least 8 px")
    return (values[0], values[-1])


def add_parser(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``bench`` (with its ``models`` kind) to the top-level subparsers.

    Returns the ``bench`` kinds action, so other benchmarks can add their own kinds.
    """
    bench = subparsers.add_parser(
        "bench",
        help="measure models (size, MACs, latency, throughput)",
        description="Benchmarks; each kind writes JSON and Markdown reports.",
    )
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    add_bench_models_parser(kinds)
    return kinds


def add_bench_models_parser(kinds: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``models`` to the ``bench`` kinds."""
    p = kinds.add_parser(
        "models",
        help="teacher image tower vs students: params, MACs, latency, throughput, speed-up",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--teacher",
        default=PAPER_TEACHER,
        help="registered teacher whose image tower is the baseline of the speed-ups",
    )
    p.add_argument(
        "--models",
        type=_csv,
        default=list(PAPER_STUDENTS),
        help="comma-separated students (registered names or timm models)",
    )
    p.add_argument(
        "--embed-dim", type=positive_int, default=None, help="projection d (default: the teacher's)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[224],
        metavar="PX",
        help="input SIDE, or HEIGHT WIDTH, in pixels (the same for every model)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="batch of the throughput run"
    )
    p.add_argument("--repeats", type=positive_int, default=5, help="timed calls per model; median")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per model first")
    p.add_argument(
        "--dtypes",
        type=_csv,
        default=["fp32", "bf16"],
        help="precisions, comma-separated: fp32, bf16, fp16 (bf16/fp16 via autocast)",
    )
    p.add_argument(
        "--devices",
        type=_csv,
        default=None,
        help="cpu and/or cuda (default: cpu, plus cuda when a GPU is visible)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads (default: all available cores)",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for bench_models.json/.md")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_bench_models)
    return p


def cmd_bench_models(args: argparse.Namespace) -> int:
    """Build, measure, print the table, write the reports."""
    from vlcd_dist.evaluation.efficiency import (
        build_models,
        check_settings,
        markdown_table,
        run_benchmark,
        write_report,
    )
    from vlcd_dist.models import ModelError

    image_size = _hw(args.image_size)
    check_settings(args.dtypes, args.devices)  # before the (slow) model building

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[bench models] {msg}", file=sys.stderr, flush=True)

    try:
        models = build_models(args.teacher, args.models, args.embed_dim, image_size)
    except ModelError as exn:
        raise VlcdError(f"{exn} (check --teacher/--models)") from exn
    report = run_benchmark(
        models,
        image_size=image_size,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        precisions=args.dtypes,
        devices=args.devices,
        threads=args.threads,
        progress=progress,
    )
    print(markdown_table(report), end="")
    if args.out is not None:
        json_path, md_path = write_report(report, args.out)
        print(f"wrote {json_path} and {md_path}")
    return 0
