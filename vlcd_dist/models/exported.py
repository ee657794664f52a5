"""The exported-student file: what predistill and distill hand on, and eval and export read.

``<name>.safetensors`` holds the plain Student state_dict, with the build info (what
``create_student(**build)`` needs: name, embed_dim, image_size), the input the student was
trained on (``"input"``: its mean, std and input size, the last the same as the build's
image_size) and the training provenance in its metadata; ``<name>.json`` beside it repeats
that info for people and tools. Both are written atomically.

Format ``vlcd-student/2`` stores ``"input"``, and loading normalises with those statistics
(not whatever timm's ``pretrained_cfg`` says at load time). ``vlcd-student/1`` files, without
it, are still read: their statistics are derived from timm's ``pretrained_cfg`` as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vlcd_dist.io import save_tensors, write_json
from vlcd_dist.models.preprocess import ImageInput
from vlcd_dist.models.student import Student, create_student
from vlcd_dist.models.weights import ModelError, load_into

STUDENT_FORMAT = "vlcd-student/2"
"""What :func:`export_student` writes."""
READABLE_FORMATS = ("vlcd-student/1", STUDENT_FORMAT)
"""What :func:`read_student_info` reads (/1 has no stored "input")."""

logger = logging.getLogger(__name__)


def export_student(
    student: torch.nn.Module,
    folder: str | Path,
    spec: dict[str, Any],
    extra: dict[str, Any],
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``folder/<name>.safetensors`` (plain Student state_dict, or ``state`` when the
    backend supplies full-precision weights) and ``<name>.json`` (what rebuilds it:
    create_student(**build) then load the weights). Returns the weights path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = spec["name"]
    build = {
        "name": name,
        "embed_dim": int(student.embed_dim),
        "image_size": list(student.image_size) if student.image_size else None,
    }
    # The statistics it was trained with, stored: a later timm may state others.
    stats = {
        "mean": [float(v) for v in student.mean],
        "std": [float(v) for v in student.std],
        "input_size": build["image_size"],
    }
    info = {"format": STUDENT_FORMAT, "build": build, "input": stats, **extra}
    source = student.state_dict() if state is None else state
    path = folder / f"{name}.safetensors"
    save_tensors(source, path, metadata={"format": STUDENT_FORMAT, "info": json.dumps(info)})
    write_json(folder / f"{name}.json", info)
    return path


def read_student_info(path: str | Path) -> dict[str, Any]:
    """The build info and provenance of an exported student, from its ``.safetensors``
    metadata or from the ``.json`` written beside it (the same dict either way)."""
    path = Path(path)
    how = "export one with `vlcd predistill` or `vlcd distill`"
    if path.suffix == ".json":
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exn:
            raise ModelError(f"{path}: cannot read the exported student's JSON ({exn})") from exn
        if not isinstance(info, dict) or info.get("format") not in READABLE_FORMATS:
            raise ModelError(
                f'{path} is not the JSON of an exported student (no "format": '
                f"{STUDENT_FORMAT!r}); pass the {{student}}.json or .safetensors that training "
                f"wrote into OUT/export/, or {how}"
            )
    else:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as exn:  # noqa: BLE001 - safetensors raises several types
            raise ModelError(f"{path}: not a readable safetensors file ({exn})") from exn
        if meta.get("format") not in READABLE_FORMATS:
            raise ModelError(f"{path} is not an exported student ({STUDENT_FORMAT}); {how}")
        info = json.loads(meta["info"])
    build = info.get("build")
    if not isinstance(build, dict) or not {"name", "embed_dim", "image_size"} <= set(build):
        raise ModelError(
            f'{path}: exported student without its build info ("build": {{name, embed_dim, '
            f"image_size}}); {how}"
        )
    if info["format"] != "vlcd-student/1":
        stored_input(info, path)  # checked here, so that every reader sees a valid one
    return info


def stored_input(info: dict[str, Any], path: str | Path = "") -> dict[str, Any] | None:
    """The stored {"mean": [3], "std": [3], "input_size": [H, W] or None} of an exported
    student; None for a ``vlcd-student/1`` file (which stores none)."""
    if info.get("format") == "vlcd-student/1":
        return None
    stats = info.get("input")
    where = f"{path}: " if path else ""
    if not isinstance(stats, dict) or not {"mean", "std"} <= set(stats):
        raise ModelError(
            f'{where}{info.get("format")} student without its input statistics ("input": '
            '{"mean": [3], "std": [3], "input_size"}); re-export it with `vlcd distill`'
        )
    checked = ImageInput(stats["mean"], stats["std"], what=f"{where}stored input").stats()
    return {**checked, "input_size": stats.get("input_size")}


def stored_image_size(info: dict[str, Any]) -> tuple[int, int] | None:
    """(H, W) an exported student was trained at (its build info), None when it has none."""
    size = info["build"].get("image_size")
    return None if size is None else (int(size[0]), int(size[1]))


def try_student_info(path: str | Path) -> dict[str, Any] | None:
    """:func:`read_student_info`, or None for any other file (a plain state dict, the teacher,
    the anchors)."""
    try:
        return read_student_info(path)
    except ModelError:
        return None


def load_exported_student(
    path: str | Path, image_size: tuple[int, int] | None = None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an exported student and load its weights. Returns (student, info).
    ``image_size``: (H, W) to build for when the file stores none (its stored size wins).

    The student normalises with the stored mean and std (``vlcd-student/2``); a
    ``vlcd-student/1`` file's are derived from timm's ``pretrained_cfg`` at load."""
    info = read_student_info(path)
    build = info["build"]
    size = stored_image_size(info) or image_size
    student = create_student(build["name"], embed_dim=int(build["embed_dim"]), image_size=size)
    load_into(student, load_file(str(path)), source=str(path))
    stats = stored_input(info, path)
    if stats is not None:
        use_stored_input(student, stats)
    return student, info


def use_stored_input(student: Student, stats: dict[str, Any]) -> None:
    """Make ``student`` normalise with stored statistics (:func:`stored_input`), logging when
    they differ from what timm states for its backbone now."""
    derived = student.input
    student.input = ImageInput(stats["mean"], stats["std"], what=f"student {student.name}")
    if derived.stats()["mean"] != stats["mean"] or derived.stats()["std"] != stats["std"]:
        logger.warning(
            "student %s: using its stored mean %s / std %s, not timm's current %s / %s",
            student.name,
            stats["mean"],
            stats["std"],
            derived.stats()["mean"],
            derived.stats()["std"],
        )


def resolve_student_file(init_from: str | Path, name: str | None = None) -> Path:
    """The exported weights (``.safetensors``) of student ``name`` given that file, the
    ``.json`` beside it, an export folder or a stage output folder (which holds export/).

    ``name`` may be None when the folder holds exactly one exported student.
    """
    path = Path(init_from).expanduser()
    if path.is_file():
        if path.suffix != ".json":
            return path
        weights = path.with_suffix(".safetensors")
        if weights.is_file():
            return weights
        raise ModelError(
            f"{path}: no {weights.name} beside it; training writes the two together into "
            "OUT/export/ (copy both, or pass the .safetensors)"
        )
    if name is None:
        found = sorted(
            {
                f.stem
                for d in (path, path / "export")
                for f in d.glob("*.safetensors")
                if try_student_info(f) is not None
            }
        )
        if len(found) != 1:
            raise ModelError(
                f"{path} holds {'no' if not found else len(found)} exported students"
                + (f" ({', '.join(found)})" if found else "")
                + "; name the student (e.g. --student NAME), or pass its .safetensors"
            )
        name = found[0]
    candidates = [path / f"{name}.safetensors", path / "export" / f"{name}.safetensors"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"no exported weights for student {name!r} under {path} (looked for "
        f"{', '.join(str(c) for c in candidates)}); run `vlcd predistill` first, or drop "
        "init_from to start from the configured initialisation"
    )
