"""``vlcd predict``: its options here, the work in :mod:`vlcd_dist.deploy.predict`. It never
imports torch: it needs only ``pip install 'vlcd-dist[infer]'`` (onnxruntime, numpy, Pillow)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from vlcd_dist.cli.argtypes import positive_int

# The numbers the help states, kept equal to vlcd_dist.deploy.predict's (a test checks), so
# that building the parser imports no work module.
MIN_SIDE = 8
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_PREDICT_TEXT = f"""\
Predicts every image of INPUT... with one model folder of a package (what `vlcd package RUN --out
DIR` writes as DIR/<model>: package.json, heads.json, model.onnx, model.int8.onnx). Runs on ONNX
Runtime without PyTorch: `pip install 'vlcd-dist[infer]'` is all a machine needs.

inputs: image files (read whatever their suffix); folders, searched recursively for
{", ".join(IMAGE_SUFFIXES)} (any case; their other files are listed as skipped, hidden files and
folders are passed over); and manifests: a .csv with
a header row and an `image` column of paths, relative to the manifest's folder, or to --images
ROOT when given. A manifest's other columns (e.g. study_id) are copied into the output.

Each image is decoded, resized to cover the model's input size, centre-cropped and normalised
exactly as evaluation does.

output (--out, CSV, one row per image predicted): `image` (the path as given, or joined to its
folder or manifest root), the manifests' other columns, then per task `<task>_probability` (the
sigmoid of the model's logit, 9 significant digits) and `<task>_flag` (1 when the probability is
at least the task's threshold in heads.json, operating_points.<task>.threshold: the operating
point chosen on training data, e.g. 90% sensitivity; else 0; empty for a task without a
threshold, whose training split had one class), then `zero_shot_<task>` per
zero-shot task (cos(image, positive prompts) - cos(image, negative prompts); only when the
package has prompts).

skipped images: a folder's file that is not an image, an image that cannot be read (missing,
corrupt or truncated, not an image) or is
smaller than {MIN_SIDE} px on a side is left out and listed with its reason in `<out
stem>.skipped.csv` (columns image, reason), and counted in the summary line. The exit status is 0
when at least one image was predicted, else 2. Both files are written whole or not at all.
"""
PREDICT_DESCRIPTION = "\n\n".join(
    textwrap.fill(" ".join(par.split()), 96, break_on_hyphens=False)
    for par in _PREDICT_TEXT.split("\n\n")
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict`` to the top-level subparsers."""
    add_predict(subparsers)


def add_predict(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="per-task probabilities, flags and zero-shot scores of photographs (ONNX, no torch)",
        description=PREDICT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="image files, folders of images, or .csv manifests with an `image` column",
    )
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="DIR",
        help="one model folder of a package (DIR/<model>, holding package.json)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("predictions.csv"),
        help="the predictions CSV (default: predictions.csv); skipped images go to "
        "<out stem>.skipped.csv beside it",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="ROOT",
        help="folder the manifests' relative paths start from (default: each manifest's folder)",
    )
    p.add_argument(
        "--int8", action="store_true", help="use the quantized model.int8.onnx (default: fp32)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=16, help="images per ONNX call (default: 16)"
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="ONNX Runtime and decoding threads (default: every core)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_predict)
    return p


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict, then print where the rows went and how many images were skipped."""
    from vlcd_dist.deploy.predict import predict

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[predict] {msg}", file=sys.stderr, flush=True)

    result = predict(
        args.model,
        args.inputs,
        args.out,
        images_root=args.images,
        int8=args.int8,
        batch_size=args.batch_size,
        threads=args.threads,
        progress=None if args.quiet else sys.stderr,
        log=log,
    )
    print(
        f"predicted {result.predicted} images, skipped {result.skipped} "
        f"(see {result.skipped_csv}); predictions in {result.out}"
    )
    return 0
