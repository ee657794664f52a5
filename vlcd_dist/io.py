"""Files written whole or not at all, and the checks that go with them.

Every file that marks progress (a finished stage's summary.json, a checkpoint's small files, an
exported student, an anchor cache, a shard set's sizes.json) goes through :func:`atomic_path`:
it is written under a temporary name beside its final one and renamed into place, so a kill
leaves the old file or the new one, never a part of one. This module imports neither torch nor
any training code; safetensors' torch half is imported only by :func:`save_tensors`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, rename it
    to ``path`` (with ``fsync``, the file and its folder are flushed to disk first). On an
    error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str, fsync: bool = False) -> None:
    """Replace ``path`` with ``text`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text)


def write_json(
    path: str | Path, obj: Any, indent: int | None = 1, sort_keys: bool = False, fsync: bool = False
) -> None:
    """Replace ``path`` with ``obj`` as JSON (and a final newline), atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n", fsync=fsync)


def save_tensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | Path,
    metadata: Mapping[str, str] | None = None,
    fsync: bool = False,
) -> Path:
    """Write ``tensors`` (moved to CPU, contiguous) as a safetensors file, atomically."""
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        save_file(plain, str(tmp), metadata=dict(metadata) if metadata else None)
    return path


def fsync_file(path: str | Path) -> None:
    """Flush one file's data to disk."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk, where the filesystem allows."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under ``root`` (and root itself)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safetensors_problem(path: str | Path) -> str | None:
    """None when ``path`` is a readable safetensors file (its header parses and the tensors it
    describes end exactly at the end of the file); otherwise what is wrong. Reads the header
    only."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, too short for a safetensors file"
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > size - 8:
            return f"{size} bytes, shorter than its header says (truncated, or not safetensors)"
        try:
            header = json.loads(f.read(length))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exn:
            return f"unreadable safetensors header ({type(exn).__name__})"
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        return f"{size} bytes, its header describes {expected} (truncated or altered)"
    return None


def json_problem(path: str | Path) -> str | None:
    """None when ``path`` parses as JSON; otherwise why not."""
    try:
        json.loads(Path(path).read_text())
    except (OSError, ValueError) as exn:
        return f"unreadable JSON ({exn})"
    return None
