"""``vlcd export``: its options here, the work in :mod:`vlcd_dist.deploy.export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlcd_dist.cli.argtypes import positive_int
from vlcd_dist.errors import VlcdError

DESCRIPTION = """\
Writes ``{name}.onnx`` (or ``{name}.torchscript.pt``) plus a sidecar ``{name}.{format}.json``
that says how to feed the model (input size, RGB, [0, 1] range, mean/std, NCHW), what it returns,
which weights it holds (hashes), how closely it matches eager PyTorch on sample images, and how
fast it runs next to eager PyTorch at batch 1.

The student is what training wrote into OUT/export/: pass ``--config`` its ``{student}.json``
(the ``.safetensors`` beside it holds the weights), the ``{student}.safetensors`` alone, or the
stage's folder (with ``--student NAME`` when it holds several students). Its stored name,
embed_dim and image size are used; an option asking for other values is refused. Or build a
student by name (``--student``, with ``--weights`` a plain state dict, or random weights);
nothing is unpickled.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``export`` to the top-level subparsers."""
    p = subparsers.add_parser(
        "export",
        help="export a student to ONNX or TorchScript, verified against PyTorch",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="what training wrote: OUT/export/{student}.json, the .safetensors beside it, or "
        "the stage's OUT folder; its stored name, embed_dim and image size are used",
    )
    p.add_argument(
        "--student",
        default=None,
        help="student name (registered or a timm model); with --config a folder, which student",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="safetensors of the whole --student (default: random init, with a warning)",
    )
    p.add_argument(
        "--embed-dim",
        type=positive_int,
        default=None,
        help="d (default: the stored one; 512 for a random init)",
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=None,
        metavar="PX",
        help="input SIDE, or HEIGHT WIDTH (default: the stored size, else the student's fixed "
        "size, else 224)",
    )
    p.add_argument(
        "--format", choices=("onnx", "torchscript"), default="onnx", help="what to write"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the model and sidecar")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset version")
    p.add_argument(
        "--images",
        type=Path,
        nargs="+",
        default=(),
        help="real images (files or folders) to verify on, besides the random ones",
    )
    p.add_argument("--max-images", type=positive_int, default=16, help="real images used at most")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="max |exported - eager| allowed, as a fraction of the largest |eager output| when "
        "that exceeds 1 (trained embeddings are not unit vectors), else absolute",
    )
    p.add_argument("--repeats", type=positive_int, default=20, help="timed batch-1 calls; median")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args: argparse.Namespace) -> int:
    """Resolve what to export, export and verify it, print the result."""
    from vlcd_dist.deploy.export import export_student, resolve_spec

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[export] {msg}", file=sys.stderr, flush=True)

    if args.image_size is not None and len(args.image_size) not in (1, 2):
        raise VlcdError(f"--image-size {args.image_size}: give SIDE or HEIGHT WIDTH")
    spec = resolve_spec(args.student, args.config, args.weights, args.embed_dim, args.image_size)
    sidecar = export_student(
        spec,
        args.format,
        args.out,
        opset=args.opset,
        images=args.images,
        max_images=args.max_images,
        tolerance=args.tolerance,
        repeats=args.repeats,
        threads=args.threads,
        progress=progress,
    )
    v, t = sidecar["verification"], sidecar["timing"]
    p = sidecar["preprocessing"]
    print(
        f"exported {spec.name} to {args.out / sidecar['model_file']} "
        f"({p['height']}x{p['width']} RGB, output dim {sidecar['output']['dim']})\n"
        f"verified: max |{args.format} - eager| = {v['max_abs_diff']:.2e}, "
        f"{v['max_scaled_diff']:.2e} of max(1, largest |eager output|) (tolerance "
        f"{v['tolerance']:g}) on {sum(v['images'].values())} images\n"
        f"batch-1 latency ({t['threads']} threads, median of {t['repeats']}): eager "
        f"{t['eager_ms']:.2f} ms, {t['exported_runtime']} {t['exported_ms']:.2f} ms "
        f"({t['speedup']:.2f}x)\n"
        f"sidecar: {args.out / f'{spec.name}.{args.format}.json'}"
    )
    return 0
