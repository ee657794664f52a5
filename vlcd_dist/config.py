"""Typed training recipes: one dataclass per component, read from YAML with ``--set`` overrides.

A recipe (``configs/demo.yaml``, ``configs/paper.yaml``) is a YAML mapping whose top-level keys
are the sections of :class:`TrainConfig`. Every stage command reads the same recipe and uses
the sections it needs. Overrides address any field by its dotted path, list items by index::

    vlcd distill --config configs/demo.yaml --set optim.lr=3e-4 --set students.0.init_from=null

Values are parsed as YAML (``null``, ``true``, ``[96, 128]``) and then converted to the field's
type, so ``3e-4`` is a float even though YAML 1.1 would read it as a string. Unknown keys are
rejected with the closest valid name; a value of the wrong type names the field and what it
expects. The resolved recipe (:func:`to_dict`) is written beside every output and into every
checkpoint, so a run can always be rebuilt from what it wrote.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from vlcd_dist.data.stream import StreamConfig
from vlcd_dist.distributed import signal_number
from vlcd_dist.errors import ConfigError, VlcdError
from vlcd_dist.losses import LossConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
BACKENDS = ("accelerate", "deepspeed")
AUTOCAST_DTYPES = ("bfloat16", "float16", "float32")


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass
class RunConfig:
    """Where outputs go and how processes compute."""

    out: str = "runs/vlcd"
    """Output folder of the stage: config.yaml, tb/, checkpoints/, export/ (``--out`` sets it)."""
    seed: int = 0
    """Seeds model initialisation, data order and augmentation."""
    mixed_precision: str = "no"
    """Students' (and the trained teacher's) autocast: "no" (fp32), "bf16" or "fp16" (GPU)."""
    cpu: bool = False
    """Run on CPU even when GPUs are visible (no GPU: CPU and gloo regardless)."""
    threads: int | None = None
    """torch intra-op threads per process; None leaves torch's default (OMP_NUM_THREADS)."""
    flush_denormal: bool = True
    """Flush subnormal floats to zero on CPU: tiny layer-scale weights otherwise crawl."""
    channels_last: bool = False
    """Channels-last images and conv weights: faster convolutions on CPU (oneDNN) and GPUs."""
    backend: str = "accelerate"
    """Engine of the trained models: "accelerate" (DDP) or "deepspeed" (ZeRO stage 0-2)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (0, 1 or 2) when run.deepspeed_config is not given."""
    deepspeed_config: str | None = None
    """DeepSpeed JSON (e.g. launchers/deepspeed/zero2.json); its "auto" fields are filled from
    this recipe (batch size, accumulation, clipping, precision). None: built from zero_stage."""
    preempt_signal: str | None = "SIGUSR1"
    """Signal that makes every rank checkpoint and stop at the same step, then rank 0 requeue
    the SLURM job (slurm/vlcd.sh forwards its --signal); None: not handled."""
    collective_timeout_s: float = 1800.0
    """Seconds a collective waits for a missing rank before this rank stops with an error
    (process-group timeout): a rank that hangs cannot stall the others longer."""


@dataclass
class DataConfig:
    """The shard sets and how they are streamed (see vlcd_dist.data.stream)."""

    placenta: str = "shards/demo/placenta"
    """Placenta shard folder (sizes.json, placenta-{train,test}-*.tar) or brace pattern."""
    natural: str = "shards/demo/natural"
    """Natural-image shard folder or brace pattern, for predistillation."""
    image_size: tuple[int, int] = (384, 512)
    """[height, width] of the images every model sees (the paper: 384x512)."""
    batch_size: int = 32
    """Samples per rank per micro-batch; the global batch is this x ranks."""
    eval_batch_size: int = 64
    """Samples per rank per batch when extracting features for evaluation."""
    num_workers: int = 4
    """DataLoader worker processes per rank (each needs at least one shard)."""
    shuffle_buffer: int = 512
    """Raw samples each worker holds for shuffling."""
    strict: bool = False
    """Raise on the first bad sample instead of skipping and counting it."""

    def stream(self, shards: str, *, split: str | None, train: bool, seed: int) -> StreamConfig:
        """The StreamConfig of one shard set for training (augmented) or evaluation."""
        return StreamConfig(
            shards=shards,
            split=split,
            batch_size=self.batch_size if train else self.eval_batch_size,
            image_size=tuple(self.image_size),
            train=train,
            shuffle=train,
            shuffle_buffer=self.shuffle_buffer,
            seed=seed,
            num_workers=self.num_workers,
            drop_last=train,
            strict=self.strict,
            # Training needs equal batch counts (collectives every step); evaluation needs every
            # sample exactly once, and gathers ranks of different sizes.
            equal_batches=train,
        )


@dataclass
class TeacherSection:
    """The teacher: a registered preset (vlcd_dist.models.list_teachers) and field overrides."""

    preset: str = "resnet50_bert"
    """Registered teacher config the other fields override (resnet50_minilm, ...)."""
    image_model: str | None = None
    """timm backbone of the image tower; None keeps the preset's."""
    image_weights: str | None = None
    """"hub", "random" or a weight file/folder for the image backbone; None: preset's."""
    text_model: str | None = None
    """Hugging Face encoder name or local folder of the text tower; None: preset's."""
    text_weights: str | None = None
    """"pretrained" or "random"; None: preset's."""
    text_pooling: str | None = None
    """"cls" or "mean"; None: preset's."""
    max_text_length: int | None = None
    """Tokens kept per report; None: preset's."""
    embed_dim: int | None = None
    """d, shared with every student; None: preset's."""
    checkpoint: str | None = None
    """Trained whole-teacher weights (export/teacher.safetensors of train-teacher)."""
    autocast_dtype: str = "bfloat16"
    """Autocast of the frozen teacher's forward: "bfloat16", "float16" or "float32"."""

    def overrides(self) -> dict[str, Any]:
        """TeacherConfig fields this section sets (the None ones keep the preset's)."""
        names = (
            "image_model",
            "image_weights",
            "text_model",
            "text_weights",
            "text_pooling",
            "max_text_length",
            "embed_dim",
            "checkpoint",
            "autocast_dtype",
        )
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class StudentSpec:
    """One student trained by predistill/distill; each gets its own optimizer and schedule."""

    name: str = "mobilenetv3_large_100"
    """Registered student (vlcd_dist.models.list_students()) or any timm model name."""
    init_from: str | None = None
    """Predistilled weights: a .safetensors file, or a stage folder holding export/<name>."""
    pretrained: bool = False
    """Start the backbone from timm's hub weights (needs network)."""
    weights: str | None = None
    """Local backbone weight file (timm state_dict) to start from, instead of the hub."""
    image_size: tuple[int, int] | None = None
    """[height, width] the student sees; None: data.image_size."""
    lr: float | None = None
    """This student's peak learning rate; None: the stage's (or optim.lr)."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay; shared defaults of every trained model."""

    lr: float = 1e-3
    """Peak learning rate (a stage's or a student's lr overrides it)."""
    weight_decay: float = 0.05
    """Decoupled weight decay of matrices and kernels (never biases, norms, scales)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up from 0 (a stage's warmup_steps overrides it)."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine decay as a fraction of the peak."""
    clip_grad_norm: float | None = 1.0
    """Clip each model's gradient to this global L2 norm; None: no clipping (norm still logged)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step."""
    max_consecutive_skips: int = 25
    """Stop the run when one model's update is skipped (non-finite loss or gradient, fp16
    overflows included) this many steps in a row; 0: never stop."""


@dataclass
class StageConfig:
    """Length and learning rate of one stage."""

    epochs: float = 1.0
    """Passes over the stage's shards (fractions allowed); ignored when steps is set."""
    steps: int | None = None
    """Optimizer steps of the stage; None: from epochs."""
    lr: float | None = None
    """Peak learning rate of this stage; None: optim.lr."""
    warmup_steps: int | None = None
    """Warm-up steps of this stage; None: optim.warmup_steps."""


@dataclass
class TeacherStageConfig(StageConfig):
    """Stage 0: contrastive pretraining of the teacher, then the text-anchor cache."""

    lock_text: bool = False
    """Freeze the text encoder (its projection still trains), as open_clip's --lock-text."""
    anchor_batch_size: int = 128
    """Sentences per text-tower batch when building the anchor cache."""


@dataclass
class PredistillConfig(StageConfig):
    """Stage 1: every student matches the frozen teacher on natural images."""


@dataclass
class DistillConfig(StageConfig):
    """Stage 2: VLCD of every student on placenta image-report pairs."""

    init_from: str | None = None
    """Predistill output folder: each student without its own init_from loads export/<name>."""
    anchors: str | None = None
    """Text-anchor cache; None: anchors.safetensors beside teacher.checkpoint."""
    learn_logit_scale: bool = True
    """Each student learns its own logit scale (from the teacher's); False: the teacher's."""


@dataclass
class CheckpointConfig:
    """Checkpoints under OUT/checkpoints/step_NNNNNN/."""

    every_steps: int = 500
    """Save every this many optimizer steps (0: only at the end)."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted (0 keeps all)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in OUT/checkpoints (``--resume``)."""


@dataclass
class LoggingConfig:
    """TensorBoard (OUT/tb, rank 0 only) and the console."""

    every_steps: int = 10
    """Write scalars every this many optimizer steps (averaged over the interval and ranks)."""
    tensorboard: bool = True
    """Write TensorBoard event files under OUT/tb."""
    progress: bool = True
    """Show a progress bar on rank 0."""


@dataclass
class DegradeConfig:
    """Robustness: the test split again under tablet-camera corruptions (vlcd_dist.data.degrade)."""

    enabled: bool = False
    """Run the robustness study (``vlcd eval --degrade`` sets it)."""
    corruptions: list[str] = field(default_factory=lambda: ["tablet_camera"])
    """Corruptions to apply, from vlcd_dist.data.degrade.CORRUPTIONS."""
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """Severities 0..5 per corruption (0 is the identity: it reproduces the clean AUCs)."""

    def __post_init__(self) -> None:
        bad = [s for s in self.severities if not 0 <= s <= 5]
        if not self.severities or bad or len(set(self.severities)) != len(self.severities):
            raise ConfigError(
                f"severities={self.severities!r}: expected distinct severities in 0..5, "
                "e.g. [1, 2, 3, 4, 5]"
            )
        if not self.corruptions:
            raise ConfigError("corruptions=[]: name at least one, e.g. [tablet_camera]")
        if self.enabled:
            # Imported only when used: albumentations is slow to import.
            from vlcd_dist.data.degrade import CORRUPTIONS

            unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
            if unknown:
                raise ConfigError(
                    f"corruptions: unknown {unknown}; choose from {', '.join(CORRUPTIONS)}"
                )


@dataclass
class EvalConfig:
    """Linear probes, bootstrap intervals and latency of the teacher and every student."""

    students_from: str | None = None
    """Distill output folder holding export/<name>.safetensors; None: the students' init_from."""
    include_teacher: bool = True
    """Probe the teacher's image tower too (the reference of the speed-up)."""
    cv_folds: int = 5
    """Folds of the cross-validation that picks each probe's regularisation C."""
    probe_cs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    """Inverse regularisation strengths tried per task (on standardised unit-norm features)."""
    bootstrap: int = 1000
    """Bootstrap resamples of the test split for the confidence interval (0: none)."""
    confidence: float = 0.95
    """Coverage of the bootstrap interval."""
    latency_batch: int = 1
    """Images per forward when timing each model on CPU."""
    latency_iters: int = 20
    """Timed forwards per model (after 3 warm-up ones); the median is reported."""
    latency_threads: int = 1
    """CPU threads while timing."""
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    """Robustness study: probes trained on clean features, applied to corrupted test images."""
    zero_shot_prompts: dict[str, list[str]] = field(default_factory=dict)
    """{task: [positive prompt, negative prompt]}: zero-shot AUCs via the teacher's text tower."""

    def __post_init__(self) -> None:
        prompts = {} if self.zero_shot_prompts is None else self.zero_shot_prompts
        if not isinstance(prompts, dict):
            raise ConfigError(
                f"zero_shot_prompts={prompts!r}: expected a mapping "
                "{task: [positive prompt, negative prompt]}"
            )
        for task, pair in prompts.items():
            ok = (
                isinstance(pair, (list, tuple))
                and len(pair) == 2
                and all(isinstance(p, str) and p.strip() for p in pair)
            )
            if not ok:
                raise ConfigError(
                    f"zero_shot_prompts.{task}={pair!r}: expected [positive prompt, negative "
                    'prompt], e.g. ["meconium staining of the membranes", "no meconium"]'
                )
        self.zero_shot_prompts = {str(t): [str(p) for p in pair] for t, pair in prompts.items()}


@dataclass
class TrainConfig:
    """A whole recipe: every section a stage may read."""

    run: RunConfig = field(default_factory=RunConfig)
    """Output folder, seed, precision, device."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shard sets, resolution, batch size, loaders."""
    teacher: TeacherSection = field(default_factory=TeacherSection)
    """The vision-language teacher."""
    students: list[StudentSpec] = field(
        default_factory=lambda: [
            StudentSpec("mobilenetv3_large_100"),
            StudentSpec("efficientnet_b0"),
            StudentSpec("efficientformer_l1"),
        ]
    )
    """The students trained together by predistill and distill."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Weights of the VLCD objective."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule defaults of every trained model."""
    train_teacher: TeacherStageConfig = field(default_factory=TeacherStageConfig)
    """Stage 0."""
    predistill: PredistillConfig = field(default_factory=PredistillConfig)
    """Stage 1."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Stage 2."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint cadence and resume."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """TensorBoard and console."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""

    def validate(self) -> None:
        """Cross-field checks; raises ConfigError saying which value to change and how."""
        _check(
            self.run.mixed_precision in MIXED_PRECISION,
            "run.mixed_precision",
            self.run.mixed_precision,
            f"one of {MIXED_PRECISION}",
        )
        _check(self.run.backend in BACKENDS, "run.backend", self.run.backend, f"one of {BACKENDS}")
        _check(self.run.zero_stage in (0, 1, 2), "run.zero_stage", self.run.zero_stage, "0, 1 or 2")
        _check(
            self.run.collective_timeout_s > 0,
            "run.collective_timeout_s",
            self.run.collective_timeout_s,
            "> 0 seconds",
        )
        if self.run.preempt_signal:
            try:
                signal_number(self.run.preempt_signal)
            except ValueError as exn:
                raise ConfigError(f"run.preempt_signal={self.run.preempt_signal!r}: {exn}") from exn
        _check(
            self.run.threads is None or self.run.threads >= 1,
            "run.threads",
            self.run.threads,
            "null or >= 1",
        )
        _check(
            self.teacher.autocast_dtype in AUTOCAST_DTYPES,
            "teacher.autocast_dtype",
            self.teacher.autocast_dtype,
            f"one of {AUTOCAST_DTYPES}",
        )
        h, w = self.data.image_size
        _check(
            min(h, w) >= 8,
            "data.image_size",
            list(self.data.image_size),
            "[height, width], each >= 8",
        )
        for name in ("batch_size", "eval_batch_size"):
            _check(getattr(self.data, name) >= 1, f"data.{name}", getattr(self.data, name), ">= 1")
        _check(self.data.num_workers >= 0, "data.num_workers", self.data.num_workers, ">= 0")
        _check(bool(self.students), "students", self.students, "a list of at least one student")
        names = [s.name for s in self.students]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _check(not dupes, "students", names, f"distinct names (repeated: {dupes})")
        o = self.optim
        _check(o.lr > 0, "optim.lr", o.lr, "> 0")
        _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, ">= 0")
        _check(
            all(0 <= b < 1 for b in o.betas), "optim.betas", list(o.betas), "two numbers in [0, 1)"
        )
        _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, ">= 0")
        _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "in [0, 1]")
        _check(
            o.clip_grad_norm is None or o.clip_grad_norm > 0,
            "optim.clip_grad_norm",
            o.clip_grad_norm,
            "null or > 0",
        )
        _check(o.grad_accum_steps >= 1, "optim.grad_accum_steps", o.grad_accum_steps, ">= 1")
        _check(
            o.max_consecutive_skips >= 0,
            "optim.max_consecutive_skips",
            o.max_consecutive_skips,
            ">= 0 (0: never stop)",
        )
        for stage in ("train_teacher", "predistill", "distill"):
            s: StageConfig = getattr(self, stage)
            _check(s.epochs > 0 or s.steps, f"{stage}.epochs", s.epochs, "> 0 (or set steps)")
            _check(s.steps is None or s.steps >= 1, f"{stage}.steps", s.steps, "null or >= 1")
            _check(s.lr is None or s.lr > 0, f"{stage}.lr", s.lr, "null or > 0")
            _check(
                s.warmup_steps is None or s.warmup_steps >= 0,
                f"{stage}.warmup_steps",
                s.warmup_steps,
                "null or >= 0",
            )
        for i, s in enumerate(self.students):
            _check(s.lr is None or s.lr > 0, f"students.{i}.lr", s.lr, "null or > 0")
        c = self.checkpoint
        _check(c.every_steps >= 0, "checkpoint.every_steps", c.every_steps, ">= 0 (0: end only)")
        _check(c.keep_last >= 0, "checkpoint.keep_last", c.keep_last, ">= 0 (0: keep all)")
        _check(
            self.logging.every_steps >= 1, "logging.every_steps", self.logging.every_steps, ">= 1"
        )
        e = self.eval
        _check(e.cv_folds >= 2, "eval.cv_folds", e.cv_folds, ">= 2")
        _check(
            bool(e.probe_cs) and all(c > 0 for c in e.probe_cs),
            "eval.probe_cs",
            e.probe_cs,
            "a list of positive numbers",
        )
        _check(e.bootstrap >= 0, "eval.bootstrap", e.bootstrap, ">= 0")
        _check(0 < e.confidence < 1, "eval.confidence", e.confidence, "in (0, 1)")
        _check(
            e.latency_batch >= 1 and e.latency_iters >= 1 and e.latency_threads >= 1,
            "eval.latency_*",
            [e.latency_batch, e.latency_iters, e.latency_threads],
            "all >= 1",
        )


def _check(ok: object, path: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{path}={value!r}: expected {expected}")


# ---------------------------------------------------------------------------------------------
# Dict <-> dataclass


def _field_doc(cls: type, name: str) -> str:
    """The attribute docstring under a field (the one-line doc), read from the source."""
    import ast
    import inspect

    for klass in cls.__mro__:
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and node.target.id == name
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                return nxt.value.value.strip()
    return ""


def field_docs(cls: type) -> dict[str, str]:
    """{field name: one-line doc} of a config dataclass."""
    return {f.name: _field_doc(cls, f.name) for f in dataclasses.fields(cls)}


def _unknown(path: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    where = f"{path}.{key}" if path else key
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"unknown key {where!r}{hint} Valid keys here: {', '.join(valid)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` (from YAML) as type ``tp``, or ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, path)
            except ConfigError as exn:
                errors.append(str(exn))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}={value!r}: {errors}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and "name" in {f.name for f in dataclasses.fields(tp)}:
            value = {"name": value}  # `students: [efficientnet_b0, ...]` shorthand
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, path)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r}: expected a mapping, e.g. {{key: value}}")
        key_tp, value_tp = args or (Any, Any)
        return {
            _convert(k, key_tp, path): _convert(v, value_tp, f"{path}.{k}")
            for k, v in value.items()
        }
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r}: expected a list, e.g. [1, 2]")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}={value!r}: expected a list of {len(args)} values")
            return tuple(
                _convert(v, a, f"{path}.{i}")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        items = [_convert(v, item, f"{path}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r}: expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}={value!r}: expected an integer")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r}: expected a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads 3e-4 as a string; it is a number to any user.
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    return number
        raise ConfigError(f"{path}={value!r}: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}={value!r}: expected a string")
    raise ConfigError(f"{path}: cannot read a value of type {_type_name(tp)}")


def from_dict(cls: type, data: dict[str, Any], path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown(path, str(key), list(fields))
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else key)
    try:
        return cls(**kwargs)
    except VlcdError as exn:
        raise ConfigError(f"{path or cls.__name__}: {exn}") from exn
    except (TypeError, ValueError) as exn:
        raise ConfigError(f"{path or cls.__name__}: {exn}") from exn


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-ready structure of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# Overrides and loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.0.c=value' -> (['a', 'b', '0', 'c'], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exn:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exn})") from exn
    return parts, value


def _schema_at(cls: Any, parts: list[str]) -> None:
    """Check that a dotted path names a field (list items by index); ConfigError otherwise."""
    tp: Any = cls
    done: list[str] = []
    for part in parts:
        origin = typing.get_origin(tp)
        if origin in (Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            valid = [f.name for f in dataclasses.fields(tp)]
            if part not in valid:
                raise _unknown(".".join(done), part, valid)
            tp = hints[part]
        elif origin in (list, tuple):
            if not part.isdigit():
                raise ConfigError(
                    f"{'.'.join(done)} is a list: address items by index, e.g. {'.'.join(done)}.0"
                )
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1] if typing.get_args(tp) else Any
        else:
            raise ConfigError(f"{'.'.join(done)} is a value, it has no field {part!r}")
        done.append(part)


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set ``data[parts[0]][parts[1]]... = value``, creating mappings on the way."""
    _schema_at(TrainConfig, parts)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt_is_index = parts[i + 1].isdigit()
        if isinstance(node, list):
            idx = int(part)
            if idx >= len(node):
                raise ConfigError(
                    f"{'.'.join(parts[: i + 1])}: index out of range ({len(node)} items)"
                )
            if isinstance(node[idx], str):
                node[idx] = {"name": node[idx]}  # shorthand list item -> its mapping
            node = node[idx]
            continue
        if node.get(part) is None:
            if nxt_is_index:
                node[part] = _default_list(parts[: i + 1])
            else:
                node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        if idx >= len(node):
            raise ConfigError(f"{'.'.join(parts)}: index out of range ({len(node)} items)")
        node[idx] = value
    else:
        node[last] = value


def _default_list(parts: list[str]) -> list[Any]:
    value: Any = to_dict(TrainConfig())
    for p in parts:
        value = value[int(p)] if isinstance(value, list) else value[p]
    return value


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Read a YAML recipe (or the defaults when ``path`` is None), apply ``--set`` overrides,
    convert and validate. Raises ConfigError with the offending key and a fix."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} not found; see configs/ for examples")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exn:
            raise ConfigError(f"{path} is not valid YAML: {exn}") from exn
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections (run:, data:, ...)")
        data = loaded or {}
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    cfg = from_dict(TrainConfig, data)
    cfg.validate()
    return cfg


def dump_yaml(cfg: TrainConfig) -> str:
    """The resolved recipe as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
