"""Files written whole or not at all, and the checks that go with them.

Every file that marks progress (a finished stage's summary.json, a checkpoint's small files, an
exported student, an anchor cache, a shard set's sizes.json) goes through :func:`atomic_path`:
it is written under a temporary name beside its final one and renamed into place, so a kill
leaves the old file or the new one, never a part of one. This module imports neither torch nor
any training code; safetensors' torch half is imported only by :func:`save_tensors`.

A full disk shows up as :func:`is_disk_full` errors; :func:`disk_full_after` makes the writes
of this module fail that way on purpose (tests: a save that runs out of space part-way).
"""

from __future__ import annotations

import contextlib
import errno
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
        _charge(tmp)
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


_budget: list[int] = []
"""The bytes :func:`disk_full_after` still lets through (empty: no limit)."""


@contextlib.contextmanager
def disk_full_after(nbytes: int) -> Iterator[None]:
    """Tests only: inside the block, writes through :func:`atomic_path` (every function of this
    module) fail with ENOSPC once ``nbytes`` have been written, as on a disk that fills up: the
    file that crosses the limit is cut there, then the write fails and its temporary file is
    removed like any failed atomic write. Files written otherwise (another library's) are not
    counted."""
    _budget.append(int(nbytes))
    try:
        yield
    finally:
        _budget.pop()


def _charge(tmp: Path) -> None:
    """Count a finished temporary file against :func:`disk_full_after`'s limit."""
    if not _budget:
        return
    size = tmp.stat().st_size
    if size > _budget[-1]:
        with open(tmp, "r+b") as f:
            f.truncate(_budget[-1])
        _budget[-1] = 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    _budget[-1] -= size


DISK_FULL_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")
"""How a full disk (ENOSPC) or quota (EDQUOT) reads in errors that carry no errno, such as
safetensors' ("I/O error: No space left on device (os error 28)")."""


def is_disk_full(exn: BaseException) -> bool:
    """True when ``exn`` (or an error it was raised from) says the disk or quota is full."""
    seen: set[int] = set()
    cur: BaseException | None = exn
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(cur) for text in DISK_FULL_TEXT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def tree_bytes(root: str | Path) -> int:
    """Total size of the files under ``root`` (0 when it does not exist)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


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
