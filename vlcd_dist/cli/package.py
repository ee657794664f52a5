"""``vlcd package``: its options here, the work in :mod:`vlcd_dist.deploy.package`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlcd_dist.cli.argtypes import positive_int

DESCRIPTION = """\
After `vlcd eval`: every evaluated model (each student, and the teacher for comparison) as a
self-contained analyser in OUT/<model>/:

  model.onnx, model.int8.onnx   images -> embedding, per-task logits and probabilities, zero-shot
                                scores; fp32, and int8 (ONNX Runtime static quantization of the
                                image tower, per-channel weights, calibrated on training images)
  model.safetensors, config.json  the image tower in timm's pretrained format
                                (timm.create_model("local-dir:OUT/<model>", pretrained=True))
  heads.json, heads.safetensors the eval's probes: standardisation, weights, bias, C, and a flag
                                threshold per task chosen on training data only
  package.json, README.md       what `vlcd predict` reads; the model card

model.onnx must match PyTorch on test images (the command fails otherwise); the int8 model's
differences are recorded (a warning when its embeddings stray). Both ONNX models score the test
split (AUC per task with bootstrap intervals); every model is timed at batch 1 (eager PyTorch,
ONNX fp32, ONNX int8) side by side. OUT/deployment.json holds those figures; `vlcd report RUN`
shows them in its deployment section (`--deployment OUT` for a package elsewhere).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "package",
        help="package evaluated models for deployment (ONNX fp32/int8, timm, probes, model card)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", type=Path, help="a demo run folder (RUN/eval inside) or an eval folder")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: RUN/package)")
    p.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME",
        help="package only these evaluated models (default: all, the teacher included)",
    )
    p.add_argument(
        "--calibration-images",
        type=positive_int,
        default=64,
        help="training images that calibrate the int8 model (default: 64)",
    )
    p.add_argument(
        "--latency-iters",
        type=positive_int,
        default=20,
        help="timed batch-1 calls per model, runtime and thread count (default: 20)",
    )
    p.add_argument(
        "--latency-threads",
        type=positive_int,
        nargs="+",
        default=[1, 4],
        metavar="N",
        help="CPU thread counts to time at (default: 1 4)",
    )
    p.set_defaults(func=cmd_package)
    return p


def cmd_package(args: argparse.Namespace) -> int:
    import logging

    from vlcd_dist.deploy.package import PackageSettings, package_run

    # This project's progress lines; the libraries' own INFO lines (timm, ONNX Runtime) stay out.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("vlcd_dist").setLevel(logging.INFO)
    settings = PackageSettings(
        calibration_images=args.calibration_images,
        latency_threads=tuple(args.latency_threads),
        latency_iters=args.latency_iters,
    )
    record = package_run(args.run, args.out, args.models, settings)
    out = args.out or args.run / "package"
    report_cmd = f"vlcd report {args.run}" + (f" --deployment {out}" if args.out else "")
    for name, entry in record.models.items():
        auc = entry.auc
        print(
            f"{name}: test mean AUC eval {auc.eval['mean']:.3f}, ONNX fp32 "
            f"{auc.fp32['mean']:.3f}, int8 {auc.int8['mean']:.3f} -> {out / name}"
        )
    print(f"deployment figures: {out / 'deployment.json'} (`{report_cmd}` shows them)")
    return 0
