"""Parallel, resumable WebDataset shard writing.

A shard set is described as a stream of :class:`ShardJob` (a shard's file name and the small,
picklable items it holds) plus one top-level function that turns a job into samples. The
writer:

* keeps memory constant: jobs are pulled from the caller's iterator only as workers free up;
* runs ``workers`` processes in parallel;
* writes each shard as ``.NAME.partial``, fsyncs it and renames it, so a file with a final name is
  always complete (a fixed partial name: the rerun after a kill overwrites it, nothing is left);
* skips shards whose final file already exists, so an interrupted write resumes where it stopped;
* refuses to mix two different shard sets in one folder (a ``.vlcd-plan.json`` fingerprint).

It finishes by writing ``sizes.json`` (samples per shard, the convention open_clip and wids read)
and ``info.json`` (what the set is and how it was made).

The destination may be an S3 prefix (``s3://bucket/prefix``, see :mod:`.storage`): each shard is
then written to a local staging folder, uploaded once complete (an object appears whole or not
at all) and deleted locally, so the disk holds one shard per worker; a rerun skips the shards
already uploaded, as it skips complete local files.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import webdataset as wds

from ..errors import DataError
from ..io import fsync_dir, fsync_file, write_json
from ..progress import DEFAULT_EVERY_S, Progress
from . import storage
from .storage import StorageConfig

PLAN_FILE = ".vlcd-plan.json"
SIZES_FILE = "sizes.json"
INFO_FILE = "info.json"


@dataclass
class ShardJob:
    """One shard to write: its file name and the items (indices, paths, rows) it holds."""

    name: str
    items: list[Any]


@dataclass
class ShardResult:
    """What writing (or finding) one shard produced."""

    name: str
    count: int
    skipped: list[str] = field(default_factory=list)  # one line per item that was left out
    reused: bool = False  # the shard existed already and was kept


class SampleError(Exception):
    """An item that cannot become a sample; the writer records it and goes on."""


# A sample is a dict with "__key__" and bytes/str values, as webdataset's TarWriter takes them.
MakeSamples = Callable[[Any], dict[str, Any]]

_progress_counter = None  # per worker process: a shared counter of samples done


def _init_worker(counter) -> None:
    global _progress_counter
    _progress_counter = counter
    # Each worker is one process doing numpy/PIL work; more threads each would oversubscribe.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _tick() -> None:
    if _progress_counter is not None:
        with _progress_counter.get_lock():
            _progress_counter.value += 1


def count_tar_samples(url: str | Path, cfg: StorageConfig | None = None) -> int:
    """Number of distinct sample keys in a tar shard, local or remote (one streaming read)."""
    keys = set()
    with storage.open_read(str(url), cfg or StorageConfig()) as stream:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                if member.isreg():
                    keys.add(member.name.split("/")[-1].split(".", 1)[0])
    return len(keys)


@dataclass(frozen=True)
class Destination:
    """Where a shard set goes: a local folder, or an S3 prefix with a local staging folder."""

    out: str
    staging: str  # where shard files are written first (``out`` itself when local)
    storage: StorageConfig = field(default_factory=StorageConfig)
    uploaded: frozenset[str] = frozenset()  # remote: shard names found complete at the start

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.out)

    def url(self, name: str) -> str:
        return storage.join(self.out, name)


def write_one_shard(job: ShardJob, dest: Destination, make_sample: MakeSamples) -> ShardResult:
    """Write ``job`` into ``dest`` atomically, or reuse it when complete already."""
    staging = Path(dest.staging)
    final = staging / job.name
    done = job.name in dest.uploaded if dest.remote else final.exists()
    if done:
        for _ in job.items:
            _tick()
        return ShardResult(
            job.name, count_tar_samples(dest.url(job.name), dest.storage), reused=True
        )
    partial_path = staging / f".{job.name}.partial"
    result = ShardResult(job.name, 0)
    with open(partial_path, "wb") as stream:
        # encoder=False: values must already be bytes or str, so nothing is ever pickled.
        # mtime=0 makes a rerun produce byte-identical shards.
        with wds.TarWriter(stream, encoder=False, mtime=0.0) as writer:
            for item in job.items:
                try:
                    sample = make_sample(item)
                except SampleError as exn:
                    result.skipped.append(str(exn))
                else:
                    writer.write(
                        {
                            k: v.encode("utf-8") if isinstance(v, str) and k != "__key__" else v
                            for k, v in sample.items()
                        }
                    )
                    result.count += 1
                _tick()
    if dest.remote:
        storage.upload(str(partial_path), dest.url(job.name), dest.storage)
        partial_path.unlink()
        return result
    fsync_file(partial_path)
    os.replace(partial_path, final)
    fsync_dir(staging)
    return result


def _check_plan(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    plan = out / PLAN_FILE
    if plan.exists():
        previous = json.loads(plan.read_text())
        _refuse_other_plan(str(out), previous, fingerprint, overwrite)
    if overwrite:
        for old in list(out.glob("*.tar")) + list(out.glob(".*.partial")):
            old.unlink()
        for name in (SIZES_FILE, INFO_FILE):
            (out / name).unlink(missing_ok=True)
    plan.write_text(json.dumps(fingerprint, indent=2, sort_keys=True))


def _check_remote_plan(
    out: str, fingerprint: dict[str, Any], overwrite: bool, cfg: StorageConfig
) -> frozenset[str]:
    """The remote twin of :func:`_check_plan`; returns the names of the shards already there."""
    names = set(storage.listdir(out, cfg))
    plan = storage.join(out, PLAN_FILE)
    if PLAN_FILE in names:
        previous = json.loads(storage.read_bytes(plan, cfg, attempts=cfg.retries + 1))
        _refuse_other_plan(out, previous, fingerprint, overwrite)
    if overwrite:
        for name in sorted(names):
            if name.endswith(".tar") or name in (SIZES_FILE, INFO_FILE):
                storage.remove(storage.join(out, name), cfg)
        names = set()
    storage.write_bytes(plan, json.dumps(fingerprint, indent=2, sort_keys=True).encode(), cfg)
    return frozenset(n for n in names if n.endswith(".tar"))


def _refuse_other_plan(
    out: str, previous: dict[str, Any], fingerprint: dict[str, Any], overwrite: bool
) -> None:
    if previous != fingerprint and not overwrite:
        changed = sorted(
            k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k)
        )
        raise DataError(
            f"{out} already holds shards written with other settings "
            f"(differs in: {', '.join(changed)}). Use a new --out folder, or pass "
            "--overwrite to delete those shards and start again."
        )


def write_shards(
    out_dir: str | Path,
    jobs: Iterable[ShardJob],
    make_sample: MakeSamples,
    *,
    total: int | None,
    workers: int,
    fingerprint: dict[str, Any],
    info: dict[str, Any],
    overwrite: bool = False,
    desc: str = "writing shards",
    progress: bool = True,
    progress_every_s: float = DEFAULT_EVERY_S,
    storage_cfg: StorageConfig | None = None,
) -> dict[str, Any]:
    """Write every job's shard into ``out_dir`` (a folder or ``s3://bucket/prefix``) and return
    the shard set's ``info`` record.

    make_sample must be picklable (a top-level function or a ``functools.partial`` of one) when
    ``workers > 1``. ``total`` is the number of items, for the progress display (a bar in a
    terminal, else a line every ``progress_every_s`` seconds). Items that raise
    :class:`SampleError` are left out and listed in ``info["skipped"]``.
    """
    target = str(out_dir)
    storage.check_location(target)
    if storage.is_remote(target):
        storage.check_writable(target)
        cfg = storage_cfg or StorageConfig()
        staging = tempfile.mkdtemp(prefix="vlcd-shards-")
        try:
            uploaded = _check_remote_plan(target, fingerprint, overwrite, cfg)
            dest = Destination(target, staging, cfg, uploaded)
            record = _write_all(
                dest, jobs, make_sample, total, workers, info, desc, progress, progress_every_s
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return record
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, fingerprint, overwrite)
    return _write_all(
        Destination(target, target),
        jobs,
        make_sample,
        total,
        workers,
        info,
        desc,
        progress,
        progress_every_s,
    )


def _write_all(
    dest: Destination,
    jobs: Iterable[ShardJob],
    make_sample: MakeSamples,
    total: int | None,
    workers: int,
    info: dict[str, Any],
    desc: str,
    progress: bool,
    progress_every_s: float,
) -> dict[str, Any]:
    started = time.time()
    results: list[ShardResult] = []
    task = partial(write_one_shard, dest=dest, make_sample=make_sample)
    with Progress(total, desc, unit="img", enabled=progress, every_s=progress_every_s) as shown:
        if workers <= 1:
            for job in jobs:
                results.append(task(job))
                shown.update(len(job.items))
        else:
            results = _run_pool(task, iter(jobs), workers, shown)

    results.sort(key=lambda r: r.name)
    sizes = {r.name: r.count for r in results}
    skipped = [line for r in results for line in r.skipped]
    record = dict(info)
    record.update(
        shards=len(sizes),
        samples=sum(sizes.values()),
        skipped=skipped,
        reused_shards=sum(r.reused for r in results),
        seconds=round(time.time() - started, 1),
    )
    # sizes.json last: a reader takes the set as complete only once it is there.
    if dest.remote:
        for name, value in ((INFO_FILE, record), (SIZES_FILE, sizes)):
            text = json.dumps(value, indent=2, sort_keys=True)
            storage.write_bytes(dest.url(name), text.encode(), dest.storage)
    else:
        out = Path(dest.out)
        write_json(out / INFO_FILE, record, indent=2, sort_keys=True, fsync=True)
        write_json(out / SIZES_FILE, sizes, indent=2, sort_keys=True, fsync=True)
    return record


def _run_pool(task, jobs: Iterator[ShardJob], workers: int, shown: Progress) -> list[ShardResult]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn" if os.name != "posix" else "fork")
    counter = ctx.Value("q", 0)
    results: list[ShardResult] = []
    in_flight: set[Future] = set()
    # Two jobs queued per worker keeps every process busy while holding O(workers) jobs.
    window = 2 * workers
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,)
    ) as pool:
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < window:
                job = next(jobs, None)
                if job is None:
                    exhausted = True
                    break
                in_flight.add(pool.submit(task, job))
            if not in_flight:
                break
            done, in_flight = wait(in_flight, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in done:
                results.append(future.result())
            shown.advance_to(counter.value)
    shown.advance_to(counter.value)
    return results


def chunk_jobs(prefix: str, items: Iterable[Any], shard_size: int) -> Iterator[ShardJob]:
    """Jobs that cut a (possibly huge, lazily produced) item stream into shards."""
    if shard_size < 1:
        raise ValueError("--shard-size must be at least 1")
    batch: list[Any] = []
    shard = 0
    for item in items:
        batch.append(item)
        if len(batch) == shard_size:
            yield ShardJob(f"{prefix}-{shard:06d}.tar", batch)
            shard, batch = shard + 1, []
    if batch:
        yield ShardJob(f"{prefix}-{shard:06d}.tar", batch)


def summarize_skips(skipped: list[str], limit: int = 20) -> str:
    """A few lines saying what was left out, for the console."""
    if not skipped:
        return ""
    head = "\n".join(f"  {line}" for line in skipped[:limit])
    more = f"\n  ... and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"left out {len(skipped)} item(s):\n{head}{more}"
