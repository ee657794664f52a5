"""``vlcd shards natural | placenta``: write WebDataset shard sets (see :mod:`vlcd_dist.data`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcd_dist.cli.argtypes import non_negative_float, positive_int
from vlcd_dist.errors import VlcdError

if TYPE_CHECKING:
    from vlcd_dist.data.writer import ShardJob


def _size(text: str) -> tuple[int, int]:
    """'512x384' (width x height) or '224' (square) -> (width, height)."""
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
    except ValueError as exn:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or SIDE, got {text!r}") from exn
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"image size must be at least 8 px, got {text!r}")
    return w, h


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _add_writer_options(p: argparse.ArgumentParser, shard_size: int) -> None:
    p.add_argument(
        "--out",
        required=True,
        help="folder to write the shards into, or s3://bucket/prefix (each shard uploaded once "
        "complete; endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY)",
    )
    p.add_argument(
        "--shard-size",
        type=positive_int,
        default=shard_size,
        help=f"samples per shard (default {shard_size})",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=_default_workers(),
        help="parallel writer processes (default: CPU count, at most 8)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete shards already in --out that came from other settings, and start again",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--progress-every",
        type=non_negative_float,
        default=30.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (a SLURM log), one progress line every SECONDS "
        "instead of a bar (0: one per shard)",
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``shards`` and its kinds on the ``vlcd`` parser."""
    shards = sub.add_parser(
        "shards",
        help="write WebDataset shards (natural images or placenta image-report pairs)",
        description="Write WebDataset shards. Each set gets sizes.json (samples per shard) and "
        "info.json. An interrupted write resumes: complete shards are kept.",
    )
    kinds = shards.add_subparsers(dest="kind", required=True, metavar="KIND")

    nat = kinds.add_parser(
        "natural",
        help="natural-image shards for predistillation",
        description="Natural-image shards (samples: jpg, and cls for class-folder trees) for "
        "unsupervised predistillation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    nat.add_argument(
        "--source",
        default="skimage",
        help="'skimage' (random resized crops of the photographs bundled with scikit-image; "
        "no network), 'synthetic' (procedural drawings), or a folder: an ImageNet/ImageFolder "
        "tree or any folder of JPEG/PNG files, read recursively",
    )
    nat.add_argument(
        "--count",
        type=positive_int,
        default=5000,
        help="images to cut (skimage, synthetic); a folder source takes every image",
    )
    nat.add_argument(
        "--image-size",
        type=int,
        default=256,
        help="side of skimage/synthetic images; for a folder, the shorter side is shrunk to "
        "this (0 keeps originals: JPEGs are then copied byte for byte)",
    )
    _add_writer_options(nat, shard_size=1000)
    nat.set_defaults(func=cmd_shards_natural)

    pla = kinds.add_parser(
        "placenta",
        help="placenta image-report shards from a manifest, or the built-in synthetic set",
        description="Placenta image-report shards (samples: jpg, txt, json with labels, split and "
        "study_id). Either --manifest + --images for your own data, or --synthetic N for the "
        "built-in synthetic set. Train and test go to separate files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = pla.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--manifest",
        type=Path,
        help="CSV/TSV/JSONL with columns image (path relative to --images), report, optional "
        "split (train/test) and study_id; every other column is a 0/1 task label. Every "
        "photograph is decoded and hashed: one on both sides of the split is refused, copies "
        "within one split are reported",
    )
    src.add_argument(
        "--synthetic", type=positive_int, metavar="N", help="write N synthetic samples"
    )
    pla.add_argument("--images", type=Path, help="root folder of the manifest's image paths")
    pla.add_argument(
        "--allow-outside-images",
        action="store_true",
        help="accept manifest images that resolve outside --images (a '..' path, an absolute "
        "path, a symlink out); by default such a row is refused with its row number",
    )
    pla.add_argument("--tasks", help="comma-separated task columns to keep (default: all)")
    pla.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="test share when the manifest has no split column (grouped by study_id, and "
        "by photograph: copies stay on one side; stratified by labels)",
    )
    pla.add_argument(
        "--skip-bad",
        action="store_true",
        help="write the good rows and report the bad ones, instead of stopping",
    )
    pla.add_argument(
        "--image-size",
        type=_size,
        default=(512, 384),
        help="synthetic images: WIDTHxHEIGHT",
    )
    pla.add_argument(
        "--max-side",
        type=int,
        default=1024,
        help="manifest images: shrink so the shorter side is at most this (0 = keep as is)",
    )
    _add_writer_options(pla, shard_size=100)
    pla.set_defaults(func=cmd_shards_placenta)


def cmd_shards_natural(args: argparse.Namespace) -> int:
    from vlcd_dist.data import natural
    from vlcd_dist.data.writer import chunk_jobs

    common = dict(kind="natural", seed=args.seed, shard_size=args.shard_size)
    if args.source in ("skimage", "synthetic"):
        make = natural.skimage_sample if args.source == "skimage" else natural.synthetic_sample
        make_sample = partial(make, seed=args.seed, image_size=args.image_size)
        jobs = chunk_jobs("natural", range(args.count), args.shard_size)
        total = args.count
        fingerprint = dict(common, source=args.source, count=args.count, image_size=args.image_size)
    else:
        root = Path(args.source)
        if not root.is_dir():
            raise VlcdError(
                f"--source {args.source!r} is neither 'skimage', 'synthetic' nor a folder"
            )
        print(f"counting images under {root} ...", file=sys.stderr)
        total = sum(1 for _ in natural.walk_images(root))
        if total == 0:
            raise VlcdError(f"no .jpg/.jpeg/.png files under {root}")
        make_sample = partial(natural.folder_sample, root=str(root), max_side=args.image_size)
        jobs = chunk_jobs("natural", natural.folder_items(root), args.shard_size)
        fingerprint = dict(common, source=str(root.resolve()), image_size=args.image_size)
    return _write(args, jobs, make_sample, total, fingerprint, dict(fingerprint))


def cmd_shards_placenta(args: argparse.Namespace) -> int:
    from vlcd_dist.data import placenta, synthetic_placenta

    if args.synthetic:
        if args.manifest or args.images or args.allow_outside_images:
            raise VlcdError(
                "--synthetic makes its own images; drop --manifest/--images/--allow-outside-images"
            )
        splits = placenta.synthetic_split(args.synthetic, args.seed, args.test_fraction)
        jobs = placenta.synthetic_jobs(splits, args.shard_size)
        w, h = args.image_size
        make_sample = partial(placenta.synthetic_sample, seed=args.seed, size=(w, h))
        tasks = list(synthetic_placenta.TASKS)
        fingerprint = dict(
            kind="placenta",
            source="synthetic",
            count=args.synthetic,
            seed=args.seed,
            shard_size=args.shard_size,
            image_size=[w, h],
            test_fraction=args.test_fraction,
        )
        total = args.synthetic
        split_counts = {s: splits.count(s) for s in placenta.SPLITS}
        copies = []
    else:
        if args.images is None:
            raise VlcdError("--manifest needs --images ROOT, the folder its image paths are under")
        if not args.manifest.is_file():
            raise VlcdError(f"manifest not found: {args.manifest}")
        selected = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
        tasks, rows, problems = placenta.read_manifest(
            args.manifest,
            args.images,
            tasks=selected,
            workers=args.workers,
            progress=not args.quiet,
            progress_every_s=args.progress_every,
            allow_outside=args.allow_outside_images,
        )
        if problems and not args.skip_bad:
            listing = "\n".join(f"  {p}" for p in problems)
            raise VlcdError(
                f"{len(problems)} problem(s) in {args.manifest}; nothing was written:\n{listing}\n"
                "Fix these rows, or pass --skip-bad to write the good rows only."
            )
        if not rows:
            raise VlcdError(f"no usable rows in {args.manifest}")
        if not any(r.split for r in rows):
            placenta.split_rows(rows, tasks, args.test_fraction, args.seed)
        # Copies across the split were refused above (or kept on one side by split_rows).
        copies = placenta.duplicate_photos(rows)
        if copies:
            listing = "\n".join(f"  {line}" for line in placenta.describe_duplicates(copies))
            print(
                f"warning: {len(copies)} photograph(s) appear more than once within one split "
                f"(identical pixels under other file names); all copies are written, so each "
                f"weighs more than once:\n{listing}",
                file=sys.stderr,
            )
        jobs = placenta.manifest_jobs(rows, args.shard_size)
        make_sample = partial(
            placenta.manifest_sample, root=str(args.images), max_side=args.max_side
        )
        fingerprint = dict(
            kind="placenta",
            source=str(args.manifest.resolve()),
            seed=args.seed,
            shard_size=args.shard_size,
            tasks=tasks,
            max_side=args.max_side,
            test_fraction=args.test_fraction,
            rows=len(rows),
        )
        total = len(rows)
        split_counts = {s: sum(r.split == s for r in rows) for s in placenta.SPLITS}
        if problems:
            print(f"skipping {len(problems)} bad row(s) (--skip-bad):", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
    info = dict(fingerprint, tasks=tasks, splits=split_counts)
    info["duplicate_photos"] = [[r.image for r in group] for group in copies]
    return _write(args, jobs, make_sample, total, fingerprint, info)


def _write(
    args: argparse.Namespace,
    jobs: Iterable[ShardJob],
    make_sample: Callable[[Any], dict],
    total: int,
    fingerprint: dict,
    info: dict,
) -> int:
    """Write the shard set, then say where it went and what was left out."""
    from vlcd_dist.data.storage import join
    from vlcd_dist.data.writer import summarize_skips, write_shards

    record = write_shards(
        args.out,
        jobs,
        make_sample,
        total=total,
        workers=args.workers,
        fingerprint=fingerprint,
        info=info,
        overwrite=args.overwrite,
        desc=f"{fingerprint['kind']} shards",
        progress=not args.quiet,
        progress_every_s=args.progress_every,
    )
    reused = f", {record['reused_shards']} already complete" if record["reused_shards"] else ""
    print(
        f"wrote {record['samples']} samples in {record['shards']} shards to {args.out}{reused} "
        f"({record['seconds']} s); sizes in {join(args.out, 'sizes.json')}"
    )
    if record["skipped"]:
        print(summarize_skips(record["skipped"]), file=sys.stderr)
    return 0
