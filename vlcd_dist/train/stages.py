"""The training stages: teacher pretraining (stage 0), predistillation (1) and VLCD (2).

Each is a :class:`~vlcd_dist.train.trainer.Trainer`; the CLI builds one from a recipe and calls
``run()``. Stage outputs (under run.out)::

    train-teacher: export/teacher.safetensors (+ .json), export/anchors.safetensors
    predistill, distill: export/<student>.safetensors (+ .json) for every student
    distill with an open_clip / hf_clip teacher: anchors.safetensors (built on first run)
    all: config.yaml, summary.json, tb/, checkpoints/step_NNNNNN/
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlcd_dist import distributed as vdist
from vlcd_dist.anchors import ANCHOR_FILE
from vlcd_dist.config import ConfigError, StageConfig, StudentSpec, TrainConfig
from vlcd_dist.data.storage import StorageConfig, StorageError
from vlcd_dist.data.stream import ShardLoader, iter_tar, resolve_shards
from vlcd_dist.errors import VlcdError
from vlcd_dist.io import write_json
from vlcd_dist.losses import clip_loss, predistill_loss, vlcd_loss
from vlcd_dist.models import (
    FrozenTeacher,
    Student,
    TeacherConfig,
    VisionLanguageTeacher,
    create_student,
    create_teacher,
    save_teacher,
    teacher_config,
)
from vlcd_dist.models.exported import (
    export_student,
    read_student_info,
    resolve_student_file,
    stored_input,
    use_stored_input,
)
from vlcd_dist.models.foreign_teacher import HFClipTeacher, OpenClipTeacher
from vlcd_dist.models.weights import ModelError, load_into, load_state_dict, state_dict_hash
from vlcd_dist.train.backend import Backend, Trainee
from vlcd_dist.train.compiling import (
    compile_student,
    compile_tower,
    raise_recompile_limit,
    require_compiler,
)
from vlcd_dist.train.teacher_cache import open_cache, stage_stream
from vlcd_dist.train.trainer import Trainer

logger = logging.getLogger("vlcd_dist.train")

TEACHER_FILE = "teacher.safetensors"


# ---------------------------------------------------------------------------------------------
# Building models from a recipe (shared with evaluation)


def build_teacher_config(cfg: TrainConfig) -> TeacherConfig:
    """The TeacherConfig of a recipe: preset + overrides, at data.image_size."""
    overrides: dict[str, Any] = cfg.teacher.overrides()
    overrides["image_size"] = tuple(cfg.data.image_size)
    try:
        return teacher_config(cfg.teacher.preset, **overrides)
    except ModelError as exn:
        raise ConfigError(f"teacher: {exn}") from exn


def foreign_teacher(cfg: TrainConfig) -> nn.Module:
    """The recipe's open_clip or Hugging Face CLIP teacher (teacher.source), built and loaded."""
    t = cfg.teacher
    try:
        if t.source == "open_clip":
            assert t.open_clip.model is not None  # validate() refuses a recipe without it
            oc = t.open_clip
            return OpenClipTeacher(
                oc.model, oc.pretrained, mean=oc.mean, std=oc.std, image_size=oc.image_size
            )
        assert t.hf_clip.model is not None
        return HFClipTeacher(t.hf_clip.model)
    except ModelError as exn:
        raise ConfigError(f"teacher ({t.source}): {exn}") from exn


def teacher_label(cfg: TrainConfig) -> str | None:
    """What the exported students record as their teacher: the checkpoint, or source:model."""
    t = cfg.teacher
    if t.source == "open_clip":
        return f"open_clip:{t.open_clip.model}" + (
            f" ({t.open_clip.pretrained})" if t.open_clip.pretrained else ""
        )
    if t.source == "hf_clip":
        return f"hf_clip:{t.hf_clip.model}"
    return t.checkpoint


def load_frozen_teacher(
    cfg: TrainConfig,
    device: torch.device,
    memory_format: torch.memory_format | None = None,
    image_tower: bool = True,
) -> FrozenTeacher:
    """The recipe's teacher (teacher.source: this package's with trained weights from
    teacher.checkpoint, or an open_clip / Hugging Face CLIP model), frozen, on ``device``.
    ``image_tower=False``: this package's teacher without its image tower (a foundation model
    is built whole)."""
    fmt = memory_format or torch.contiguous_format
    if cfg.teacher.source != "vlcd":
        frozen = FrozenTeacher(foreign_teacher(cfg), autocast_dtype=cfg.teacher.autocast_dtype)
        return frozen.to(device, memory_format=fmt)
    tcfg = build_teacher_config(cfg)
    if tcfg.checkpoint is None:
        logger.warning(
            "teacher.checkpoint is not set: distilling from an untrained teacher. Run "
            "`vlcd train-teacher` and pass --set teacher.checkpoint=OUT/export/%s",
            TEACHER_FILE,
        )
    elif not Path(tcfg.checkpoint).exists():
        raise ConfigError(
            f"teacher.checkpoint={tcfg.checkpoint!r} does not exist; run `vlcd train-teacher` "
            "first or fix the path"
        )
    teacher = create_teacher(tcfg, image_tower=image_tower)
    frozen = FrozenTeacher(teacher, autocast_dtype=cfg.teacher.autocast_dtype)
    return frozen.to(device, memory_format=fmt)


def student_seed(seed: int, name: str) -> int:
    """A student's init seed: depends on its name only, not on which other students train."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def build_student(cfg: TrainConfig, spec: StudentSpec, embed_dim: int) -> Student:
    """A fresh student of ``spec`` projecting to ``embed_dim``, seeded by its name."""
    torch.manual_seed(student_seed(cfg.run.seed, spec.name))
    image_size = tuple(spec.image_size or cfg.data.image_size)
    try:
        return create_student(
            spec.name,
            embed_dim=embed_dim,
            pretrained=spec.pretrained,
            weights=spec.weights,
            image_size=image_size,
        )
    except ModelError as exn:
        raise ConfigError(f"students[{spec.name}]: {exn}") from exn


def load_init(student: Student, init_from: str, name: str) -> Path:
    """Load the exported weights of ``name`` found at ``init_from`` into ``student``, and the
    input statistics stored with them (``vlcd-student/2``), which it goes on training with."""
    path = resolve_student_file(init_from, name)
    info = read_student_info(path)
    build = info.get("build", {})
    if build.get("name") != name or int(build.get("embed_dim", -1)) != student.embed_dim:
        raise ConfigError(
            f"{path} holds student {build.get('name')!r} with d={build.get('embed_dim')}, but "
            f"this run trains {name!r} with d={student.embed_dim}"
        )
    load_into(student, load_state_dict(path), source=str(path))
    stats = stored_input(info, path)
    if stats is not None:
        use_stored_input(student, stats)
    return path


class StudentModule(nn.Module):
    """What a distillation stage trains for one student: the student and, in VLCD, its own
    learnable log logit scale (inside the module, so DDP averages its gradient too).

    forward(images [B, 3, H, W]) -> {"features": z_k [B, d], "logit_scale": [] (if learnt)}.
    """

    def __init__(self, student: Student, log_logit_scale: float | None, max_scale: float) -> None:
        super().__init__()
        self.student = student
        self.max_scale = max_scale
        self.logit_scale = (
            nn.Parameter(torch.tensor(float(log_logit_scale)))
            if log_logit_scale is not None
            else None
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W] in [0, 1]; the student normalises them its own way first."""
        out = {"features": self.student(self.student.normalize(images))}
        if self.logit_scale is not None:
            out["logit_scale"] = self.logit_scale.exp().clamp(max=self.max_scale)
        return out


@contextlib.contextmanager
def _all_local_cores(backend: Backend) -> Iterator[None]:
    """On CPU, let the one busy rank use the cores its idle local peers leave free."""
    before = torch.get_num_threads()
    local = vdist.dist_info().local_world_size
    if backend.device.type == "cpu" and local > 1:
        torch.set_num_threads(min(os.cpu_count() or 1, before * local))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Stage 0: the teacher


class TeacherTrainer(Trainer):
    """CLIP-loss pretraining of the vision-language teacher on placenta image-report pairs,
    then its export and the text-anchor cache every later stage reads.

    A report's text feature is, by default, the mean of its sentences' embeddings: the text
    anchors of distillation, split by the same :func:`vlcd_dist.anchors.split_sentences`
    (``train_teacher.text_feature``). With the text encoder locked, each training report's mean
    pooled encoder state is computed once in :meth:`build` and only the projection runs per
    step. Texts cut at ``teacher.max_text_length`` are counted (summary.json, the log).
    """

    stage = "train-teacher"

    @property
    def stage_cfg(self) -> StageConfig:
        return self.cfg.train_teacher

    def build(self) -> None:
        cfg = self.cfg
        if cfg.teacher.source != "vlcd":
            raise ConfigError(
                f"train-teacher trains this package's teacher; teacher.source="
                f"{cfg.teacher.source} is a frozen foundation model: skip this stage and run "
                "predistill and distill (distill builds its text anchors)"
            )
        if cfg.run.compile:
            logger.info("train-teacher: run.compile applies to predistill and distill only")
        torch.manual_seed(cfg.run.seed)
        tcfg = build_teacher_config(cfg)
        if tcfg.checkpoint is not None:
            logger.info("train-teacher: continuing from %s", tcfg.checkpoint)
        self.teacher: VisionLanguageTeacher = create_teacher(tcfg)
        if cfg.train_teacher.lock_text:
            self.teacher.text.encoder.requires_grad_(False)
        stream = cfg.data.stream(cfg.data.placenta, split="train", train=True, seed=cfg.run.seed)
        self.loader = ShardLoader(stream, self.backend.rank, self.backend.world_size)
        self.total_steps = self.plan_steps(len(self.loader))
        self.text_states = None
        if cfg.train_teacher.text_feature == "sentence_mean" and cfg.train_teacher.lock_text:
            self.text_states = self._locked_text_states()
        self.trainee = self.add_trainee("teacher", self.teacher)

    def _locked_text_states(self):  # -> AnchorTable
        """Mean pooled encoder state of every training report, computed once (collective)."""
        from vlcd_dist.anchors import report_state_table

        cfg = self.cfg
        t0 = time.perf_counter()
        # The precision the encoder would have run at inside the training forward (the recipe's,
        # or the launcher's when the recipe leaves it out: the backend holds the resolved one).
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(self.backend.mixed_precision, "float32")
        # The teacher reaches the device only in add_trainee; the encoder runs where it is.
        self.teacher.text.to(self.device)
        # Every rank embeds its share of the sentences, so no core is idle to lend.
        table = report_state_table(
            self.teacher,
            shard_reports(cfg.data.placenta, split="train", storage=cfg.data.storage),
            batch_size=cfg.train_teacher.anchor_batch_size,
            autocast_dtype=dtype,
            device=self.device,
        )
        logger.info(
            "train-teacher: locked text encoder: sentence states of %d training reports "
            "computed once (%.0f s)",
            len(table),
            time.perf_counter() - t0,
        )
        return table

    def text_inputs(self, texts: list[str], keys: list[str]) -> dict[str, torch.Tensor]:
        """The text arguments of the teacher's forward for one batch (on the device), by
        ``train_teacher.text_feature``: precomputed states (locked encoder), sentences with
        their report pairs, or whole reports."""
        if self.text_states is not None:
            return {"text_states": self.text_states.lookup(keys).to(self.device)}
        if self.cfg.train_teacher.text_feature == "sentence_mean":
            from vlcd_dist.anchors import tokenize_reports

            inputs = tokenize_reports(self.teacher.text, texts)
        else:
            inputs = self.teacher.text.tokenize(texts)
        return {k: v.to(self.device) for k, v in inputs.items()}

    def on_train_start(self) -> None:
        if self.cfg.train_teacher.lock_text:
            # A locked encoder is a fixed function: no dropout noise on its features.
            self.teacher.text.encoder.eval()

    def micro_step(
        self, batch: dict[str, Any], sync: bool, scale: float
    ) -> dict[str, dict[str, torch.Tensor]]:
        trainee, backend = self.trainee, self.backend
        images = self.backend.images(batch["image"])
        text = self.text_inputs(batch["text"], batch["key"])
        with backend.sync_gradients(trainee, sync):
            with backend.autocast():
                out = trainee.model(images, **text)
            parts = clip_loss(out["image_features"], out["text_features"], out["logit_scale"])
            loss = parts["loss"]
            if self.loss_hook is not None:
                loss = self.loss_hook(trainee.name, self.state.step, loss)
            backend.backward(trainee, loss * scale)
        return {"teacher": {"loss": loss.detach(), "logit_scale": out["logit_scale"].detach()}}

    def finish(self) -> None:
        cfg, backend = self.cfg, self.backend
        # Counted before the anchors, which count their own (in the cache's recipe).
        # Distinct texts over all ranks: an epoch may hand the same report to another rank.
        mine = torch.tensor(sorted(self.teacher.text.cut_texts), dtype=torch.int64)
        every = vdist.gather_no_grad(mine.to(self.device)) if backend.world_size > 1 else mine
        self.text_truncated = int(torch.unique(every).numel())
        if self.text_truncated:
            logger.warning(
                "train-teacher: %d distinct training text(s) longer than "
                "teacher.max_text_length=%d tokens were truncated",
                self.text_truncated,
                self.teacher.text.max_length,
            )
        export = self.out / "export"
        teacher_path = export / TEACHER_FILE
        weights = backend.export_state(self.trainee)  # collective under ZeRO

        def save() -> None:
            save_teacher(self.teacher, teacher_path, weights)
            info = {
                "teacher_config": self.teacher.cfg.to_dict(),
                "stage": self.stage,
                "step": self.state.step,
            }
            write_json(export / "teacher.json", info)
            logger.info("train-teacher: teacher weights in %s", teacher_path)
            with _all_local_cores(backend):
                build_anchors(
                    self.teacher,
                    cfg.data.placenta,
                    export / ANCHOR_FILE,
                    autocast_dtype=cfg.teacher.autocast_dtype,
                    batch_size=cfg.train_teacher.anchor_batch_size,
                    storage=cfg.data.storage,
                )

        backend.run_on_main(f"writing the teacher and its text anchors into {export}", save)

    def summary(self) -> dict[str, Any]:
        return {
            "text_feature": self.cfg.train_teacher.text_feature,
            "text_max_length": self.teacher.text.max_length,
            "text_truncated": getattr(self, "text_truncated", 0),
        }


def shard_reports(
    placenta: str, split: str | None = None, storage: StorageConfig | None = None
) -> Iterator[tuple[str, str]]:
    """(sample key, report) of every readable report in the placenta shards (of one split).

    A report that is not UTF-8 is left out (the loader skips that sample too); a damaged shard
    keeps the reports before the damage (logged). A shard store that cannot be read stops."""
    for url in resolve_shards(placenta, split=split, storage=storage).urls:
        try:
            for raw in iter_tar(url, storage):
                if "txt" in raw:
                    try:
                        yield raw["__key__"], raw["txt"].decode("utf-8")
                    except UnicodeDecodeError:
                        continue
        except StorageError:
            raise
        except Exception as exn:  # noqa: BLE001 - a damaged shard keeps its good reports
            logger.warning("reports: %s: %s", url, exn)


def build_anchors(
    teacher: VisionLanguageTeacher | FrozenTeacher,
    placenta: str,
    path: Path,
    *,
    autocast_dtype: str,
    batch_size: int,
    storage: StorageConfig | None = None,
) -> Path:
    """The text-anchor cache of every report in the placenta shards (all splits)."""
    from vlcd_dist.anchors import build_anchor_cache

    frozen = (
        teacher
        if isinstance(teacher, FrozenTeacher)
        else FrozenTeacher(teacher, autocast_dtype=autocast_dtype)
    )
    out = build_anchor_cache(
        frozen, shard_reports(placenta, storage=storage), path, batch_size=batch_size
    )
    logger.info("text anchors of %s in %s", frozen.name, out)
    return out


# ---------------------------------------------------------------------------------------------
# Stages 1 and 2: every student at once


class DistillTrainer(Trainer):
    """Predistillation (natural images, L_pre) or VLCD (placenta pairs, L_t + lambda (L_dist +
    L_gnd)) of every configured student at once, with one frozen teacher forward per batch, or
    none: with ``teacher.cache`` the teacher's embeddings are read from the cache of
    ``vlcd cache-teacher`` (train/teacher_cache.py) and its image tower is never built."""

    def __init__(self, cfg: TrainConfig, mode: str, backend: Backend | None = None) -> None:
        if mode not in ("predistill", "distill"):
            raise ValueError(f"mode must be 'predistill' or 'distill', got {mode!r}")
        self.mode = mode
        self.stage = mode
        super().__init__(cfg, backend)

    @property
    def stage_cfg(self) -> StageConfig:
        return self.cfg.distill if self.mode == "distill" else self.cfg.predistill

    def _count_teacher(self, *_: Any) -> None:
        self.state.teacher_forwards += 1

    def build(self) -> None:
        cfg = self.cfg
        compiled = cfg.run.compile
        if compiled:
            require_compiler(self.device)  # before any model is built
            raise_recompile_limit(len(cfg.students) + 1)
        cached = cfg.teacher.cache is not None
        self.frozen = load_frozen_teacher(
            cfg, self.device, self.backend.memory_format, image_tower=not cached
        )
        self.teacher_hash = state_dict_hash(self.frozen.teacher)
        self.cache = None
        if cached:
            foreign = self.frozen if cfg.teacher.source != "vlcd" else None
            self.cache = open_cache(cfg, self.mode, foreign)
        if self.frozen.teacher.image is not None:
            # Counts real forwards of the teacher's image tower, whoever calls it.
            self.frozen.teacher.image.register_forward_hook(self._count_teacher)
            if compiled:
                # Only the tower's forward: its __call__, which runs the counting hook, stays
                # eager.
                compile_tower(self.frozen.teacher.image, cfg.run.compile_mode)
        self.teacher_scale = self.frozen.get_logit_scale().to(self.device)
        self.anchors = self._load_anchors() if self.mode == "distill" else None
        # With a cache, its views (open_cache checked that data.views, if set, agrees).
        views = (cfg.data.views or self.cache.views) if self.cache is not None else None
        self.loader = ShardLoader(
            stage_stream(cfg, self.mode, views), self.backend.rank, self.backend.world_size
        )
        self.total_steps = self.plan_steps(len(self.loader))
        learn_scale = self.mode == "distill" and cfg.distill.learn_logit_scale
        self.sources: dict[str, str | None] = {}
        for spec in cfg.students:
            student = build_student(cfg, spec, self.frozen.embed_dim)
            source = None
            init_from = spec.init_from or cfg.distill.init_from
            if self.mode == "distill" and init_from:
                source = str(load_init(student, init_from, spec.name))
                logger.info("%s: %s starts from %s", self.stage, spec.name, source)
            self.sources[spec.name] = source
            module = StudentModule(
                student,
                math.log(float(self.teacher_scale)) if learn_scale else None,
                self.frozen.max_logit_scale,
            )
            if compiled:
                # In place and before the backend wraps it: DDP / DeepSpeed then wrap the very
                # module they would wrap eagerly (same parameters, same gradient hooks outside
                # the graph, same state_dict keys in checkpoints); see train/compiling.py.
                compile_student(module, cfg.run.compile_mode)
            self.add_trainee(spec.name, module, lr=spec.lr)
        if compiled:
            logger.info(
                "%s: run.compile: %d student(s)%s compiled (mode %s); the first step includes "
                "compiling",
                self.stage,
                len(cfg.students),
                "" if self.cache is not None else " and the teacher's image tower",
                cfg.run.compile_mode or "default",
            )

    def _load_anchors(self):  # -> AnchorTable
        from vlcd_dist.anchors import AnchorCache

        cfg = self.cfg
        path = cfg.distill.anchors
        if cfg.teacher.source != "vlcd":
            # A foundation model has no train-teacher stage: its anchors are built here, once,
            # by rank 0 (or read back on a resumed run), then read by every rank.
            path = Path(path) if path is not None else self.out / ANCHOR_FILE
            if not path.is_file():

                def build() -> None:
                    with _all_local_cores(self.backend):
                        build_anchors(
                            self.frozen,
                            cfg.data.placenta,
                            path,
                            autocast_dtype=cfg.teacher.autocast_dtype,
                            batch_size=cfg.train_teacher.anchor_batch_size,
                            storage=cfg.data.storage,
                        )

                # A failure on rank 0 stops every rank with its message (not a timeout).
                self.backend.run_on_main(f"building the text anchors {path}", build)
            return AnchorCache(path, expected_teacher_hash=self.frozen.text_hash()).load()
        if path is None:
            if cfg.teacher.checkpoint is None:
                raise ConfigError(
                    "distill needs the text-anchor cache: set distill.anchors, or "
                    "teacher.checkpoint (the cache is read from beside it)"
                )
            path = str(Path(cfg.teacher.checkpoint).parent / ANCHOR_FILE)
        cache = AnchorCache(path, expected_teacher_hash=self.frozen.text_hash())
        return cache.load()

    def targets(self, batch: dict[str, Any]) -> dict[str, Any]:
        """What every student's loss needs from one batch, computed once: images [B, 3, H, W],
        teacher features z_T [B, d] (the one teacher forward), text anchors u [B, d] (VLCD) and
        every rank's batch size (one collective)."""
        images = self.backend.images(batch["image"])
        if self.cache is not None:
            z_t = self.cache.lookup(batch["key"], batch["view"]).to(self.device)
        else:
            z_t = self.frozen.encode_image(images)
        anchors = None
        if self.anchors is not None:
            anchors = self.anchors.lookup(batch["key"]).to(self.device)
        sizes = vdist.gather_sizes(images.shape[0], like=z_t)
        return {"images": images, "teacher": z_t, "anchors": anchors, "sizes": sizes}

    def student_step(
        self, trainee: Trainee, targets: dict[str, Any], sync: bool, scale: float
    ) -> dict[str, torch.Tensor]:
        """Forward, loss and backward of one student on one micro-batch; its loss parts."""
        backend = self.backend
        with backend.sync_gradients(trainee, sync):
            with backend.autocast():
                res = trainee.model(targets["images"])
            z = res["features"]
            if targets["anchors"] is not None:
                logit_scale = res.get("logit_scale", self.teacher_scale)
                parts = vlcd_loss(
                    z,
                    targets["teacher"],
                    targets["anchors"],
                    logit_scale,
                    self.cfg.loss,
                    sizes=targets["sizes"],
                )
            else:
                parts = predistill_loss(z, targets["teacher"], sizes=targets["sizes"])
            loss = parts["loss"]
            if self.loss_hook is not None:
                loss = self.loss_hook(trainee.name, self.state.step, loss)
            # Every rank runs this backward (the loss gathers across ranks), NaN or not.
            backend.backward(trainee, loss * scale)
        values = {k: v.detach() for k, v in parts.items() if k in ("contrastive", "dist", "gnd")}
        values["loss"] = loss.detach()
        if "logit_scale" in res:
            values["logit_scale"] = res["logit_scale"].detach()
        return values

    def micro_step(
        self, batch: dict[str, Any], sync: bool, scale: float
    ) -> dict[str, dict[str, torch.Tensor]]:
        targets = self.targets(batch)
        return {t.name: self.student_step(t, targets, sync, scale) for t in self.trainees}

    def summary(self) -> dict[str, Any]:
        # Fingerprints of the teacher before and after: the run must not have changed it.
        # With teacher.cache, teacher_forwards is 0 and the hashes cover the text tower only.
        return {
            "teacher_hash_start": self.teacher_hash,
            "teacher_hash_end": state_dict_hash(self.frozen.teacher),
            "teacher_cache": self.cfg.teacher.cache,
        }

    def finish(self) -> None:
        # Collective (a ZeRO backend gathers the fp32 masters); rank 0 writes.
        weights = [self.backend.export_state(t) for t in self.trainees]
        if self.backend.is_main:
            export = self.out / "export"
            for trainee, spec, full in zip(self.trainees, self.cfg.students, weights, strict=True):
                module: StudentModule = trainee.module  # type: ignore[assignment]
                extra = {
                    "stage": self.stage,
                    "step": self.state.step,
                    "init_from": self.sources.get(spec.name),
                    "teacher": teacher_label(self.cfg),
                    "logit_scale": float(module.logit_scale.detach().exp())
                    if module.logit_scale is not None
                    else float(self.teacher_scale),
                    "skipped_steps": self.state.counters[spec.name]["skipped_steps"],
                }
                prefix = "student."
                state = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
                path = export_student(module.student, export, {"name": spec.name}, extra, state)
                logger.info("%s: %s exported to %s", self.stage, spec.name, path)
        self.backend.barrier()


def create_stage(cfg: TrainConfig, stage: str, backend: Backend | None = None) -> Trainer:
    """The trainer of a stage name: train-teacher, predistill or distill."""
    if stage == "train-teacher":
        return TeacherTrainer(cfg, backend)
    if stage in ("predistill", "distill"):
        return DistillTrainer(cfg, stage, backend)
    raise VlcdError(f"unknown stage {stage!r}: use train-teacher, predistill or distill")
