"""Placenta image-report shards: from a user's manifest, or the built-in synthetic set.

A sample holds ``__key__``, ``jpg`` (the photograph), ``txt`` (the report) and ``json``::

    {"labels": {task: 0 | 1, ...}, "split": "train" | "test", "study_id": str, "source": str}

Train and test go to separate shard files (``placenta-train-000000.tar``,
``placenta-test-000000.tar``) so each split's size is known from ``sizes.json`` without reading.
Task names come from the manifest's columns; nothing here knows the placenta tasks.

Every manifest photograph is decoded in full and its pixels hashed (:func:`inspect_image`), so
the same photograph under two file names, or re-saved losslessly in another format, is known: a
photograph on both sides of the split is refused (it would leak test images into training),
the automatic split keeps copies on one side, and copies within one side are reported.

A row's ``image`` must lie inside the images root once resolved: ``../../etc/passwd``, an
absolute path elsewhere or a symlink pointing out of the root is refused with its row number
(and never opened) unless ``allow_outside`` (``--allow-outside-images``) says it is meant.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from ..progress import DEFAULT_EVERY_S, Progress
from . import synthetic_placenta
from .natural import encode_jpeg, load_resized, safe_key
from .writer import SampleError, ShardJob, chunk_jobs

RESERVED = ("image", "report", "split", "study_id")
SPLITS = ("train", "test")


@dataclass
class ManifestRow:
    """One validated manifest row, ready to become a sample."""

    row: int  # row number as a spreadsheet shows it (CSV header = row 1; JSONL: line number)
    image: str
    report: str
    labels: dict[str, int]
    split: str
    study_id: str
    key: str = ""
    pixels: str = ""  # hash of the decoded photograph (see inspect_image)


class ManifestError(DataError):
    """The manifest as a whole cannot be used (missing columns, unknown tasks, bad format)."""


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(row number, record)]) from a CSV or JSONL manifest."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        records, columns = [], []
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exn:
                    raise ManifestError(
                        f"{path} row {line_no}: not valid JSON ({exn.msg})"
                    ) from exn
                if not isinstance(rec, dict):
                    raise ManifestError(f"{path} row {line_no}: expected a JSON object per line")
                for col in rec:
                    if col not in columns:
                        columns.append(col)
                records.append((line_no, rec))
        return columns, records
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            records = [(i, dict(rec)) for i, rec in enumerate(reader, start=2)]
        return columns, records
    raise ManifestError(f"{path}: unknown manifest type {suffix!r}; use .csv, .tsv or .jsonl")


def _parse_label(value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    if isinstance(value, str) and value.strip() in ("0", "1", "0.0", "1.0"):
        return int(float(value.strip()))
    return None


def inspect_image(path: Path) -> tuple[str | None, str]:
    """(what is wrong with ``path`` or None, a hash of its decoded pixels or "").

    The hash covers the photograph as it is shown: decoded in full, turned upright by its EXIF
    orientation, as RGB, with its size. Two files hash alike exactly when they show the same
    pixels, whatever their names, formats (a PNG of a decoded JPEG) or metadata.
    """
    if not path.is_file():
        return f"file not found: {path}", ""
    try:
        with Image.open(path) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exn:
        return f"unreadable image {path}: {exn}", ""
    digest = hashlib.blake2b(f"{rgb.width}x{rgb.height}:".encode(), digest_size=16)
    digest.update(rgb.tobytes())
    return None, digest.hexdigest()


def read_manifest(
    manifest: Path,
    images_root: Path,
    *,
    tasks: list[str] | None = None,
    workers: int = 1,
    progress: bool = False,
    progress_every_s: float = DEFAULT_EVERY_S,
    allow_outside: bool = False,
) -> tuple[list[str], list[ManifestRow], list[str]]:
    """Read and validate a manifest. Returns (tasks, good rows, problems).

    ``progress`` shows the decoding of the photographs (see :class:`vlcd_dist.progress.Progress`).
    ``allow_outside``: accept images that resolve outside ``images_root`` (see the module).

    Every problem is one line ``"<file> row N, field 'F': what is wrong"``. Problems with the
    manifest as a whole (missing columns, unknown --tasks) raise :class:`ManifestError` at once.
    """
    columns, records = _read_records(manifest)
    missing = [c for c in ("image", "report") if c not in columns]
    if missing:
        raise ManifestError(
            f"{manifest}: missing required column(s) {missing}; the columns found are {columns}. "
            "A manifest needs 'image' (path relative to --images) and 'report' (text)."
        )
    all_tasks = [c for c in columns if c not in RESERVED]
    if tasks:
        unknown = [t for t in tasks if t not in all_tasks]
        if unknown:
            raise ManifestError(
                f"--tasks names {unknown}, which are not columns of {manifest}; "
                f"its task columns are {all_tasks}"
            )
        chosen = list(tasks)
    else:
        chosen = all_tasks
    if not chosen:
        raise ManifestError(
            f"{manifest}: no task columns; every column other than {list(RESERVED)} is a 0/1 task"
        )
    if not records:
        raise ManifestError(f"{manifest}: no rows")

    problems: list[tuple[int, str]] = []
    rows: list[ManifestRow] = []
    first_seen: dict[str, int] = {}
    has_split = "split" in columns

    def problem(row_no: int, fieldname: str, text: str) -> None:
        problems.append((row_no, f"{manifest.name} row {row_no}, field '{fieldname}': {text}"))

    candidates = []
    outside: set[int] = set()  # rows whose image is refused unread
    root = images_root.resolve()
    for row_no, rec in records:
        ok = True
        image = str(rec.get("image") or "").strip()
        if not image:
            problem(row_no, "image", "empty")
            ok = False
        else:
            where = outside_root(images_root, image, root) if not allow_outside else None
            if where is not None:
                problem(
                    row_no,
                    "image",
                    f"{image!r} resolves to {where}, outside --images {images_root}; a manifest "
                    "may only name photographs under its images folder. Fix the path, or pass "
                    "--allow-outside-images if it is meant",
                )
                outside.add(row_no)
                ok = False
            norm = Path(image).as_posix()
            if norm in first_seen:
                problem(
                    row_no,
                    "image",
                    f"duplicate image {image!r}, first used in row {first_seen[norm]}",
                )
                ok = False
            else:
                first_seen[norm] = row_no
        report = str(rec.get("report") or "").strip()
        if not report:
            problem(row_no, "report", "empty report")
            ok = False
        labels = {}
        for task in chosen:
            value = _parse_label(rec.get(task))
            if value is None:
                problem(row_no, task, f"label must be 0 or 1, got {rec.get(task)!r}")
                ok = False
            else:
                labels[task] = value
        split = str(rec.get("split") or "").strip().lower()
        if has_split and split not in SPLITS:
            problem(row_no, "split", f"must be 'train' or 'test', got {rec.get('split')!r}")
            ok = False
        study = str(rec.get("study_id") or "").strip() or f"image:{image}"
        candidates.append((ok, ManifestRow(row_no, image, report, labels, split, study)))

    # Decoding every photograph dominates the time on a large manifest; it runs in parallel.
    paths = [
        images_root / c.image if c.image and c.row not in outside else None for _, c in candidates
    ]
    to_check = [p for p in paths if p is not None]
    with Progress(
        len(to_check),
        "checking photographs",
        unit="img",
        enabled=progress,
        every_s=progress_every_s,
    ) as shown:
        verdicts = {}
        if workers > 1 and len(to_check) > 64:
            with ProcessPoolExecutor(workers) as pool:
                found = pool.map(inspect_image, to_check, chunksize=16)
                for path, verdict in zip(to_check, found, strict=True):
                    verdicts[path] = verdict
                    shown.update(1)
        else:
            for path in to_check:
                verdicts[path] = inspect_image(path)
                shown.update(1)
    for (ok, row), path in zip(candidates, paths, strict=True):
        if path is not None:
            trouble, row.pixels = verdicts[path]
            if trouble is not None:
                problem(row.row, "image", trouble)
                ok = False
        if ok:
            rows.append(row)

    if has_split:
        # The same photograph on both sides: every copy is a problem, naming the other side's.
        leaked_photos = set()
        for group in duplicate_photos(rows):
            if len({r.split for r in group}) > 1:
                leaked_photos.add(group[0].pixels)
                for r in group:
                    others = ", ".join(
                        f"row {o.row} ({o.image!r})" for o in group if o.split != r.split
                    )
                    problem(
                        r.row,
                        "image",
                        f"{r.image!r} ({r.split}) shows the same photograph (identical pixels) "
                        f"as {others} in the other split; a photograph on both sides leaks test "
                        "images into training: keep its copies in one split",
                    )
        rows = [r for r in rows if r.pixels not in leaked_photos]
        sides = defaultdict(set)
        for r in rows:
            sides[r.study_id].add(r.split)
        for r in rows:
            if len(sides[r.study_id]) > 1 and not r.study_id.startswith("image:"):
                problem(r.row, "split", f"study {r.study_id!r} appears in both train and test")
        leaked = {s for s, v in sides.items() if len(v) > 1}
        rows = [r for r in rows if r.study_id not in leaked]
    _assign_keys(rows)
    return chosen, rows, [text for _, text in sorted(problems, key=lambda p: p[0])]


def outside_root(images_root: Path, image: str, root: Path | None = None) -> Path | None:
    """Where ``image`` (a manifest's path, relative to ``images_root``) really is, when that is
    outside the root: after ``..``, an absolute path and symlinks (of the file or of a folder on
    the way) are resolved. None when it lies inside. ``root``: ``images_root.resolve()``."""
    root = images_root.resolve() if root is None else root
    try:
        target = (images_root / image).resolve()
    except (OSError, RuntimeError):  # a symlink loop: unreadable, and reported as such
        return None
    return None if target.is_relative_to(root) else target


def duplicate_photos(rows: list[ManifestRow]) -> list[list[ManifestRow]]:
    """Groups of two or more rows showing the same photograph (same decoded pixels), in row
    order; rows without a hash are never grouped."""
    by_pixels: dict[str, list[ManifestRow]] = defaultdict(list)
    for r in rows:
        if r.pixels:
            by_pixels[r.pixels].append(r)
    return sorted((g for g in by_pixels.values() if len(g) > 1), key=lambda g: g[0].row)


def describe_duplicates(groups: list[list[ManifestRow]]) -> list[str]:
    """One line per group of copies, for the console: ``train: row 3 ('a.jpg'), row 9 (...)``."""
    return [
        f"{group[0].split or '?'}: " + ", ".join(f"row {r.row} ({r.image!r})" for r in group)
        for group in groups
    ]


def _assign_keys(rows: list[ManifestRow]) -> None:
    """Readable, unique keys from the image paths (``a/b.jpg`` -> ``a_b``)."""
    used: set[str] = set()
    for r in rows:
        key = safe_key(str(Path(r.image).with_suffix("")))
        if key in used:
            key = f"{key}_r{r.row}"
        used.add(key)
        r.key = key


def assign_split(groups: dict[str, list[int]], fraction: float, seed: int) -> set[str]:
    """The study ids that go to the test split.

    groups maps study id -> the group's label vector (ints). Studies are ordered by label pattern
    (so each pattern is one stratum) and, within a pattern, by a seeded random draw; then every
    1/fraction-th study goes to test (systematic sampling from a seeded offset). This gives every
    label pattern its share of test studies, to within one, and keeps each study on one side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--test-fraction must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng([seed, 0x5E])
    ids = sorted(groups)
    draws = dict(zip(ids, rng.random(len(ids)), strict=True))
    order = sorted(ids, key=lambda s: (tuple(groups[s]), draws[s]))
    offset = rng.random()
    test = set()
    for i, study in enumerate(order):
        if math.floor((i + 1) * fraction + offset) > math.floor(i * fraction + offset):
            test.add(study)
    return test


def split_rows(rows: list[ManifestRow], tasks: list[str], fraction: float, seed: int) -> None:
    """Fill in ``split`` for rows that lack one, grouped by study and stratified by labels.

    Studies that share a photograph (identical pixels) form one group, so copies of a
    photograph never end up on both sides.
    """
    # Union-find over studies, joined by shared photographs; a group is named by its smallest
    # study id, so a manifest without copies splits exactly as its studies alone would.
    parent = {r.study_id: r.study_id for r in rows}

    def root(study: str) -> str:
        while parent[study] != study:
            parent[study] = parent[parent[study]]
            study = parent[study]
        return study

    for group in duplicate_photos(rows):
        for r in group[1:]:
            a, b = root(group[0].study_id), root(r.study_id)
            parent[max(a, b)] = min(a, b)
    groups: dict[str, list[int]] = {}
    for r in rows:
        vec = [r.labels[t] for t in tasks]
        prev = groups.get(root(r.study_id))
        groups[root(r.study_id)] = (
            vec if prev is None else [max(a, b) for a, b in zip(prev, vec, strict=True)]
        )
    test = assign_split(groups, fraction, seed)
    for r in rows:
        r.split = "test" if root(r.study_id) in test else "train"


def manifest_sample(row: ManifestRow, root: str, max_side: int) -> dict:
    data, _ = load_resized(Path(root) / row.image, max_side)
    meta = {"labels": row.labels, "split": row.split, "study_id": row.study_id, "source": row.image}
    return {"__key__": row.key, "jpg": data, "txt": row.report, "json": json.dumps(meta)}


def manifest_jobs(rows: list[ManifestRow], shard_size: int) -> Iterator[ShardJob]:
    for split in SPLITS:
        yield from chunk_jobs(
            f"placenta-{split}", [r for r in rows if r.split == split], shard_size
        )


# --------------------------------------------------------------------------------------------
# The built-in synthetic set


def synthetic_split(count: int, seed: int, fraction: float) -> list[str]:
    """The split of every synthetic sample, stratified by its labels (one study per sample).

    Only the labels are drawn here (cheap), not the images, so the split is known up front.
    """
    groups = {}
    for i in range(count):
        rng = np.random.default_rng([seed, i, 0x9C])
        case = synthetic_placenta.sample_case(rng)
        groups[f"{i:08d}"] = [case.labels[t] for t in synthetic_placenta.TASKS]
    test = assign_split(groups, fraction, seed)
    return ["test" if f"{i:08d}" in test else "train" for i in range(count)]


def synthetic_jobs(splits: list[str], shard_size: int) -> Iterator[ShardJob]:
    for split in SPLITS:
        items = [(i, split) for i, s in enumerate(splits) if s == split]
        yield from chunk_jobs(f"placenta-{split}", items, shard_size)


def synthetic_sample(item: tuple[int, str], seed: int, size: tuple[int, int]) -> dict:
    index, split = item
    case, image, report = synthetic_placenta.make_sample(seed, index, size)
    key = f"synth{seed}_{index:08d}"
    meta = {"labels": case.labels, "split": split, "study_id": key, "severity": case.severity}
    return {
        "__key__": key,
        "jpg": encode_jpeg(Image.fromarray(image)),
        "txt": report,
        "json": json.dumps(meta),
    }


__all__ = [
    "ManifestError",
    "ManifestRow",
    "SampleError",
    "assign_split",
    "describe_duplicates",
    "duplicate_photos",
    "inspect_image",
    "manifest_jobs",
    "manifest_sample",
    "outside_root",
    "read_manifest",
    "split_rows",
    "synthetic_jobs",
    "synthetic_sample",
    "synthetic_split",
]
