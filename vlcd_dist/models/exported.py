"""The exported-student file: what predistill and distill hand on, and eval and export read.

``<name>.safetensors`` holds the plain Student state_dict, with the build info (what
``create_student(**build)`` needs: name, embed_dim, image_size) and the training provenance in
its metadata; ``<name>.json`` beside it repeats that info for people and tools. Both are written
atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vlcd_dist.io import save_tensors, write_json
from vlcd_dist.models.student import create_student
from vlcd_dist.models.weights import ModelError, load_into

STUDENT_FORMAT = "vlcd-student/1"


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
    info = {"format": STUDENT_FORMAT, "build": build, **extra}
    source = student.state_dict() if state is None else state
    path = folder / f"{name}.safetensors"
    save_tensors(source, path, metadata={"format": STUDENT_FORMAT, "info": json.dumps(info)})
    write_json(folder / f"{name}.json", info)
    return path


def read_student_info(path: str | Path) -> dict[str, Any]:
    """The build info stored in an exported student file (its safetensors metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != STUDENT_FORMAT:
        raise ModelError(
            f"{path} is not an exported student ({STUDENT_FORMAT}); export one with "
            "`vlcd predistill` or `vlcd distill`"
        )
    return json.loads(meta["info"])


def load_exported_student(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an exported student and load its weights. Returns (student, info)."""
    info = read_student_info(path)
    build = info["build"]
    student = create_student(
        build["name"], embed_dim=build["embed_dim"], image_size=build["image_size"]
    )
    load_into(student, load_file(str(path)), source=str(path))
    return student, info


def resolve_student_file(init_from: str | Path, name: str) -> Path:
    """The exported weights of student ``name`` given a file, an export folder or a stage
    output folder (which holds export/)."""
    path = Path(init_from).expanduser()
    candidates = (
        [path]
        if path.is_file()
        else [path / f"{name}.safetensors", path / "export" / f"{name}.safetensors"]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"no exported weights for student {name!r} under {path} (looked for "
        f"{', '.join(str(c) for c in candidates)}); run `vlcd predistill` first, or drop "
        "init_from to start from the configured initialisation"
    )
