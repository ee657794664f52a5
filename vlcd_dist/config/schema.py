"""The recipe schema: one dataclass per component, each field with a one-line doc, and the
checks that say how to fix a value (see :mod:`vlcd_dist.config` for the recipe format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlcd_dist.data.storage import StorageConfig
from vlcd_dist.data.stream import StreamConfig
from vlcd_dist.distributed import signal_number
from vlcd_dist.errors import ConfigError
from vlcd_dist.evaluation.efficiency import PRECISIONS
from vlcd_dist.losses import LossConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
BACKENDS = ("accelerate", "deepspeed")
AUTOCAST_DTYPES = ("bfloat16", "float16", "float32")
TEXT_FEATURES = ("sentence_mean", "report")
TEACHER_SOURCES = ("vlcd", "open_clip", "hf_clip")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass
class RunConfig:
    """Where outputs go and how processes compute."""

    out: str = "runs/vlcd"
    """Output folder of the stage: config.yaml, tb/, checkpoints/, export/ (``--out`` sets it)."""
    seed: int = 0
    """Seeds model initialisation, data order and augmentation."""
    mixed_precision: str | None = None
    """Autocast of the trained models: "no" (fp32), "bf16", "fp16" (GPU); null: the launcher's."""
    cpu: bool = False
    """Run on CPU even when GPUs are visible (no GPU: CPU and gloo regardless)."""
    threads: int | None = None
    """torch intra-op threads per process; None leaves torch's default (OMP_NUM_THREADS)."""
    flush_denormal: bool = True
    """Flush subnormal floats to zero on CPU: tiny layer-scale weights otherwise crawl."""
    channels_last: bool = False
    """Channels-last images and conv weights: faster convolutions on CPU (oneDNN) and GPUs."""
    compile: bool = False
    """predistill/distill: torch.compile each student's forward+backward and the teacher's
    image forward (inductor: needs a C++ compiler on CPU, Triton on GPUs); weights unchanged."""
    compile_mode: str | None = None
    """torch.compile mode when run.compile is true: null (= "default"), "reduce-overhead"
    (CUDA graphs on GPUs), "max-autotune", "max-autotune-no-cudagraphs"."""
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
    """Placenta shard folder (sizes.json, placenta-{train,test}-*.tar) or brace pattern; local,
    s3://bucket/prefix or http(s)://host/path (docs/data.md)."""
    natural: str = "shards/demo/natural"
    """Natural-image shard folder or brace pattern, for predistillation (local, s3://, http)."""
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
    crop_scale: tuple[float, float] = (0.5, 1.0)
    """Training augmentation: the random resized crop's area range, as fractions of the image."""
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.02)
    """Training augmentation: colour jitter strengths (brightness, contrast, saturation, hue);
    0 switches one off. Every model sees the same augmented batch."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """How s3:// and http(s):// shard sets are reached; credentials come from the environment
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a profile, never from the recipe."""
    views: int = 0
    """Training augmentation: 0 draws it from the loader's random stream; A > 0 gives every
    sample A seeded views (from run.seed, its key, the view index) and shows one of them per
    epoch, so that any run can regenerate them (a teacher.cache sets this from the cache)."""

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
            crop_scale=tuple(self.crop_scale),
            color_jitter=tuple(self.color_jitter),
            storage=self.storage,
            views=self.views if train else 0,
            # Training needs equal batch counts (collectives every step); evaluation needs every
            # sample exactly once, and gathers ranks of different sizes.
            equal_batches=train,
        )


@dataclass
class OpenClipSection:
    """An open_clip model as the teacher (teacher.source: open_clip; docs/teachers.md)."""

    model: str | None = None
    """Config name (open_clip.list_models()), hf-hub:org/name, a folder with
    open_clip_config.json, or a model-config .json file."""
    pretrained: str | None = None
    """A tag (e.g. openai), a local checkpoint file/folder, or "random"; None for hf-hub and
    folders (their own weights; any other value is refused)."""
    mean: tuple[float, float, float] | None = None
    """Per-channel input mean overriding the model's preprocess_cfg (None: open_clip's)."""
    std: tuple[float, float, float] | None = None
    """Per-channel input std overriding the model's preprocess_cfg (None: open_clip's)."""
    image_size: tuple[int, int] | None = None
    """[height, width] to build the model for and resize images to (None: its config's)."""


@dataclass
class HFClipSection:
    """A Hugging Face CLIPModel as the teacher (teacher.source: hf_clip; docs/teachers.md)."""

    model: str | None = None
    """Local folder or hub name of a transformers CLIPModel with its tokenizer and
    preprocessor_config.json (e.g. vinid/plip)."""


@dataclass
class TeacherSection:
    """The teacher: this package's (a registered preset, vlcd_dist.models.list_teachers, and
    field overrides), or a foundation model from open_clip or Hugging Face (``source``)."""

    source: str = "vlcd"
    """"vlcd" (trained by train-teacher), "open_clip" or "hf_clip" (frozen foundation models;
    train-teacher is skipped and distill builds the text anchors)."""
    open_clip: OpenClipSection = field(default_factory=OpenClipSection)
    """The open_clip model (source: open_clip)."""
    hf_clip: HFClipSection = field(default_factory=HFClipSection)
    """The CLIPModel (source: hf_clip)."""
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
    """Tokens kept per text (sentence or report; truncations are counted); None: preset's
    (the presets: the most the text model takes)."""
    embed_dim: int | None = None
    """d, shared with every student; None: preset's."""
    checkpoint: str | None = None
    """Trained whole-teacher weights (export/teacher.safetensors of train-teacher)."""
    autocast_dtype: str = "bfloat16"
    """Autocast of the frozen teacher's forward: "bfloat16", "float16" or "float32"."""
    cache: str | None = None
    """Folder written by `vlcd cache-teacher`: predistill/distill read the teacher's image
    embeddings from it instead of running (or building) the teacher's image tower."""

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
    text_feature: str = "sentence_mean"
    """A report's text feature in the CLIP loss: "sentence_mean" (mean of its sentences'
    embeddings, as the text anchors; with lock_text the encoder runs once per sentence before
    training, not every step) or "report" (the whole report, cut at teacher.max_text_length)."""
    anchor_batch_size: int = 128
    """Sentences per text-tower batch when building the anchor cache (and locked text states)."""


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
    """Show progress on rank 0: a bar in a terminal, else a line every progress_every_s."""
    progress_every_s: float = 30.0
    """Seconds between progress lines when stderr is not a terminal (a SLURM log; 0: each step)."""


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
class ZeroShotPrompt:
    """The prompts of one zero-shot task; each side's embeddings are averaged (CLIP's prompt
    ensembling). A recipe may also give the pair [positive prompt, negative prompt]."""

    positive: list[str] = field(default_factory=list)
    """Prompts of the finding present, e.g. ["meconium staining of the membranes", ...]."""
    negative: list[str] = field(default_factory=list)
    """Prompts of it absent, worded as a report says it ("membranes without discolouration")."""

    def __post_init__(self) -> None:
        for side in ("positive", "negative"):
            value = getattr(self, side)
            prompts = [value] if isinstance(value, str) else value
            ok = (
                isinstance(prompts, (list, tuple))
                and bool(prompts)
                and all(isinstance(p, str) and p.strip() for p in prompts)
            )
            if not ok:
                raise ConfigError(
                    f"{side}={value!r}: expected one or more non-empty prompts, e.g. "
                    f"{_PROMPT_EXAMPLE[side]!r}"
                )
            setattr(self, side, [str(p) for p in prompts])


_PROMPT_EXAMPLE = {
    "positive": ["meconium staining of the membranes", "green-brown membranes"],
    "negative": ["membranes without discolouration", "thin, translucent membranes"],
}


def _zero_shot_prompt(task: str, value: object) -> ZeroShotPrompt:
    """A recipe's prompts of one task: a ZeroShotPrompt, its mapping, or the pair
    [positive, negative] of earlier recipes."""
    if isinstance(value, ZeroShotPrompt):
        return value
    try:
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"positive", "negative"})
            if not unknown:
                return ZeroShotPrompt(**value)
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            return ZeroShotPrompt(positive=[value[0]], negative=[value[1]])
    except ConfigError as exn:
        raise ConfigError(f"zero_shot_prompts.{task}.{exn}") from exn
    raise ConfigError(
        f"zero_shot_prompts.{task}={value!r}: expected {{positive: [prompt, ...], negative: "
        "[prompt, ...]}, or the pair [positive prompt, negative prompt]"
    )


@dataclass
class EvalConfig:
    """Linear probes, bootstrap intervals and latency of the teacher and every student."""

    students_from: str | None = None
    """Distill output folder holding export/<name>.safetensors; None: the students' init_from."""
    include_teacher: bool = True
    """Probe the teacher's image tower too (the reference of the speed-up)."""
    val_fraction: float = 0.2
    """Share of the train split's studies held out for validation (stratified by label
    pattern, fixed by the studies alone): the probes never see them; their AUCs choose between
    runs (a sweep's winner). 0: no validation split."""
    cv_folds: int = 5
    """Folds (grouped by study) of the cross-validation on the probes' fit rows that picks
    each probe's regularisation C."""
    probe_cs: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
    """Inverse regularisation strengths tried per task (on standardised unit-norm features)."""
    operating_sensitivity: float = 0.9
    """Target sensitivity of each task's operating point in EVAL/heads/: the largest threshold
    whose out-of-fold train sensitivity reaches it (chosen on the train split only)."""
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
    latency_precisions: list[str] = field(default_factory=lambda: ["fp32"])
    """Precisions every model is timed in, each reported apart: fp32, bf16, fp16 (autocast)."""
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    """Robustness study: probes trained on clean features, applied to corrupted test images."""
    zero_shot_prompts: dict[str, ZeroShotPrompt | list[str]] = field(default_factory=dict)
    """{task: {positive: [...], negative: [...]}} (or [positive, negative]): zero-shot AUCs."""

    def __post_init__(self) -> None:
        prompts = {} if self.zero_shot_prompts is None else self.zero_shot_prompts
        if not isinstance(prompts, dict):
            raise ConfigError(
                f"zero_shot_prompts={prompts!r}: expected a mapping "
                "{task: {positive: [prompt, ...], negative: [prompt, ...]}}"
            )
        self.zero_shot_prompts = {str(t): _zero_shot_prompt(t, v) for t, v in prompts.items()}


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
            self.run.mixed_precision is None or self.run.mixed_precision in MIXED_PRECISION,
            "run.mixed_precision",
            self.run.mixed_precision,
            f"null (the launcher decides) or one of {MIXED_PRECISION}",
        )
        _check(self.run.backend in BACKENDS, "run.backend", self.run.backend, f"one of {BACKENDS}")
        _check(self.run.zero_stage in (0, 1, 2), "run.zero_stage", self.run.zero_stage, "0, 1 or 2")
        _check(
            self.run.compile_mode in COMPILE_MODES,
            "run.compile_mode",
            self.run.compile_mode,
            "null or one of " + ", ".join(repr(m) for m in COMPILE_MODES if m),
        )
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
            self.train_teacher.text_feature in TEXT_FEATURES,
            "train_teacher.text_feature",
            self.train_teacher.text_feature,
            f"one of {TEXT_FEATURES}",
        )
        _check(
            self.train_teacher.anchor_batch_size >= 1,
            "train_teacher.anchor_batch_size",
            self.train_teacher.anchor_batch_size,
            ">= 1",
        )
        _check(
            self.teacher.source in TEACHER_SOURCES,
            "teacher.source",
            self.teacher.source,
            f"one of {TEACHER_SOURCES}",
        )
        if self.teacher.source == "open_clip" and not self.teacher.open_clip.model:
            raise ConfigError(
                "teacher.source=open_clip needs teacher.open_clip.model (e.g. "
                "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224; docs/teachers.md)"
            )
        oc = self.teacher.open_clip
        _check(
            oc.std is None or min(oc.std) > 0,
            "teacher.open_clip.std",
            None if oc.std is None else list(oc.std),
            "null or three values > 0",
        )
        _check(
            oc.image_size is None or min(oc.image_size) > 0,
            "teacher.open_clip.image_size",
            None if oc.image_size is None else list(oc.image_size),
            "null or [height, width] > 0",
        )
        if self.teacher.source == "hf_clip" and not self.teacher.hf_clip.model:
            raise ConfigError(
                "teacher.source=hf_clip needs teacher.hf_clip.model (a CLIPModel folder or hub "
                "name, e.g. vinid/plip; docs/teachers.md)"
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
        _check(self.data.views >= 0, "data.views", self.data.views, ">= 0 (0: unseeded views)")
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
        every_s = self.logging.progress_every_s
        _check(every_s >= 0, "logging.progress_every_s", every_s, ">= 0 seconds")
        e = self.eval
        _check(e.cv_folds >= 2, "eval.cv_folds", e.cv_folds, ">= 2")
        _check(
            0 <= e.val_fraction < 1,
            "eval.val_fraction",
            e.val_fraction,
            "a fraction in [0, 1), e.g. 0.2 (0: no validation split)",
        )
        _check(
            bool(e.probe_cs) and all(c > 0 for c in e.probe_cs),
            "eval.probe_cs",
            e.probe_cs,
            "a list of positive numbers",
        )
        _check(
            0 < e.operating_sensitivity <= 1,
            "eval.operating_sensitivity",
            e.operating_sensitivity,
            "a sensitivity in (0, 1], e.g. 0.9",
        )
        _check(e.bootstrap >= 0, "eval.bootstrap", e.bootstrap, ">= 0")
        _check(0 < e.confidence < 1, "eval.confidence", e.confidence, "in (0, 1)")
        _check(
            e.latency_batch >= 1 and e.latency_iters >= 1 and e.latency_threads >= 1,
            "eval.latency_*",
            [e.latency_batch, e.latency_iters, e.latency_threads],
            "all >= 1",
        )
        _check(
            bool(e.latency_precisions)
            and set(e.latency_precisions) <= set(PRECISIONS)
            and len(set(e.latency_precisions)) == len(e.latency_precisions),
            "eval.latency_precisions",
            e.latency_precisions,
            f"a list of distinct precisions out of {list(PRECISIONS)}, e.g. [fp32, bf16]",
        )


def _check(ok: object, path: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{path}={value!r}: expected {expected}")
