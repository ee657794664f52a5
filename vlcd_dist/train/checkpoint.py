"""Checkpoints without pickle, written atomically.

Exported students are :mod:`vlcd_dist.models.exported`; this module is the training state only.

Layout of one checkpoint (``OUT/checkpoints/step_NNNNNN/``)::

    meta.json                  format, stage, step, data position, counters, trainee names, config
    config.yaml                the resolved recipe
    <trainee>/model.safetensors
    <trainee>/optimizer.safetensors + optimizer.json    tensors + the structure around them
    <trainee>/scheduler.json   LambdaLR state (step count, base lrs)
    <trainee>/scaler.json      fp16 loss-scaler state, when there is one
    rng/rank00000.safetensors  every rank's torch/CUDA RNG state (tensors) and python/numpy (JSON)
    COMPLETE                   written last: a folder without it is never read

The folder is assembled under ``.tmp_step_NNNNNN``, every file fsynced, then renamed into place
and the parent fsynced, so a crash at any point leaves either the whole checkpoint or none.
Nothing is unpickled on load: tensors come from safetensors, everything else from JSON.

meta.json lists every file with its size and sha256, and COMPLETE holds the sha256 of meta.json,
so a checkpoint damaged after it was written (a truncated or altered file, a deleted student
folder) is recognised: :meth:`Checkpointer.latest` reports it and passes over it to the newest
intact one, and refuses to pick anything (rather than start from step 0) when only damaged ones
are left. A save of a step that already has a checkpoint moves the old one aside
(``.old_step_NNNNNN``) until the new one is in place, and ``keep_last`` prunes only after.

A full disk: before writing, rank 0 estimates the bytes the checkpoint needs (the previous
checkpoint's size, at least the tensors' own bytes) and compares them with the free space; a
write that still fails with ENOSPC part-way is caught too. Either way the partial folder is
removed, the previous checkpoints are left as they were (nothing was pruned), and every rank
raises the same :class:`DiskFullError` naming the folder, the bytes needed and the bytes free.
The ranks agree after each part of the save (one small all-reduce, which is also the barrier),
so a rank whose write failed never leaves the others waiting in a collective for the timeout.

Designed for the later reliability issues: the data position (epoch, batches consumed in it)
makes an exact resume possible (ShardLoader's order is a pure function of seed and epoch); the
per-trainee counters carry NaN-skip counts; a checkpoint is self-describing (meta.json), so a
preemption handler only needs to call :meth:`Checkpointer.save`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file

from vlcd_dist.io import (
    disk_full_after,
    fsync_dir,
    fsync_tree,
    is_disk_full,
    json_problem,
    safetensors_problem,
    save_tensors,
    sha256_file,
    tree_bytes,
    write_text,
)
from vlcd_dist.train.state_io import CheckpointError

if TYPE_CHECKING:
    from vlcd_dist.train.backend import Backend, Trainee

logger = logging.getLogger(__name__)

FORMAT = "vlcd-checkpoint/1"
STEP_DIR = re.compile(r"^step_(\d{6,})$")
MARKER = "COMPLETE"
OLD_PREFIX = ".old_"
TMP_PREFIX = ".tmp_"
PAUSE_ENV = "VLCD_TEST_SAVE_PAUSE"
"""Tests only: "STEP:SECONDS" (or "SECONDS": every save) sleeps between two trainees' files of
that step's save, so a test can kill the process in the middle of a checkpoint."""
ENOSPC_ENV = "VLCD_TEST_SAVE_ENOSPC"
"""Tests only: "STEP:BYTES" (or "BYTES": every save) makes the writes of that step's save fail
with ENOSPC, in every process, once BYTES have been written (see
:func:`vlcd_dist.io.disk_full_after`)."""

OK, FAILED, DISK_FULL = 0, 1, 2
"""What a rank reports of its part of a save, agreed by an all-reduce (max): the worst wins."""


class DiskFullError(CheckpointError):
    """A checkpoint did not fit on its filesystem; the previous checkpoints are untouched."""

    def __init__(self, message: str, folder: Path, needed: int, free: int) -> None:
        super().__init__(message)
        self.folder, self.needed, self.free = folder, needed, free


class SaveFailedError(CheckpointError):
    """A checkpoint could not be written (not for lack of space); the previous ones are kept."""


@dataclass
class TrainState:
    """Where a stage is: enough to continue exactly where it stopped.

    step: optimizer steps done. epoch: current epoch of the loader. batch_in_epoch: batches of
    that epoch already consumed. samples: samples seen on all ranks. counters: per trainee,
    e.g. {"skipped_steps": 0}. teacher_forwards: frozen-teacher batches run (distill stages).
    skipped_samples: bad samples skipped so far on all ranks, per kind (data.SKIP_KINDS).
    data_retries: shard reads retried after transient storage errors, on all ranks.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    teacher_forwards: int = 0
    skipped_samples: dict[str, int] = field(default_factory=dict)
    data_retries: int = 0


def _manifest(root: Path) -> dict[str, dict[str, Any]]:
    """{path relative to root: {"size": bytes, "sha256": hex}} of every file under root."""
    files = {}
    for file in sorted(root.rglob("*")):
        if file.is_file():
            rel = file.relative_to(root).as_posix()
            files[rel] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    return files


def _step_spec(env: str, step: int) -> str | None:
    """The value of a "STEP:VALUE" (or "VALUE") test variable for the save of ``step``."""
    spec = os.environ.get(env)
    if not spec:
        return None
    at, _, value = spec.rpartition(":")
    return None if at and int(at) != step else value


def _fault_budget(step: int) -> contextlib.AbstractContextManager:
    """Tests only: the ENOSPC fault of :data:`ENOSPC_ENV` for the save of ``step``, if set."""
    value = _step_spec(ENOSPC_ENV, step)
    if value is None:
        return contextlib.nullcontext()
    logger.warning("%s: writes of the save of step %d fail after %s bytes", ENOSPC_ENV, step, value)
    return disk_full_after(int(value))


def _free_bytes(folder: Path) -> int:
    """Free bytes on the filesystem of ``folder`` (or of its nearest existing parent)."""
    for path in (folder, *folder.parents):
        if path.exists():
            return shutil.disk_usage(path).free
    return 0


def _mib(nbytes: int) -> str:
    """``nbytes`` for a person, and exactly."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit} ({nbytes} bytes)"
    return f"{nbytes / 2**10:.1f} KiB ({nbytes} bytes)"


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _save_pause(step: int) -> None:
    """Tests only: sleep as :data:`PAUSE_ENV` says (see there)."""
    seconds = _step_spec(PAUSE_ENV, step)
    if seconds is None:
        return
    logger.warning("%s: pausing %s s inside the save of step %d", PAUSE_ENV, seconds, step)
    time.sleep(float(seconds))


# ---------------------------------------------------------------------------------------------
# RNG states


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: (tensors, JSON-ready rest)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rest = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, rest


def set_rng_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rest["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------------------------------------
# The checkpointer


@dataclass
class _Save:
    """One save in progress: its folders, and what rank 0 found out about space."""

    name: str
    final: Path
    tmp: Path
    needed: int = 0
    free: int | None = None  # set when the free-space check refused the save
    old: Path | None = None  # a checkpoint of the same step, moved aside


class Checkpointer:
    """Saves and restores the trainees, schedulers, data position and RNG of a stage."""

    def __init__(self, folder: str | Path, backend: Backend, keep_last: int = 3) -> None:
        self.folder = Path(folder)
        self.backend = backend
        self.keep_last = keep_last

    # -- finding ---------------------------------------------------------------------------

    def complete(self) -> list[tuple[int, Path]]:
        """(step, folder) of every checkpoint with its COMPLETE marker, oldest first (intact or
        not: see :meth:`problems`). ``.old_step_N`` counts only when ``step_N`` is absent (a
        crash between the two renames of a save that replaced step N)."""
        found: dict[int, Path] = {}
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                old = path.name.startswith(OLD_PREFIX)
                match = STEP_DIR.match(path.name[len(OLD_PREFIX) :] if old else path.name)
                if not (match and path.is_dir() and (path / MARKER).is_file()):
                    continue
                step = int(match.group(1))
                if not old or step not in found:
                    found[step] = path
        return sorted(found.items())

    def latest(self) -> Path | None:
        """The newest complete and intact checkpoint; None when there is no complete one at all.

        A damaged checkpoint is logged (folder and what is wrong) and passed over in favour of
        the previous one; when every complete checkpoint is damaged this raises
        :class:`CheckpointError` instead of letting the run start again from step 0."""
        damaged: list[tuple[Path, list[str]]] = []
        for _, path in reversed(self.complete()):
            self._check_writer(path)
            problems = self.problems(path)
            if not problems:
                if damaged:
                    logger.warning("resuming from %s, the newest intact checkpoint", path)
                return path
            logger.warning("checkpoint %s is damaged and is skipped: %s", path, "; ".join(problems))
            damaged.append((path, problems))
        if damaged:
            listing = "; ".join(f"{p} ({', '.join(pr)})" for p, pr in damaged)
            raise CheckpointError(
                f"no intact checkpoint to resume from in {self.folder}: {listing}. Restore the "
                "damaged files, or move the folder(s) away to start this stage from step 0"
            )
        return None

    def _check_writer(self, path: Path) -> None:
        """Refuse a checkpoint of another backend: its trainee files are laid out for that one,
        and passing over it as damaged would resume from an older checkpoint without a word.
        (Checkpoints written before the backend was recorded are checked as this backend's.)"""
        try:
            writer = json.loads((path / "meta.json").read_text()).get("backend")
        except (OSError, ValueError, AttributeError):
            return  # unreadable: problems() names what is wrong
        if writer and writer != self.backend.name:
            raise CheckpointError(
                f"{path} was written by the {writer} backend, this run uses {self.backend.name}: "
                f"resume with --backend {writer} (run.backend), or start a new --out"
            )

    def problems(self, path: str | Path) -> list[str]:
        """What is wrong with the checkpoint in ``path``; empty when it is complete and intact.

        Checks: the COMPLETE marker; meta.json (readable, its sha256 as recorded in COMPLETE);
        every trainee's folder with its weights, schedule and the optimizer state its backend
        writes (:meth:`Backend.trainee_problems`; JSON inside :attr:`Backend.opaque_dirs`, e.g.
        DeepSpeed's ``engine/``, is not ours to parse); every file listed in meta.json present
        with its size and
        sha256; every safetensors header readable and matching the file's length; every JSON
        file parsable. Checkpoints written before files were listed get all but the listing."""
        opaque = self.backend.opaque_dirs
        path = Path(path)
        if not (path / MARKER).is_file():
            return [f"no {MARKER} marker (an interrupted save)"]
        try:
            marker = json.loads((path / MARKER).read_text() or "{}")
            meta_bytes = (path / "meta.json").read_bytes()
            meta = json.loads(meta_bytes)
        except (OSError, ValueError) as exn:
            return [f"meta.json or {MARKER} unreadable ({exn})"]
        expected = marker.get("meta_sha256") if isinstance(marker, dict) else None
        if expected and hashlib.sha256(meta_bytes).hexdigest() != expected:
            return ["meta.json differs from what was written (sha256)"]
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            return [f"meta.json is not a {FORMAT} description"]
        found: list[str] = []
        bad: set[str] = set()
        gone: set[str] = set()  # missing trainee folders: one message, not one per file
        for name in meta.get("trainees", []):
            sub = path / name
            if not sub.is_dir():
                found.append(f"student folder {name}/ is missing")
                gone.add(name)
                continue
            for file in ("model.safetensors", "scheduler.json"):
                if not (sub / file).is_file():
                    found.append(f"{name}/{file} is missing")
                    bad.add(f"{name}/{file}")
            found.extend(f"{name}/ {problem}" for problem in self.backend.trainee_problems(sub))
        for rel, info in (meta.get("files") or {}).items():
            file = path / rel
            if rel in bad or rel.split("/", 1)[0] in gone:
                continue
            if not file.is_file():
                found.append(f"{rel} is missing")
                bad.add(rel)
                continue
            size = file.stat().st_size
            if size != info.get("size"):
                found.append(f"{rel} is {size} bytes, {info.get('size')} were written")
                bad.add(rel)
            elif info.get("sha256") and sha256_file(file) != info["sha256"]:
                found.append(f"{rel} differs from what was written (sha256)")
                bad.add(rel)
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path).as_posix()
            if rel in bad or not file.is_file():
                continue
            if file.suffix == ".safetensors":
                problem = safetensors_problem(file)
            elif file.suffix == ".json" and not opaque.intersection(file.relative_to(path).parts):
                problem = json_problem(file)
            else:
                continue
            if problem:
                found.append(f"{rel}: {problem}")
        return found

    # -- saving ----------------------------------------------------------------------------

    def save(
        self,
        stage: str,
        state: TrainState,
        trainees: list[Trainee],
        schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
        config: dict[str, Any],
        config_yaml: str,
    ) -> Path:
        """Write checkpoint ``step_{state.step}`` atomically. Collective: every rank calls it.

        Raises :class:`DiskFullError` (on every rank) when the checkpoint does not fit, and
        :class:`SaveFailedError` when a rank's write fails otherwise; either way the partial
        folder is gone and the previous checkpoints are as they were."""
        backend = self.backend
        name = f"step_{state.step:06d}"
        final = self.folder / name
        tmp = self.folder / f"{TMP_PREFIX}{name}"
        save = _Save(name=name, final=final, tmp=tmp)

        def prepare() -> None:
            self._clear_leftovers()
            if tmp.exists():
                shutil.rmtree(tmp)
            self.folder.mkdir(parents=True, exist_ok=True)
            save.needed = self._needed_bytes(trainees)
            free = _free_bytes(self.folder)
            if free < save.needed:
                save.free = free
                raise OSError(
                    errno.ENOSPC,
                    f"{_mib(free)} free, the checkpoint needs about {_mib(save.needed)}",
                    str(self.folder),
                )
            (tmp / "rng").mkdir(parents=True)

        def write_rng() -> None:
            tensors, rest = rng_state()
            rng_file = tmp / "rng" / f"rank{backend.rank:05d}.safetensors"
            save_tensors(tensors, rng_file, metadata={"rest": json.dumps(rest)})

        def write_trainee(trainee: Trainee) -> None:
            # Collective: a ZeRO backend writes one optimizer partition per rank.
            backend.save_trainee(trainee, tmp / trainee.name)

        def finish() -> None:
            for trainee in trainees:
                write_text(
                    tmp / trainee.name / "scheduler.json",
                    json.dumps(_scheduler_state(schedulers[trainee.name])),
                )
            meta = {
                "format": FORMAT,
                "stage": stage,
                "step": state.step,
                "world_size": backend.world_size,
                "backend": backend.name,
                "trainees": [t.name for t in trainees],
                "state": asdict(state),
                "config": config,
                "time": time.time(),
            }
            write_text(tmp / "config.yaml", config_yaml)
            meta["files"] = _manifest(tmp)  # every file above, so damage can be recognised
            meta_text = json.dumps(meta, indent=1)
            write_text(tmp / "meta.json", meta_text)
            meta_sha = hashlib.sha256(meta_text.encode()).hexdigest()
            write_text(tmp / MARKER, json.dumps({"step": state.step, "meta_sha256": meta_sha}))
            fsync_tree(tmp)
            if final.exists():
                # Keep the previous checkpoint of this step whole until the new one is in place.
                save.old = self.folder / f"{OLD_PREFIX}{name}"
                if save.old.exists():
                    shutil.rmtree(save.old)
                os.replace(final, save.old)
            os.replace(tmp, final)
            fsync_dir(self.folder)
            if save.old is not None:
                shutil.rmtree(save.old, ignore_errors=True)
            # Only now that the new checkpoint is complete: never before (keep_last=1 included).
            self._prune(state.step)
            logger.info("checkpoint %s written", final)

        with _fault_budget(state.step):
            self._part(save, prepare if backend.is_main else None)
            self._part(save, write_rng)
            for i, trainee in enumerate(trainees):
                if i:
                    _save_pause(state.step)
                self._part(save, functools.partial(write_trainee, trainee))
            self._part(save, finish if backend.is_main else None)
        return final

    def _part(self, save: _Save, work: Callable[[], None] | None) -> None:
        """Run this rank's ``work`` (None: nothing to do here) of one part of a save, then agree
        with the other ranks (an all-reduce, which is the barrier between the parts) on whether
        every rank's part went through. When one did not, rank 0 removes the partial folder and
        every rank raises the same error, instead of the others waiting for the failed rank in
        the next collective."""
        backend = self.backend
        failure: Exception | None = None
        if work is not None:
            try:
                work()
            except Exception as exn:  # every rank must reach the agreement below
                failure = exn
        kind = OK if failure is None else DISK_FULL if is_disk_full(failure) else FAILED
        flags = [kind, backend.rank + 1 if failure else 0, save.needed]
        flags_t = torch.tensor(flags, dtype=torch.int64, device=backend.device)
        agreed = backend.all_reduce(flags_t, "max")
        kind, failed_rank, needed = (int(v) for v in agreed.tolist())
        if kind == OK:
            return
        if failure is not None:
            logger.error("rank %d: the save of %s failed: %r", backend.rank, save.tmp, failure)
        free = 0
        if backend.is_main:
            self._undo(save)
            free = save.free if save.free is not None else _free_bytes(self.folder)
        # Also the barrier that keeps the others from exiting before rank 0 has cleaned up.
        free_t = torch.tensor([free], dtype=torch.int64, device=backend.device)
        free = int(backend.all_reduce(free_t, "max").item())
        raise self._save_error(save, kind, failed_rank - 1, needed, free, failure)

    def _undo(self, save: _Save) -> None:
        """Rank 0, after a failed save: remove the partial folder; put a checkpoint of the same
        step that was moved aside back in place."""
        shutil.rmtree(save.tmp, ignore_errors=True)
        if save.old is not None and save.old.exists() and not save.final.exists():
            os.replace(save.old, save.final)
        fsync_dir(self.folder)

    def _save_error(
        self,
        save: _Save,
        kind: int,
        rank: int,
        needed: int,
        free: int,
        failure: Exception | None,
    ) -> CheckpointError:
        """The error every rank raises for a failed save (the same text on every rank, and the
        failed rank's own error after it)."""
        done = self.complete()
        kept = (
            f"The newest complete checkpoint, {done[-1][1].name}, is untouched and is the one "
            "--resume starts from"
            if done
            else "There is no earlier checkpoint (a --resume starts this stage from step 0)"
        )
        own = f" (rank {self.backend.rank}: {type(failure).__name__}: {failure})" if failure else ""
        if kind == DISK_FULL:
            short = needed - free
            ask = (
                f"Free at least {_mib(short)}"
                if short > 0
                else "Free more space (the write took more than the estimate)"
            )
            if self.keep_last > 0:
                why = (
                    "a new checkpoint is written before the oldest is pruned: "
                    f"checkpoint.keep_last={self.keep_last} needs room for {self.keep_last + 1}"
                )
            else:
                why = "checkpoint.keep_last=0 keeps every checkpoint: delete old ones yourself"
            return DiskFullError(
                f"no space left for checkpoint {save.name} in {self.folder}: it needs about "
                f"{_mib(needed)}, {_mib(free)} are free there (rank {rank} ran out of space; "
                f"the partial {save.tmp.name} was removed). {kept}. {ask} ({why}), or point "
                f"--out at a larger disk, then restart with --resume{own}",
                self.folder,
                needed,
                free,
            )
        return SaveFailedError(
            f"checkpoint {save.name} could not be written in {self.folder} (rank {rank} failed; "
            f"the partial {save.tmp.name} was removed). {kept}. See rank {rank}'s "
            f"error{own}"
        )

    def _needed_bytes(self, trainees: list[Trainee]) -> int:
        """About the bytes the next checkpoint takes: the newest complete one's size, and at
        least the trainees' weights and optimizer tensors plus the RNG files (a first save)."""
        done = self.complete()
        previous = tree_bytes(done[-1][1]) if done else 0
        tensors = (16 << 10) * self.backend.world_size  # rng files and JSON
        for trainee in trainees:
            tensors += _tensor_bytes(dict(trainee.module.state_dict()))
            try:
                tensors += _tensor_bytes(list(trainee.optimizer.state.values()))
            except (AttributeError, TypeError):  # an engine's optimizer without a torch state
                pass
        return max(previous, tensors)

    def _prune(self, step: int) -> None:
        """Delete the oldest checkpoints so that ``keep_last`` remain with the one of ``step``
        (just completed) among them. Later steps (left from before a resume) are not touched:
        the run overwrites them when it gets there."""
        if self.keep_last <= 0:
            return
        older = [path for s, path in self.complete() if s < step]
        for path in older[: max(0, len(older) - (self.keep_last - 1))]:
            shutil.rmtree(path, ignore_errors=True)

    def _clear_leftovers(self) -> None:
        """Remove what crashed saves left: temporary folders, and old copies whose
        replacement is in place (rank 0, before a save; one save runs at a time)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            if path.name.startswith(TMP_PREFIX) and STEP_DIR.match(path.name[len(TMP_PREFIX) :]):
                shutil.rmtree(path, ignore_errors=True)
            elif (
                path.name.startswith(OLD_PREFIX)
                and (self.folder / path.name[len(OLD_PREFIX) :] / MARKER).is_file()
            ):
                shutil.rmtree(path, ignore_errors=True)

    # -- loading ---------------------------------------------------------------------------

    def load(
        self,
        path: str | Path,
        stage: str,
        trainees: list[Trainee],
        schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler],
    ) -> TrainState:
        """Restore trainees, schedulers and this rank's RNG from ``path``; the TrainState."""
        path = Path(path)
        if not (path / MARKER).is_file():
            raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
        self._check_writer(path)
        problems = self.problems(path)
        if problems:
            raise CheckpointError(f"checkpoint {path} is damaged: {'; '.join(problems)}")
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT}")
        if meta["stage"] != stage:
            raise CheckpointError(
                f"{path} was written by stage {meta['stage']!r}, not {stage!r}; resume it with "
                f"`vlcd {meta['stage']}` or point --out at this stage's own folder"
            )
        names = [t.name for t in trainees]
        if sorted(meta["trainees"]) != sorted(names):
            raise CheckpointError(
                f"{path} holds {meta['trainees']} but this run trains {names}; resume with the "
                "same students, or start a new --out"
            )
        for trainee in trainees:
            sub = path / trainee.name
            self.backend.load_trainee(trainee, sub)
            sched = json.loads((sub / "scheduler.json").read_text())
            # The lambdas were not saved (they are rebuilt from the config); LambdaLR expects one
            # entry per group, None meaning "nothing to restore".
            sched.setdefault("lr_lambdas", [None] * len(sched.get("base_lrs", [])))
            schedulers[trainee.name].load_state_dict(sched)
        rng_file = path / "rng" / f"rank{self.backend.rank:05d}.safetensors"
        if meta["world_size"] == self.backend.world_size and rng_file.exists():
            from safetensors import safe_open

            with safe_open(str(rng_file), framework="pt") as f:
                rest = json.loads((f.metadata() or {})["rest"])
            set_rng_state(load_file(str(rng_file)), rest)
        else:
            logger.warning(
                "%s: written by %d ranks, resuming on %d: RNG streams restart from the seed",
                path,
                meta["world_size"],
                self.backend.world_size,
            )
        return TrainState(**meta["state"])


def _scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    state = scheduler.state_dict()
    # LambdaLR keeps its lambdas as None placeholders; the schedule is rebuilt from the config.
    state.pop("lr_lambdas", None)
    return {k: v for k, v in state.items() if _jsonable(v)}


def _jsonable(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, float):
        return not math.isnan(value)
    return value is None or isinstance(value, (bool, int, str, float))
