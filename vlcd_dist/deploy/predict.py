"""``vlcd predict``: a packaged model's per-task probabilities, flags and zero-shot scores for
photographs, with ONNX Runtime.

This module imports the standard library, numpy, Pillow, onnxruntime and the torch-free parts of
vlcd_dist only (:mod:`vlcd_dist.errors`, :mod:`vlcd_dist.io`, :mod:`vlcd_dist.data.imaging`),
never torch, so that it runs where only ``pip install 'vlcd-dist[infer]'`` was installed.
(:mod:`vlcd_dist.progress` imports torch through :mod:`vlcd_dist.distributed`, so the progress
display here is its own small one: a line redrawn in place in a terminal, a plain line every
30 seconds anywhere else.)

A model folder (one ``DIR/<model>`` of ``vlcd package``) holds ``package.json`` (the input size,
mean and std, and which ONNX files), ``heads.json`` (the task names, each task's operating
threshold, the zero-shot task names) and ``model.onnx`` / ``model.int8.onnx``, whose input
``images`` [B, 3, H, W] is the normalised image and whose outputs include ``logits`` [B, T] and,
when the package has zero-shot prompts, ``zero_shot`` [B, T'].

Each image is decoded exactly as evaluation decodes it (:func:`~vlcd_dist.data.imaging.decode_rgb`
with PIL's JPEG draft at the input size, resize to cover H x W, centre crop, bilinear,
``(pixels / 255 - mean) / std``). An image that cannot be read is listed, with the reason, in
``<out stem>.skipped.csv`` and left out; so is one smaller than :data:`MIN_SIDE` pixels on a
side. Both CSV files are written whole or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlcd_dist.data.imaging import (
    DECODE_ERRORS,
    IMAGE_SUFFIXES,
    ResizeCover,
    decode_rgb,
    normalised_array,
)
from vlcd_dist.errors import VlcdError
from vlcd_dist.io import atomic_path

PACKAGE_FORMAT = "vlcd-package/1"
HEADS_FORMAT = "vlcd-heads/1"
MIN_SIDE = 8
"""Images smaller than this many pixels on either side are skipped as too small to read."""
PROGRESS_EVERY_S = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""

# What the ONNX input must look like; a package.json asking for anything else is refused
# rather than fed the wrong pixels.
_EXPECTED_INPUT = {
    "layout": "NCHW",
    "dtype": "float32",
    "colour_order": "RGB",
    "value_range": [0, 1],
    "resize": "cover-then-centre-crop",
    "interpolation": "bilinear",
}


class PredictError(VlcdError):
    """A model folder, an input or an output of ``vlcd predict`` is unusable; the message says
    which file and what to do."""


@dataclass(frozen=True)
class ModelFolder:
    """What ``vlcd predict`` reads from one model folder of a package.

    size: (H, W) of the ONNX input ``input_name`` [B, 3, H, W]; mean, std: per RGB channel.
    tasks: the T names of the ``logits`` columns; thresholds: task -> probability at or above
    which the flag is 1, or None where the train split had one class (no operating point: the
    flag column is left empty). zero_shot_tasks: the T' names of the ``zero_shot`` columns
    (empty when the package has no prompts). onnx: "fp32" / "int8" -> the model file.
    """

    folder: Path
    name: str
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_name: str
    tasks: list[str]
    thresholds: dict[str, float | None]
    zero_shot_tasks: list[str]
    onnx: dict[str, Path]

    def columns(self) -> list[str]:
        """The prediction columns, after ``image`` and any copied manifest columns."""
        cols = [f"{t}_{kind}" for t in self.tasks for kind in ("probability", "flag")]
        return cols + [f"zero_shot_{t}" for t in self.zero_shot_tasks]


@dataclass
class InputImage:
    """One image to predict: ``image`` as written to the CSV, ``path`` where it is read from,
    ``columns`` the manifest row's other fields (empty for files and folders), ``problem`` a
    reason to skip it known before reading (an empty manifest field, a folder's file that is not
    an image)."""

    image: str
    path: Path
    columns: dict[str, str] = field(default_factory=dict)
    problem: str | None = None


@dataclass(frozen=True)
class PredictResult:
    """What :func:`predict` wrote: ``predicted`` rows in ``out``, ``skipped`` in
    ``skipped_csv``, using the model file ``onnx``."""

    out: Path
    skipped_csv: Path
    predicted: int
    skipped: int
    onnx: Path


def skipped_path(out: Path) -> Path:
    """``predictions.csv`` -> ``predictions.skipped.csv`` (beside it)."""
    return out.with_name(f"{out.stem}.skipped.csv")


# ---------------------------------------------------------------------------------------------
# The model folder


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exn:
        raise PredictError(f"{path}: cannot read {what} ({exn.strerror or exn})") from exn
    except ValueError as exn:
        raise PredictError(f"{path}: not valid JSON ({exn}); rerun vlcd package") from exn
    if not isinstance(data, dict):
        raise PredictError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _field(data: dict[str, Any], key: str, path: Path, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise PredictError(f"{path}: no {key!r} field; rerun vlcd package")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PredictError(f"{path}: {key!r} is {value!r}, not what vlcd package writes")
    return value


def _numbers(value: Any, n: int, key: str, path: Path) -> tuple[float, ...]:
    ok = isinstance(value, list) and len(value) == n
    ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or not all(math.isfinite(v) for v in value):
        raise PredictError(f"{path}: {key} is {value!r}; expected {n} numbers")
    return tuple(float(v) for v in value)


def _missing_package_json(folder: Path) -> PredictError:
    models = sorted(p.parent.name for p in folder.glob("*/package.json"))
    if models:
        return PredictError(
            f"--model {folder}: no package.json here; this looks like a whole package holding "
            f"{', '.join(models)}: give one model folder, e.g. --model {folder / models[0]}"
        )
    return PredictError(
        f"--model {folder}: no package.json; give one model folder written by "
        f"`vlcd package RUN --out DIR` (DIR/<model>, holding package.json, heads.json and "
        f"model.onnx)"
    )


def load_model_folder(folder: str | Path) -> ModelFolder:
    """Read and check ``package.json`` and ``heads.json`` of one model folder; raise
    :class:`PredictError` naming the missing file or the bad field."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PredictError(f"--model {folder}: no such folder")
    pkg_path, heads_path = folder / "package.json", folder / "heads.json"
    if not pkg_path.is_file():
        raise _missing_package_json(folder)
    pkg = _read_json(pkg_path, "the package description")
    if pkg.get("format") != PACKAGE_FORMAT:
        raise PredictError(
            f"{pkg_path}: format is {pkg.get('format')!r}, this vlcd reads {PACKAGE_FORMAT!r}"
        )
    inp = _field(pkg, "input", pkg_path, dict)
    height = _field(inp, "height", pkg_path, int)
    width = _field(inp, "width", pkg_path, int)
    if height < 1 or width < 1:
        raise PredictError(f"{pkg_path}: input size {height}x{width} is not a size")
    mean = _numbers(inp.get("mean"), 3, "input.mean", pkg_path)
    std = _numbers(inp.get("std"), 3, "input.std", pkg_path)
    if min(std) <= 0:
        raise PredictError(f"{pkg_path}: input.std {list(std)} must be positive")
    for key, expected in _EXPECTED_INPUT.items():
        if key in inp and inp[key] != expected:
            raise PredictError(
                f"{pkg_path}: input.{key} is {inp[key]!r}; this vlcd feeds {expected!r} only"
            )
    input_name = inp.get("name", "images")
    onnx_names = pkg.get("onnx", {"fp32": "model.onnx", "int8": "model.int8.onnx"})
    if not isinstance(onnx_names, dict) or not all(
        isinstance(onnx_names.get(k), str) for k in ("fp32", "int8")
    ):
        raise PredictError(f"{pkg_path}: onnx is {onnx_names!r}; expected fp32 and int8 names")

    if not heads_path.is_file():
        raise PredictError(
            f"--model {folder}: heads.json is missing (the task names and thresholds); "
            f"rerun vlcd package"
        )
    heads = _read_json(heads_path, "the heads")
    if heads.get("format") != HEADS_FORMAT:
        raise PredictError(
            f"{heads_path}: format is {heads.get('format')!r}, this vlcd reads {HEADS_FORMAT!r}"
        )
    tasks = _field(heads, "tasks", heads_path, list)
    if not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise PredictError(f"{heads_path}: tasks is {tasks!r}; expected task names")
    if "tasks" in pkg and pkg["tasks"] != tasks:
        raise PredictError(
            f"{folder}: package.json's tasks {pkg['tasks']} differ from heads.json's {tasks}; "
            f"the folder mixes two packages, rerun vlcd package"
        )
    points = _field(heads, "operating_points", heads_path, dict)
    thresholds = {}
    for task in tasks:
        point = points.get(task)
        if not isinstance(point, dict) or "threshold" not in point:
            raise PredictError(
                f"{heads_path}: operating_points[{task!r}] has no threshold; rerun vlcd package"
            )
        threshold = point["threshold"]
        if threshold is not None and (
            not isinstance(threshold, int | float) or not 0 <= threshold <= 1
        ):
            raise PredictError(
                f"{heads_path}: operating_points[{task!r}].threshold is {threshold!r}; "
                f"expected a probability in [0, 1], or null (a task without an operating point)"
            )
        thresholds[task] = None if threshold is None else float(threshold)
    zero_shot = heads.get("zero_shot")
    zs_tasks: list[str] = []
    if zero_shot is not None:
        if not isinstance(zero_shot, dict):
            raise PredictError(
                f"{heads_path}: zero_shot is {zero_shot!r}; expected null or an object"
            )
        zs_tasks = _field(zero_shot, "tasks", heads_path, list)
        if not all(isinstance(t, str) and t for t in zs_tasks):
            raise PredictError(f"{heads_path}: zero_shot.tasks is {zs_tasks!r}; expected names")
    return ModelFolder(
        folder=folder,
        name=str(pkg.get("name", folder.name)),
        size=(height, width),
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        input_name=str(input_name),
        tasks=list(tasks),
        thresholds=thresholds,
        zero_shot_tasks=list(zs_tasks),
        onnx={k: folder / onnx_names[k] for k in ("fp32", "int8")},
    )


# ---------------------------------------------------------------------------------------------
# The inputs


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _folder_images(folder: Path) -> list[InputImage]:
    """Every file under ``folder`` (hidden files and folders passed over): images to read, and
    the other files listed as skipped, so that nothing given is dropped without a word."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = Path(dirpath) / name
            why = (
                None
                if _is_image_file(path)
                else f"not an image file ({path.suffix or 'no suffix'})"
            )
            found.append(InputImage(str(path), path, problem=why))
    return found


def _manifest_images(manifest: Path, images_root: Path | None) -> list[InputImage]:
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exn:
        raise PredictError(f"manifest {manifest}: cannot read it ({exn})") from exn
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "image" not in reader.fieldnames:
        raise PredictError(
            f"manifest {manifest}: no 'image' column (columns: {reader.fieldnames or 'none'}); "
            f"a manifest is a CSV with a header row and an 'image' column of paths"
        )
    root = images_root if images_root is not None else manifest.parent
    items = []
    for row in reader:
        value = (row.get("image") or "").strip()
        extra = {k: v or "" for k, v in row.items() if k != "image" and k is not None}
        if not value:
            where = f"{manifest}:{reader.line_num}"
            items.append(InputImage(where, manifest, extra, "empty 'image' field in the manifest"))
            continue
        path = Path(value)
        path = path if path.is_absolute() else root / path
        items.append(InputImage(str(path), path, extra))
    return items


def collect_inputs(
    inputs: Sequence[str | Path], images_root: str | Path | None = None
) -> tuple[list[InputImage], list[str]]:
    """The images of ``inputs`` in order, and the manifest columns to copy (besides ``image``).

    An input is an image file (read whatever its suffix), a folder (searched recursively for
    :data:`IMAGE_SUFFIXES`; its other files are listed as skipped, hidden files and folders are
    passed over) or a manifest: a ``.csv`` with an
    ``image`` column of paths, relative to the manifest's folder, or to ``images_root`` when
    given. Raises :class:`PredictError` for an input that does not exist.
    """
    root = Path(images_root) if images_root is not None else None
    if root is not None and not root.is_dir():
        raise PredictError(f"--images {root}: no such folder")
    items: list[InputImage] = []
    columns: list[str] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            items += _folder_images(path)
        elif path.suffix.lower() == ".csv" and path.is_file():
            rows = _manifest_images(path, root)
            for item in rows:
                columns += [c for c in item.columns if c not in columns]
            items += rows
        elif path.is_file():
            items.append(InputImage(str(given), path))
        else:
            raise PredictError(f"input {given}: no such file or folder")
    return items, columns


# ---------------------------------------------------------------------------------------------
# Reading images


def load_image(path: Path, model: ModelFolder) -> np.ndarray | str:
    """The image at ``path`` as the model's input [3, H, W] float32, or why it cannot be."""
    try:
        img = decode_rgb(path, model.size)
    except FileNotFoundError:
        return "no such file"
    except (IsADirectoryError, PermissionError) as exn:
        return f"unreadable ({exn.strerror})"
    except UnidentifiedImageError:
        return "not an image (PIL recognises no image format in it)"
    except Image.DecompressionBombError as exn:
        return f"too large to decode safely ({exn})"
    except DECODE_ERRORS as exn:
        return f"corrupt or truncated image ({exn})"
    if min(img.size) < MIN_SIDE:
        return f"too small: {img.width}x{img.height} px, needs at least {MIN_SIDE} px on each side"
    return normalised_array(ResizeCover(model.size)(img), model.mean, model.std)


def default_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """``predict: 120/1000 images (12%), 35.2 images/s, ETA 0:25`` on ``stream``: redrawn in
    place in a terminal, else written every ``every_s`` seconds and once at the end."""

    def __init__(self, total: int, stream: TextIO | None, every_s: float = PROGRESS_EVERY_S):
        self.total, self.stream, self.every_s = total, stream, every_s
        self.done = 0
        self.start = self.last = time.monotonic()
        try:
            self.terminal = stream is not None and stream.isatty()
        except (AttributeError, ValueError):
            self.terminal = False

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"predict: {self.done}/{self.total} images ({100 * self.done / self.total:.0f}%)"
        text += f", {rate:.1f} images/s"
        if 0 < self.done < self.total and rate > 0:
            left = int((self.total - self.done) / rate)
            text += f", ETA {left // 60}:{left % 60:02d}"
        return text

    def update(self, n: int) -> None:
        self.done += n
        if self.stream is None:
            return
        if self.terminal:
            print(f"\r{self.line()}", end="", file=self.stream, flush=True)
        elif time.monotonic() - self.last >= self.every_s and self.done < self.total:
            print(f"{time.strftime('%H:%M:%S')} {self.line()}", file=self.stream, flush=True)
            self.last = time.monotonic()

    def close(self) -> None:
        if self.stream is None:
            return
        if self.terminal:
            print(f"\r{self.line()}", file=self.stream, flush=True)
        else:
            print(f"{time.strftime('%H:%M:%S')} {self.line()}", file=self.stream, flush=True)


# ---------------------------------------------------------------------------------------------
# Predicting


def open_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session of ``path`` using ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exn:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise PredictError(
            f"{path}: ONNX Runtime cannot load it ({exn}); rerun vlcd package"
        ) from exn


def _check_session(session: Any, model: ModelFolder, path: Path) -> list[str]:
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if model.input_name not in inputs:
        raise PredictError(f"{path}: no input {model.input_name!r} (it has {inputs})")
    wanted = ["logits"] + (["zero_shot"] if model.zero_shot_tasks else [])
    absent = [name for name in wanted if name not in outputs]
    if absent:
        raise PredictError(f"{path}: no output {', '.join(absent)} (it has {outputs})")
    return wanted


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Float64 ``1 / (1 + exp(-logit))``, without overflow for large |logit|."""
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def _number(value: float) -> str:
    return format(float(value), ".9g")


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)


def predict(
    model_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path = "predictions.csv",
    *,
    images_root: str | Path | None = None,
    int8: bool = False,
    batch_size: int = 16,
    threads: int | None = None,
    progress: TextIO | None = None,
    log: Callable[[str], None] | None = None,
) -> PredictResult:
    """Predict every image of ``inputs`` with the model folder ``model_dir``; write ``out``.

    ``out`` gets one row per readable image: ``image``, the manifests' other columns, then per
    task ``<task>_probability`` (the float64 sigmoid of the model's logit, 9 significant digits)
    and ``<task>_flag`` (1 when the probability is at least heads.json's threshold), then
    ``zero_shot_<task>`` per zero-shot task. ``<out stem>.skipped.csv`` lists the others
    (``image``, ``reason``). ``int8`` uses the quantized model; ``threads`` (default: every
    core) is ONNX Runtime's and the decoders' thread count; ``progress`` (e.g. ``sys.stderr``)
    gets the progress line (None: none); ``log`` one line saying what runs. Raises
    :class:`PredictError` when no image could be predicted (the skipped list is still written)
    or for a bad model folder or input.
    """
    if batch_size < 1:
        raise PredictError(f"--batch-size {batch_size}: must be at least 1")
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise PredictError(f"--threads {threads}: must be at least 1")
    model = load_model_folder(model_dir)
    onnx_path = model.onnx["int8" if int8 else "fp32"]
    if not onnx_path.is_file():
        hint = "rerun vlcd package, or drop --int8" if int8 else "rerun vlcd package"
        raise PredictError(f"--model {model.folder}: {onnx_path.name} is missing; {hint}")
    out = Path(out)
    skipped_csv = skipped_path(out)
    if out.is_dir():
        raise PredictError(
            f"--out {out}: is a folder; give a file name, e.g. {out}/predictions.csv"
        )
    items, extra = collect_inputs(inputs, images_root)
    if any(Path(i).resolve() == out.resolve() for i in inputs):
        raise PredictError(f"--out {out} is one of the inputs; choose another file")
    if not items:
        raise PredictError(
            f"no images found in {', '.join(map(str, inputs))} (folders are searched for "
            f"{', '.join(IMAGE_SUFFIXES)})"
        )
    columns = model.columns()
    clash = [c for c in extra if c in columns]
    if clash:
        raise PredictError(
            f"manifest column(s) {', '.join(clash)} would overwrite prediction columns; "
            f"rename them in the manifest"
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exn:
        raise PredictError(f"--out {out}: cannot create its folder ({exn.strerror})") from exn
    session = open_session(onnx_path, threads)
    wanted = _check_session(session, model, onnx_path)
    if log is not None:
        log(
            f"{model.name}: {onnx_path.name}, input {model.size[0]}x{model.size[1]}, "
            f"{len(items)} images, batch {batch_size}, {threads} threads"
        )

    def read(item: InputImage) -> np.ndarray | str:
        return item.problem if item.problem is not None else load_image(item.path, model)

    rows: list[list[str]] = []
    skipped: list[list[str]] = []
    bar = _Progress(len(items), progress)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            loaded = list(pool.map(read, chunk))
            good = [(it, x) for it, x in zip(chunk, loaded, strict=True) if not isinstance(x, str)]
            skipped += [
                [it.image, x] for it, x in zip(chunk, loaded, strict=True) if isinstance(x, str)
            ]
            if good:
                batch = np.stack([x for _, x in good])
                got = dict(zip(wanted, session.run(wanted, {model.input_name: batch}), strict=True))
                rows += _rows(model, [it for it, _ in good], extra, got, onnx_path)
            bar.update(len(chunk))
    bar.close()

    _write_csv(skipped_csv, ["image", "reason"], skipped)
    if not rows:
        raise PredictError(
            f"no image could be predicted: all {len(skipped)} were skipped (the reasons are in "
            f"{skipped_csv})"
        )
    _write_csv(out, ["image", *extra, *columns], rows)
    return PredictResult(out, skipped_csv, len(rows), len(skipped), onnx_path)


def _rows(
    model: ModelFolder,
    items: list[InputImage],
    extra: list[str],
    got: dict[str, np.ndarray],
    onnx_path: Path,
) -> list[list[str]]:
    logits = np.asarray(got["logits"])
    n, t = len(items), len(model.tasks)
    if logits.shape != (n, t):
        raise PredictError(
            f"{onnx_path}: logits has shape {list(logits.shape)} for {n} images, expected "
            f"[{n}, {t}] ({t} tasks in heads.json); the folder mixes two packages"
        )
    probabilities = sigmoid(logits)
    zero_shot = np.zeros((n, 0))
    if model.zero_shot_tasks:
        zero_shot = np.asarray(got["zero_shot"], dtype=np.float64)
        if zero_shot.shape != (n, len(model.zero_shot_tasks)):
            raise PredictError(
                f"{onnx_path}: zero_shot has shape {list(zero_shot.shape)}, expected "
                f"[{n}, {len(model.zero_shot_tasks)}] (heads.json's zero_shot tasks)"
            )
    thresholds = [model.thresholds[task] for task in model.tasks]
    rows = []
    for i, item in enumerate(items):
        row = [item.image, *(item.columns.get(c, "") for c in extra)]
        for p, threshold in zip(probabilities[i], thresholds, strict=True):
            flag = "" if threshold is None else "1" if p >= threshold else "0"
            row += [_number(p), flag]
        row += [_number(v) for v in zero_shot[i]]
        rows.append(row)
    return rows
