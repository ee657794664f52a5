"""Streaming WebDataset shards into training batches, identically on every rank.

Pipeline, per epoch::

    shard list (brace pattern or folder: local, s3:// or http(s)://; sizes from sizes.json)
      -> deterministic per-epoch shuffle of shard order, or resampled shards
      -> split by rank (node) -> split by DataLoader worker
      -> tar reading (stdlib tarfile, streaming; remote shards through .storage, with
         retries) -> shuffle buffer of raw samples
      -> decode (PIL) + transforms -> batches in the worker -> rank-level cap

Equal batches on every rank: every rank computes the whole epoch's plan from ``sizes.json``
(which shards each rank and worker reads, so how many samples each produces) and stops after
the smallest rank's batch count. A worker that loses samples to bad data refills its quota by
re-reading its own shards, so a skipped sample can never leave one rank a batch short (which
would hang the collectives of the training step).

Bad samples (corrupt image, missing key, bad JSON, undecodable text, truncated tar) are skipped
and counted per kind; the counts travel with each batch (``batch["skipped"]``) and add up in
:attr:`ShardLoader.skipped`. ``strict=True`` raises :class:`DataError` naming shard and key.
Nothing is ever unpickled: only ``jpg``, ``txt``, ``json`` and ``cls`` members are read.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..distributed import dist_info
from ..errors import DataError
from .imaging import DECODE_ERRORS, decode_rgb
from .storage import (
    OnRetry,
    StorageConfig,
    StorageError,
    basename,
    check_location,
    exists,
    is_missing,
    is_remote,
    join,
    missing,
    open_read,
    parent,
    read_bytes,
)
from .transforms import eval_transform, train_transform
from .views import pick_view, seeded_view, view_seed

SKIP_KINDS = ("corrupt_image", "missing_key", "bad_json", "bad_text", "truncated_tar")
RETRIES = "retries"  # the counter of reads retried after a transient storage error
READ_EXTENSIONS = ("jpg", "txt", "json", "cls")


@dataclass
class StreamConfig:
    """How to stream one shard set."""

    shards: str = "shards/demo/placenta"  # folder holding sizes.json, or a brace pattern of .tar
    split: str | None = None  # placenta shards: "train" or "test" (placenta-{split}-*.tar)
    batch_size: int = 32  # samples per batch on each rank
    image_size: tuple[int, int] = (224, 224)  # (H, W) of the image tensors
    train: bool = True  # random crop/flip/jitter if True; resize + centre crop if False
    shuffle: bool = True  # shuffle shard order per epoch and samples in a buffer
    shuffle_buffer: int = 512  # raw samples held per worker for shuffling (bytes, not tensors)
    resampled: bool = False  # draw shards with replacement instead of one pass per epoch
    samples_per_epoch: int | None = None  # resampled only: global samples per epoch
    seed: int = 0  # seeds shard order, sample order and augmentation
    num_workers: int = 2  # DataLoader worker processes per rank
    drop_last: bool = False  # drop each worker's final partial batch
    strict: bool = False  # raise on the first bad sample instead of skipping it
    equal_batches: bool = True  # cap every rank at the smallest rank's batch count
    crop_scale: tuple[float, float] = (0.5, 1.0)  # train: random resized crop's area range
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.02)  # train: b, c, s, hue
    storage: StorageConfig = field(default_factory=StorageConfig)  # remote shard sets: access
    views: int = 0  # train: > 0 draws seeded views (data/views.py), one of this many per epoch

    def validate(self) -> None:
        self.storage.validate()
        if self.views < 0:
            raise DataError(f"data.views must be >= 0 (0: unseeded augmentation), got {self.views}")
        if self.batch_size < 1:
            raise DataError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise DataError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.split not in (None, "train", "test"):
            raise DataError(f"data.split must be 'train', 'test' or empty, got {self.split!r}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise DataError(
                f"data.image_size must be (H, W) of at least 8 px, got {self.image_size}"
            )
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise DataError(
                f"data.crop_scale must be [min, max] with 0 < min <= max <= 1, got "
                f"{list(self.crop_scale)}"
            )
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            raise DataError(
                "data.color_jitter must be [brightness, contrast, saturation, hue], each >= 0 "
                f"and hue <= 0.5, got {list(self.color_jitter)}"
            )


@dataclass
class ShardSet:
    """A resolved shard set: URLs, samples per shard, and the task names it carries."""

    urls: list[str]
    sizes: list[int]
    tasks: list[str] = field(default_factory=list)
    kind: str = "natural"  # "placenta" (jpg+txt+json) or "natural" (jpg)

    @property
    def total(self) -> int:
        return sum(self.sizes)


def _read_json(url: str, storage: StorageConfig) -> Any:
    try:
        return json.loads(read_bytes(url, storage))
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise DataError(f"cannot read {url}: {exn}") from exn


def _read_sizes(url: str, storage: StorageConfig, missing_text: str) -> dict[str, int]:
    """sizes.json; when it is not there, ``missing_text`` (and for a remote set, why: no such
    bucket, no such object, HTTP 404)."""
    if not is_remote(url) and not Path(url).exists():
        raise DataError(missing_text)
    try:
        return _read_json(url, storage)
    except StorageError as exn:
        if is_missing(exn):
            raise DataError(f"{missing_text} ({exn})") from None
        raise


def _is_pattern(spec: str) -> bool:
    """A brace pattern or list of shards, not a folder (a remote folder cannot be asked)."""
    return (
        any(c in spec for c in "{,")
        or spec.startswith("pipe:")
        or (is_remote(spec) and spec.endswith(".tar"))
    )


def resolve_shards(
    spec: str, split: str | None = None, storage: StorageConfig | None = None
) -> ShardSet:
    """Find the shards and their sizes for a folder (local, ``s3://bucket/prefix`` or
    ``http(s)://host/path``) or a brace pattern of shards such as
    ``/data/placenta/placenta-train-{000000..000009}.tar``; ``sizes.json`` and ``info.json``
    are read beside them. Missing files, and for remote sets a wrong endpoint, bucket or
    credentials, raise a :class:`DataError` that names the URL and the cause."""
    storage = storage or StorageConfig()
    check_location(spec)
    remote = is_remote(spec)
    if not remote and not Path(spec).exists() and not _is_pattern(spec):
        raise DataError(
            f"no such folder: {spec} (a shard set is a folder written by `vlcd shards`, or a "
            "brace pattern of .tar files beside a sizes.json)"
        )
    if (remote and not _is_pattern(spec)) or (not remote and Path(spec).is_dir()):
        folder = spec.rstrip("/") if remote else spec
        sizes_file = join(folder, "sizes.json")
        sizes_map = _read_sizes(
            sizes_file,
            storage,
            f"{folder} has no sizes.json; it is written by `vlcd shards`. For shards from "
            'elsewhere, write one: {"name.tar": samples, ...}',
        )
        names = sorted(sizes_map)
        if split:
            names = [n for n in names if n.startswith(f"placenta-{split}-")]
        urls = [join(folder, n) for n in names]
    else:
        urls = [u for part in spec.split(",") for u in braceexpand.braceexpand(part.strip())]
        folder = parent(urls[0]) if urls else parent(spec)
        sizes_file = join(folder, "sizes.json")
        sizes_map = _read_sizes(
            sizes_file,
            storage,
            f"no sizes.json beside {urls[0] if urls else spec}; every shard set needs one so "
            "that epochs and steps are known",
        )
        names = [basename(u) for u in urls]
    if not urls:
        what = f" for split {split!r}" if split else ""
        raise DataError(f"no shards found{what} in {spec}")
    listed = [n for n in names if n not in sizes_map]
    if listed:
        raise DataError(f"{sizes_file} has no entry for {listed[:5]}; rewrite it or the shards")
    absent = missing(urls, storage)
    if absent:
        raise DataError(f"{len(absent)} shard file(s) listed but not found, e.g. {absent[0]}")
    info_file = join(folder, "info.json")
    info = _read_json(info_file, storage) if exists(info_file, storage) else {}
    kind = info.get("kind") or ("placenta" if names[0].startswith("placenta") else "natural")
    return ShardSet(urls, [int(sizes_map[n]) for n in names], list(info.get("tasks", [])), kind)


# --------------------------------------------------------------------------------------------
# Reading tar shards


class _Skip(Exception):
    def __init__(self, kind: str, url: str, key: str, detail: str):
        super().__init__(f"{url}: sample {key!r}: {kind}: {detail}")
        self.kind = kind


def iter_tar(
    url: str, storage: StorageConfig | None = None, on_retry: OnRetry | None = None
) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard: dicts with ``__key__``, ``__url__`` and bytes per extension.

    A tar that ends early raises :class:`_Skip` (kind ``truncated_tar``) after yielding every
    complete sample before the damage; the sample being read when it broke is dropped. A
    remote shard is streamed (see :mod:`.storage`): transient errors are retried and reported
    to ``on_retry``; one that outlasts the retries raises a StorageError (a DataError).
    """
    current: dict[str, Any] | None = None
    try:
        with open_read(url, storage or StorageConfig(), on_retry) as stream:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    if not member.isreg():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    if "." not in base:
                        continue
                    prefix = member.name[: len(member.name) - len(base)]
                    key, ext = base.split(".", 1)
                    key = prefix + key
                    ext = ext.lower()
                    if current is None or current["__key__"] != key:
                        if current is not None:
                            yield current
                        current = {"__key__": key, "__url__": url}
                    if ext in READ_EXTENSIONS:
                        handle = tar.extractfile(member)
                        current[ext] = handle.read() if handle else b""
                        if len(current[ext]) != member.size:
                            raise tarfile.ReadError("unexpected end of data")
    except (tarfile.ReadError, EOFError, OSError) as exn:
        key = current["__key__"] if current else "?"
        raise _Skip("truncated_tar", url, key, str(exn)) from exn
    if current is not None:
        yield current


class Decoder:
    """Turns a raw sample into tensors and text, or raises :class:`_Skip` saying why not."""

    def __init__(self, kind: str, tasks: list[str], cfg: StreamConfig, epoch: int = 0):
        self.kind = kind
        self.tasks = tasks
        self.image_size, self.train = tuple(cfg.image_size), cfg.train
        # Seeded views (training only): sample `key` shows view pick_view(seed, epoch, key).
        self.views = cfg.views if cfg.train else 0
        self.seed, self.epoch = cfg.seed, epoch
        self.transform = (
            train_transform(self.image_size, tuple(cfg.crop_scale), tuple(cfg.color_jitter))
            if cfg.train
            else eval_transform(self.image_size)
        )

    def decode_image(self, raw: dict[str, Any]) -> Image.Image:
        try:
            return decode_rgb(raw["jpg"], self.image_size, self.train)
        except DECODE_ERRORS as exn:
            raise _Skip("corrupt_image", raw["__url__"], raw["__key__"], str(exn)) from exn

    def view_images(self, raw: dict[str, Any], views: list[int]) -> list[torch.Tensor]:
        """The [0, 1] image tensors of the given seeded views of one raw sample (what a run
        with ``data.views`` gives the models when it picks that view)."""
        image = self.decode_image(raw)
        key = raw["__key__"]
        return [seeded_view(self.transform, image, view_seed(self.seed, key, v)) for v in views]

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        url, key = raw["__url__"], raw["__key__"]
        need = ("jpg", "txt", "json") if self.kind == "placenta" else ("jpg",)
        absent = [ext for ext in need if ext not in raw]
        if absent:
            raise _Skip("missing_key", url, key, f"no {', '.join(absent)} member")
        out: dict[str, Any] = {"key": key}
        if self.kind == "placenta":
            try:
                out["text"] = raw["txt"].decode("utf-8")
            except UnicodeDecodeError as exn:
                raise _Skip("bad_text", url, key, str(exn)) from exn
            out["labels"], out["study"] = self._labels(raw["json"], url, key)
        if "cls" in raw:
            out["cls"] = raw["cls"].decode("utf-8", "replace")
        if self.views:
            out["view"] = pick_view(self.seed, self.epoch, key, self.views)
            out["image"] = self.view_images(raw, [out["view"]])[0]
        else:
            out["image"] = self.transform(self.decode_image(raw))
        return out

    def _labels(self, data: bytes, url: str, key: str) -> tuple[torch.Tensor, str]:
        """(labels [T] in task order, the study id: ``study_id``, else the sample key)."""
        try:
            meta = json.loads(data)
            labels = meta["labels"]
            values = [float(labels[t]) for t in self.tasks]
        except (ValueError, KeyError, TypeError) as exn:
            raise _Skip("bad_json", url, key, f"{type(exn).__name__}: {exn}") from exn
        if any(v not in (0.0, 1.0) for v in values):
            raise _Skip("bad_json", url, key, f"labels must be 0/1, got {labels}")
        study = meta.get("study_id") if isinstance(meta, dict) else None
        return torch.tensor(values, dtype=torch.float32), str(study or key)


def collate(samples: list[dict[str, Any]], tasks: list[str], counts: Counter) -> dict[str, Any]:
    """One batch. ``counts`` holds the bad samples skipped (per kind) and the storage retries
    (``"retries"``) since the previous batch; they travel as ``skipped`` and ``retries``."""
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "key": [s["key"] for s in samples],
        "skipped": {k: n for k, n in counts.items() if k != RETRIES},
        "retries": counts.get(RETRIES, 0),
    }
    if "text" in samples[0]:
        batch["text"] = [s["text"] for s in samples]
        batch["labels"] = torch.stack([s["labels"] for s in samples])
        batch["study"] = [s["study"] for s in samples]
        batch["tasks"] = list(tasks)
    if all("cls" in s for s in samples):
        batch["cls"] = [s["cls"] for s in samples]
    if "view" in samples[0]:
        batch["view"] = [s["view"] for s in samples]
    return batch


# --------------------------------------------------------------------------------------------
# The epoch plan


def _batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


@dataclass
class EpochPlan:
    """Who reads what in one epoch.

    shards[r][w]: shard indices read by worker w of rank r (empty in resampled mode).
    quota[r][w]: samples that worker yields. batches: the per-rank batch cap.
    """

    shards: list[list[list[int]]]
    quota: list[list[int]]
    batches: int


def plan_epoch(
    sizes: list[int], cfg: StreamConfig, epoch: int, world: int, rank: int | None = None
) -> EpochPlan:
    workers = max(1, cfg.num_workers)
    if cfg.resampled:
        total = cfg.samples_per_epoch or sum(sizes)
        per = total // (world * workers)
        if per < 1:
            raise DataError(
                f"samples_per_epoch={total} is fewer than ranks x workers = {world * workers}"
            )
        quota = [[per] * workers for _ in range(world)]
        shards = [[[] for _ in range(workers)] for _ in range(world)]
    else:
        if len(sizes) < world * workers:
            raise DataError(
                f"{len(sizes)} shard(s) for {world} rank(s) x {workers} worker(s): every worker "
                "needs at least one shard. Write more, smaller shards (--shard-size), lower "
                "data.num_workers, or use resampled shards (data.resampled=true)."
            )
        order = list(range(len(sizes)))
        if cfg.shuffle:
            order = [
                int(i) for i in np.random.default_rng([cfg.seed, epoch, 0x5D]).permutation(order)
            ]
        shards = [[order[r::world][w::workers] for w in range(workers)] for r in range(world)]
        quota = [[sum(sizes[i] for i in ws) for ws in rs] for rs in shards]
    per_rank = [sum(_batches(q, cfg.batch_size, cfg.drop_last) for q in qs) for qs in quota]
    if cfg.equal_batches or rank is None:
        batches = min(per_rank)
    else:
        batches = per_rank[rank]
    return EpochPlan(shards, quota, batches)


# --------------------------------------------------------------------------------------------
# The dataset (runs inside each DataLoader worker) and the loader (main process)


class ShardStream(IterableDataset):
    """Yields whole batches for this rank and DataLoader worker; see the module docstring."""

    def __init__(self, shard_set: ShardSet, cfg: StreamConfig, rank: int, world: int):
        super().__init__()
        self.set = shard_set
        self.cfg = cfg
        self.rank = rank
        self.world = world
        self.epoch = 0

    def _rng(self, *salt: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, self.epoch, self.rank, *salt])

    def _raw(self, shard_ids: list[int], worker: int, counts: Counter) -> Iterator[dict]:
        """Raw samples of the worker's shards (resampled: an endless random draw)."""
        if self.cfg.resampled:
            rng = self._rng(worker, 0x7A)
            while True:
                yield from self._read_shard(int(rng.integers(len(self.set.urls))), counts)
        else:
            for i in shard_ids:
                yield from self._read_shard(i, counts)

    def _read_shard(self, i: int, counts: Counter) -> Iterator[dict]:
        url, expected, n = self.set.urls[i], self.set.sizes[i], 0

        def retried(_url: str, _exn: BaseException, _attempt: int) -> None:
            counts[RETRIES] += 1

        try:
            for raw in iter_tar(url, self.cfg.storage, retried):
                n += 1
                yield raw
        except _Skip as skip:
            self._skip(skip, counts)
            return
        if n < expected:
            # tarfile stops quietly when a shard is cut exactly between two members.
            self._skip(_Skip("truncated_tar", url, "?", f"{n} of {expected} samples"), counts)

    def _skip(self, skip: _Skip, counts: Counter) -> None:
        if self.cfg.strict:
            raise DataError(str(skip)) from skip
        counts[skip.kind] += 1

    def _shuffled(self, raw: Iterator[dict], rng: np.random.Generator) -> Iterator[dict]:
        size = self.cfg.shuffle_buffer if self.cfg.shuffle else 0
        if size <= 1:
            yield from raw
            return
        buf: list[dict] = []
        for sample in raw:
            if len(buf) < size:
                buf.append(sample)
                continue
            j = int(rng.integers(size))
            buf[j], sample = sample, buf[j]
            yield sample
        rng.shuffle(buf)
        yield from buf

    def _samples(self, shard_ids: list[int], worker: int, quota: int, counts: Counter):
        """Exactly ``quota`` decoded samples, refilled from the worker's own shards if bad
        samples were skipped. Each comes with the skip counts seen since the previous one."""
        decoder = Decoder(self.set.kind, self.set.tasks, self.cfg, self.epoch)
        produced = 0
        for pass_no in range(1_000_000):
            # Only the first pass counts skips: a refill reads the same bad samples again.
            pass_counts = counts if pass_no == 0 else Counter()
            rng = self._rng(worker, pass_no)
            good = 0
            for raw in self._shuffled(self._raw(shard_ids, worker, pass_counts), rng):
                try:
                    sample = decoder(raw)
                except _Skip as skip:
                    self._skip(skip, pass_counts)
                    continue
                good += 1
                produced += 1
                if pass_counts is not counts and pass_counts[RETRIES]:
                    counts[RETRIES] += pass_counts.pop(RETRIES)  # retries count on every pass
                yield sample
                if produced == quota:
                    return
            if good == 0:
                urls = [self.set.urls[i] for i in shard_ids]
                raise DataError(f"no readable sample in {urls}; check these shards")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        plan = plan_epoch(self.set.sizes, self.cfg, self.epoch, self.world, self.rank)
        shard_ids = plan.shards[self.rank][worker]
        quota = plan.quota[self.rank][worker]
        counts: Counter = Counter()
        reported: Counter = Counter()
        pending: list[dict] = []
        for sample in self._samples(shard_ids, worker, quota, counts):
            pending.append(sample)
            if len(pending) == self.cfg.batch_size:
                yield collate(pending, self.set.tasks, counts - reported)
                reported = counts.copy()
                pending = []
        if pending and not self.cfg.drop_last:
            yield collate(pending, self.set.tasks, counts - reported)


class ShardLoader:
    """Batches of one shard set for this rank; the same number on every rank.

    ``len(loader)`` is the number of batches this epoch. Call :meth:`set_epoch` before each
    epoch. ``loader.skipped`` holds the skip counts of everything read so far on this rank.
    """

    def __init__(self, cfg: StreamConfig, rank: int | None = None, world: int | None = None):
        cfg.validate()
        if rank is None or world is None:
            info = dist_info()
            rank, world = info.rank, info.world_size
        self.cfg = cfg
        self.rank, self.world = rank, world
        self.shard_set = resolve_shards(cfg.shards, cfg.split, cfg.storage)
        if self.shard_set.kind == "placenta" and not self.shard_set.tasks:
            self.shard_set.tasks = _peek_tasks(self.shard_set.urls[0], cfg.storage)
        self.dataset = ShardStream(self.shard_set, cfg, rank, world)
        self.skipped: Counter = Counter({k: 0 for k in SKIP_KINDS})
        self.retries = 0
        """Reads retried after transient storage errors so far on this rank."""
        self.epoch = 0
        # Checks the shard count against ranks x workers now, at start-up, not inside a worker.
        self.plan = plan_epoch(self.shard_set.sizes, cfg, 0, world, rank)

    @property
    def tasks(self) -> list[str]:
        return list(self.shard_set.tasks)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.dataset.epoch = epoch
        self.plan = plan_epoch(self.shard_set.sizes, self.cfg, epoch, self.world, self.rank)

    def __len__(self) -> int:
        return self.plan.batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        generator = torch.Generator().manual_seed(
            int(np.random.default_rng([self.cfg.seed, self.epoch, self.rank]).integers(2**62))
        )
        if self.cfg.num_workers == 0:
            batches: Iterator[dict[str, Any]] = self._in_process(generator)
        else:
            batches = iter(
                DataLoader(
                    self.dataset,
                    batch_size=None,
                    num_workers=self.cfg.num_workers,
                    generator=generator,
                    persistent_workers=False,
                    prefetch_factor=4,
                )
            )
        try:
            for n, batch in enumerate(batches):
                if n >= self.plan.batches:
                    break
                self.skipped.update(batch["skipped"])
                self.retries += batch["retries"]
                yield batch
        except DataError as exn:
            # From a worker, the message starts with the worker's traceback; keep the cause.
            text = str(exn)
            if "Traceback" not in text:
                raise
            raise DataError(text.rsplit("DataError: ", 1)[-1].strip()) from None

    def _in_process(self, generator: torch.Generator) -> Iterator[dict[str, Any]]:
        """Batches made in this process (num_workers=0) with the torch RNG stream DataLoader
        worker 0 would have. Augmentation then neither draws from nor disturbs the training
        process's RNG: a resumed run, which re-reads the consumed batches of its epoch, goes on
        with the same random numbers as a run that never stopped (and 0 workers give the same
        batches as 1)."""
        seed = int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
        state = torch.Generator().manual_seed(seed).get_state()
        it = iter(self.dataset)
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                try:
                    batch = next(it)
                except StopIteration:
                    return
                state = torch.get_rng_state()
            yield batch


def _peek_tasks(url: str, storage: StorageConfig) -> list[str]:
    """Task names from the first sample's json, for shards written without info.json."""
    try:
        for raw in iter_tar(url, storage):
            if "json" in raw:
                return list(json.loads(raw["json"])["labels"])
    except (_Skip, ValueError, KeyError, TypeError) as exn:
        raise DataError(f"cannot read task names from {url}: {exn}") from exn
    raise DataError(f"no json member in {url}; are these placenta shards?")
