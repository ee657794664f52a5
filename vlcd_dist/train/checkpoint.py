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

Designed for the later reliability issues: the data position (epoch, batches consumed in it)
makes an exact resume possible (ShardLoader's order is a pure function of seed and epoch); the
per-trainee counters carry NaN-skip counts; a checkpoint is self-describing (meta.json), so a
preemption handler only needs to call :meth:`Checkpointer.save`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlcd_dist.io import (
    fsync_dir,
    fsync_tree,
    json_problem,
    safetensors_problem,
    sha256_file,
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


@dataclass
class TrainState:
    """Where a stage is: enough to continue exactly where it stopped.

    step: optimizer steps done. epoch: current epoch of the loader. batch_in_epoch: batches of
    that epoch already consumed. samples: samples seen on all ranks. counters: per trainee,
    e.g. {"skipped_steps": 0}. teacher_forwards: frozen-teacher batches run (distill stages).
    skipped_samples: bad samples skipped so far on all ranks, per kind (data.SKIP_KINDS).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    teacher_forwards: int = 0
    skipped_samples: dict[str, int] = field(default_factory=dict)


def _manifest(root: Path) -> dict[str, dict[str, Any]]:
    """{path relative to root: {"size": bytes, "sha256": hex}} of every file under root."""
    files = {}
    for file in sorted(root.rglob("*")):
        if file.is_file():
            rel = file.relative_to(root).as_posix()
            files[rel] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    return files


def _save_pause(step: int) -> None:
    """Tests only: sleep as :data:`PAUSE_ENV` says (see there)."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    at, _, seconds = spec.rpartition(":")
    if at and int(at) != step:
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
        """Write checkpoint ``step_{state.step}`` atomically. Collective: every rank calls it."""
        backend = self.backend
        name = f"step_{state.step:06d}"
        final = self.folder / name
        tmp = self.folder / f"{TMP_PREFIX}{name}"
        if backend.is_main:
            self._clear_leftovers()
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "rng").mkdir(parents=True)
        backend.barrier()
        tensors, rest = rng_state()
        rng_file = tmp / "rng" / f"rank{backend.rank:05d}.safetensors"
        save_file(tensors, str(rng_file), metadata={"rest": json.dumps(rest)})
        # Collective: a ZeRO backend writes one optimizer partition per rank.
        for i, trainee in enumerate(trainees):
            if i:
                _save_pause(state.step)
            backend.save_trainee(trainee, tmp / trainee.name)
        backend.barrier()
        if backend.is_main:
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
            old = None
            if final.exists():
                # Keep the previous checkpoint of this step whole until the new one is in place.
                old = self.folder / f"{OLD_PREFIX}{name}"
                if old.exists():
                    shutil.rmtree(old)
                os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(self.folder)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            self._prune(state.step)
            logger.info("checkpoint %s written", final)
        backend.barrier()
        return final

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
