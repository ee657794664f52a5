"""The teacher-feature cache on disk: the frozen teacher's image embedding of every seeded view
of every sample of one shard set, written once by ``vlcd cache-teacher`` and read by runs with
``teacher.cache`` instead of a teacher forward.

Layout of a cache folder::

    manifest.json             what the cache was written for (below); written last, so a
                              folder without it is an unfinished cache
    <shard>.safetensors       per shard of the set: "z" [n, A, d] (fp16 or fp32), the keys of
                              its n samples in the metadata ("keys", a JSON list), row order

manifest.json holds ``format``, ``stage``, ``dtype``, ``views`` (A), ``embed_dim``,
``logit_scale`` and three identities a run checks before it reads anything:

- ``teacher``: what makes the embeddings (source, label, a hash of the image weights, autocast
  dtype; :func:`vlcd_dist.train.teacher_cache.teacher_identity`) and its ``hash``;
- ``shards``: the shard set's file names and sample counts (:func:`shard_fingerprint`);
- ``recipe``: the augmentation that draws the views (:func:`view_recipe`).

A cache that differs from the run in any of them is refused, naming the field (:meth:`check`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from ..io import save_tensors, write_json
from .storage import basename
from .stream import Decoder, ShardSet, StreamConfig, _Skip, iter_tar

FORMAT = "vlcd-teacher-cache/1"
MANIFEST = "manifest.json"
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def shard_fingerprint(shard_set: ShardSet) -> dict[str, Any]:
    """The shard set's identity: file names and sample counts (not where it lives: a set
    copied to another folder or bucket keeps its cache), and their hash."""
    files = {basename(u): int(n) for u, n in zip(shard_set.urls, shard_set.sizes, strict=True)}
    return {"files": files, "hash": digest(files)}


def view_recipe(stream: StreamConfig) -> dict[str, Any]:
    """What decides the pixels of a seeded view: input size, crop range, colour jitter, seed,
    number of views."""
    return {
        "image_size": [int(v) for v in stream.image_size],
        "crop_scale": [float(v) for v in stream.crop_scale],
        "color_jitter": [float(v) for v in stream.color_jitter],
        "seed": int(stream.seed),
        "views": int(stream.views),
    }


def shard_file(folder: Path, shard_url: str) -> Path:
    """The cache file of one shard."""
    name = basename(shard_url)
    stem = name[: -len(".tar")] if name.endswith(".tar") else name
    return folder / f"{stem}.safetensors"


def write_shard(path: Path, keys: list[str], z: torch.Tensor) -> None:
    """One shard's embeddings ``z`` [n, A, d] and their keys, atomically."""
    if z.shape[0] != len(keys):
        raise ValueError(f"{len(keys)} keys for {z.shape[0]} rows")
    save_tensors({"z": z}, path, metadata={"keys": json.dumps(keys), "format": FORMAT})


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """manifest.json, atomically: the mark of a complete cache."""
    path = folder / MANIFEST
    write_json(path, {"format": FORMAT, **manifest}, sort_keys=True)
    return path


def _differences(kind: str, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    out = []
    for name in sorted(set(ours) | set(theirs)):
        if name == "hash":
            continue
        a, b = theirs.get(name), ours.get(name)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                gone = sorted(set(a) - set(b))
                new = sorted(set(b) - set(a))
                changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
                out.append(
                    f"{kind}.{name}: the cache has {len(gone)} entr(y/ies) this run lacks "
                    f"{gone[:3]}, this run has {len(new)} the cache lacks {new[:3]}, "
                    f"{len(changed)} differ {changed[:3]}"
                )
            else:
                out.append(f"{kind}.{name}: the cache has {a!r}, this run {b!r}")
    return out


@dataclass
class TeacherCache:
    """A cache folder: its manifest, then (after :meth:`load`) every embedding in memory.

    ``lookup(keys, views)`` -> [B, d] fp32, the stored z_T of each (key, view).
    """

    folder: Path
    manifest: dict[str, Any]
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _z: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def open(cls, folder: str | Path) -> TeacherCache:
        """Read the manifest of ``folder``; a missing or foreign one raises a DataError."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            what = "has no" if folder.is_dir() else "does not exist, so no"
            raise DataError(
                f"teacher.cache={folder}: {what} {MANIFEST} (an unfinished or missing cache); "
                "write it with `vlcd cache-teacher --config RECIPE --views A --out DIR`"
            )
        try:
            manifest = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exn:
            raise DataError(f"{path} is not JSON ({exn}); write the cache again") from exn
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else None
            raise DataError(f"{path}: format {got!r}, expected {FORMAT!r}; write the cache again")
        return cls(folder, manifest)

    @property
    def views(self) -> int:
        """A: stored views per sample."""
        return int(self.manifest["views"])

    def check(
        self,
        *,
        stage: str,
        teacher: dict[str, Any],
        shards: dict[str, Any],
        recipe: dict[str, Any],
    ) -> None:
        """Refuse a cache written for another stage, teacher, shard set or augmentation
        recipe: a DataError naming every field that differs and what to do."""
        m = self.manifest
        problems: list[str] = []
        if m.get("stage") != stage:
            problems.append(f"stage: the cache was written for {m.get('stage')!r}, this run is "
                            f"{stage!r}")  # fmt: skip
        if m.get("teacher", {}).get("hash") != teacher.get("hash"):
            problems += _differences("teacher", teacher, m.get("teacher", {})) or [
                "teacher: another teacher (hashes differ)"
            ]
        if m.get("shards", {}).get("hash") != shards.get("hash"):
            problems += _differences("shards", shards, m.get("shards", {}))
        problems += _differences("recipe", recipe, m.get("recipe", {}))
        if problems:
            raise DataError(
                f"teacher.cache={self.folder} was written for another "
                + "/".join(sorted({p.split(":")[0].split(".")[0] for p in problems}))
                + ": "
                + "; ".join(problems)
                + ". Write a cache for this recipe (`vlcd cache-teacher --config RECIPE "
                f"--stage {stage} --views A --out DIR`) or unset teacher.cache"
            )

    def load(self) -> TeacherCache:
        """Read every shard's embeddings into memory (fp32)."""
        from safetensors import safe_open

        blocks: list[torch.Tensor] = []
        index: dict[str, int] = {}
        for name in sorted(self.manifest["shards"]["files"]):
            path = shard_file(self.folder, name)
            if not path.is_file():
                raise DataError(f"{path} is missing from teacher.cache; write the cache again")
            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = json.loads((f.metadata() or {})["keys"])
                    z = f.get_tensor("z")
            except (OSError, KeyError, ValueError, RuntimeError) as exn:
                raise DataError(f"cannot read {path} ({exn}); write the cache again") from exn
            if z.ndim != 3 or z.shape[0] != len(keys) or z.shape[1] != self.views:
                raise DataError(
                    f"{path}: z has shape {tuple(z.shape)}, expected [{len(keys)}, "
                    f"{self.views}, d]; write the cache again"
                )
            for key in keys:
                if key in index:
                    raise DataError(f"{path}: sample key {key!r} is in two shards")
                index[key] = len(index)
            blocks.append(z.float())
        self._index = index
        d = int(self.manifest["embed_dim"])
        self._z = torch.cat(blocks) if blocks else torch.zeros(0, self.views, d)
        return self

    def __len__(self) -> int:
        return len(self._index)

    def lookup(self, keys: list[str], views: list[int]) -> torch.Tensor:
        """The stored z_T [B, d] (fp32) of view ``views[b]`` of sample ``keys[b]``."""
        if self._z is None:
            raise RuntimeError("TeacherCache.lookup before load()")
        absent = [k for k in keys if k not in self._index]
        if absent:
            raise DataError(
                f"teacher.cache={self.folder} has no embedding of sample(s) {absent[:3]}; "
                "write the cache again for this shard set"
            )
        rows = torch.tensor([self._index[k] for k in keys], dtype=torch.long)
        return self._z[rows, torch.tensor(views, dtype=torch.long)]


def iter_views(
    shard_set: ShardSet, stream: StreamConfig, url: str, views: int
) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """(key, the [0, 1] images of its views 0..views-1) of every sample of one shard whose
    image decodes, exactly as a run with ``data.views`` regenerates them. Samples the loader
    would skip for their image are left out; a damaged shard keeps the samples before the
    damage (``strict`` raises instead)."""
    decoder = Decoder(shard_set.kind, shard_set.tasks, stream)
    wanted = list(range(views))
    try:
        for raw in iter_tar(url, stream.storage):
            if "jpg" not in raw:
                if stream.strict:
                    raise DataError(f"{url}: sample {raw['__key__']!r} has no jpg member")
                continue
            try:
                images = decoder.view_images(raw, wanted)
            except _Skip as skip:
                if stream.strict:
                    raise DataError(str(skip)) from skip
                continue
            yield raw["__key__"], images
    except _Skip as skip:
        if stream.strict:
            raise DataError(str(skip)) from skip
