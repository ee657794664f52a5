"""The vision-language teacher: config, registry, factory, and its frozen form for distillation."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlcd_dist.io import save_tensors
from vlcd_dist.models.preprocess import ImageInput, image_input
from vlcd_dist.models.towers import (
    TEXT_POOLINGS,
    ImageTower,
    TextTower,
    average_sentences,
    packaged_minilm_path,
)
from vlcd_dist.models.weights import ModelError, load_into, load_state_dict, state_dict_hash

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """torch dtype for a config string ("bfloat16", "float16", "float32") or a dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in AUTOCAST_DTYPES:
        raise ModelError(f"dtype {dtype!r}: use one of {sorted(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[dtype]


def _image_size(value: object, owner: str) -> tuple[int, int]:
    # YAML gives lists; accept any 2-sequence of positive ints and store a tuple.
    try:
        h, w = (int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        h = w = -1
    if h <= 0 or w <= 0:
        raise ModelError(f"{owner}.image_size={value!r}: give [height, width], e.g. [384, 512]")
    return h, w


@dataclass
class TeacherConfig:
    """How to build the vision-language teacher (image tower + text tower + logit scale)."""

    name: str = "resnet50_bert"
    """Label of this teacher in logs, checkpoints and the anchor cache."""
    image_model: str = "resnet50"
    """timm backbone of the image tower (the paper's is resnet50)."""
    image_weights: str = "hub"
    """Image backbone init: "hub" (timm pretrained), "random" (warns), or a weight file/folder."""
    text_model: str = "bert-base-uncased"
    """Hugging Face encoder of the text tower: hub name or local folder (tokenizer too)."""
    text_weights: str = "pretrained"
    """Text encoder init: "pretrained" (weights of text_model) or "random" (warns)."""
    text_pooling: str = "cls"
    """Token pooling before the projection: "cls" (BERT) or "mean" (sentence-transformers)."""
    max_text_length: int | None = None
    """Tokens kept per text (a sentence, or a whole report); None: the most text_model takes.
    Longer texts are truncated, counted and logged."""
    embed_dim: int = 512
    """d: output dimension of both projections, and of every student's projection."""
    image_size: tuple[int, int] = (384, 512)
    """Input resolution [height, width] of the teacher; the paper uses 384x512."""
    init_logit_scale: float = math.log(1 / 0.07)
    """Initial log of the logit scale (CLIP's 1/0.07)."""
    max_logit_scale: float = 100.0
    """Cap on exp(logit_scale), as in CLIP, so the logits cannot blow up."""
    checkpoint: str | None = None
    """Whole-teacher weights (safetensors/.pth from save_teacher) loaded over the towers."""
    autocast_dtype: str = "bfloat16"
    """Autocast dtype of the frozen teacher's forward: "bfloat16", "float16" or "float32"."""

    def __post_init__(self) -> None:
        self.image_size = _image_size(self.image_size, "TeacherConfig")
        if self.embed_dim <= 0:
            raise ModelError(f"TeacherConfig.embed_dim={self.embed_dim}: use a positive int")
        if self.max_text_length is not None and self.max_text_length < 8:
            raise ModelError(
                f"TeacherConfig.max_text_length={self.max_text_length}: use at least 8 tokens "
                "(the tokenizer adds [CLS]/[SEP])"
            )
        if self.text_pooling not in TEXT_POOLINGS:
            raise ModelError(
                f"TeacherConfig.text_pooling={self.text_pooling!r}: use one of {TEXT_POOLINGS}"
            )
        if self.text_weights not in ("pretrained", "random"):
            raise ModelError(
                f"TeacherConfig.text_weights={self.text_weights!r}: use 'pretrained' or 'random' "
                "(to load another text model, point text_model at its folder)"
            )
        if not self.image_weights:
            raise ModelError(
                "TeacherConfig.image_weights is empty: use 'hub', 'random', or a weight file"
            )
        if self.max_logit_scale <= 0 or not math.isfinite(self.init_logit_scale):
            raise ModelError("TeacherConfig: max_logit_scale must be > 0, init_logit_scale finite")
        resolve_dtype(self.autocast_dtype)

    def to_dict(self) -> dict[str, object]:
        """Plain, JSON-ready dict of the fields."""
        out = dataclasses.asdict(self)
        out["image_size"] = list(self.image_size)
        return out


class VisionLanguageTeacher(nn.Module):
    """Image tower g and text tower h projecting to a shared d, plus a learnable logit scale.

    Trained in stage 0 with :func:`vlcd_dist.losses.clip_loss`; frozen afterwards (wrap it in
    :class:`FrozenTeacher`). Images come in [0, 1] and are normalised with the image backbone's
    own mean and std (timm's, :attr:`input`) before the tower.

    One of the teacher sources of :class:`FrozenTeacher` (``teacher.source: vlcd``); the others
    are in :mod:`vlcd_dist.models.foreign_teacher`. Every source offers ``name``, ``arch``,
    ``weights``, ``embed_dim``, ``input`` (an :class:`ImageInput`), ``image`` (the image tower
    on normalised input), ``text`` (what :mod:`vlcd_dist.anchors` embeds sentences with),
    ``encode_image``, ``encode_text``, ``image_parameters`` (the image tower's, for parameter
    counts), ``get_logit_scale``, ``max_logit_scale`` and ``text_hash``.

    ``image_tower=False`` builds the text tower and logit scale only (``image`` and ``input``
    are None): what a run reading the teacher's image embeddings from a cache needs.
    """

    source = "vlcd"

    def __init__(
        self, cfg: TeacherConfig, *, load_pretrained: bool = True, image_tower: bool = True
    ) -> None:
        super().__init__()
        self.cfg = cfg
        # With a whole-teacher checkpoint coming, tower inits are placeholders: skip the hub and
        # the random-init warning ("none").
        image_weights = cfg.image_weights if load_pretrained else "none"
        text_weights = cfg.text_weights if load_pretrained else "none"
        self.image: ImageTower | None = (
            ImageTower(cfg.image_model, cfg.embed_dim, image_weights, cfg.image_size)
            if image_tower
            else None
        )
        self.text = TextTower(
            cfg.text_model,
            cfg.embed_dim,
            text_weights,
            pooling=cfg.text_pooling,
            max_length=cfg.max_text_length,
        )
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.input: ImageInput | None = (
            image_input(self.image.data_config, what="teacher image tower")
            if self.image is not None
            else None
        )

    @property
    def embed_dim(self) -> int:
        """d, the joint embedding dimension."""
        return self.cfg.embed_dim

    @property
    def name(self) -> str:
        """The teacher's label (cfg.name)."""
        return self.cfg.name

    @property
    def arch(self) -> str:
        """What the eval's table calls the image tower."""
        return f"{self.cfg.image_model} ({self.cfg.name})"

    @property
    def weights(self) -> str | None:
        """Where the weights came from (the whole-teacher checkpoint), for the record."""
        return self.cfg.checkpoint

    @property
    def max_logit_scale(self) -> float:
        """Cap on exp(logit_scale)."""
        return self.cfg.max_logit_scale

    def get_logit_scale(self) -> torch.Tensor:
        """exp(logit_scale) capped at cfg.max_logit_scale: scalar multiplier of cosine logits."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> z_T [B, d] (unnormalised)."""
        if self.image is None or self.input is None:
            raise ModelError(
                f"teacher {self.cfg.name} was built without its image tower (a run reading "
                "teacher.cache); it cannot embed images"
            )
        return self.image(self.input(images))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw strings -> [B, d] (unnormalised)."""
        return self.text.encode(texts)

    def image_parameters(self) -> Iterator[nn.Parameter]:
        """The image tower's parameters (backbone and projection); none if not built."""
        return self.image.parameters() if self.image is not None else iter(())

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        sentence_index: torch.Tensor | None = None,
        report_index: torch.Tensor | None = None,
        text_states: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Stage-0 forward: {"image_features" [B, d], "text_features" [B, d], "logit_scale" []}.

        images [B, 3, H, W] in [0, 1] (normalised here, with the image backbone's statistics).

        The text of image b comes in one of three forms:

        * ``input_ids``, ``attention_mask`` [B, T]: one text per image (a whole report);
        * the same [U, T] for distinct sentences, with ``sentence_index``, ``report_index``
          [P] pairing sentences with images: text b is the mean of its sentences' features,
          as the text anchors are (:func:`~vlcd_dist.models.towers.average_sentences`;
          :func:`vlcd_dist.anchors.tokenize_reports` builds these inputs);
        * ``text_states`` [B, H]: pooled encoder states computed beforehand (an encoder that
          does not train), of which only the projection runs.
        """
        if text_states is not None:
            text = self.text.proj(text_states)
        elif input_ids is None or attention_mask is None:
            raise ValueError(
                "the teacher's forward needs input_ids and attention_mask or text_states"
            )
        elif sentence_index is None or report_index is None:
            text = self.text(input_ids, attention_mask)
        else:
            text = average_sentences(
                self.text(input_ids, attention_mask), sentence_index, report_index, images.shape[0]
            )
        return {
            "image_features": self.encode_image(images),
            "text_features": text,
            "logit_scale": self.get_logit_scale(),
        }

    def text_hash(self) -> str:
        """Fingerprint of the weights that produce text anchors (text encoder + projection)."""
        return state_dict_hash(self.text)


class FrozenTeacher(nn.Module):
    """A teacher that cannot train: eval mode always, no gradients, forward under autocast.

    Wraps any teacher source: this package's :class:`VisionLanguageTeacher`, or an open_clip
    or Hugging Face CLIP model (:mod:`vlcd_dist.models.foreign_teacher`). Images come in
    [0, 1]; the source resizes and normalises them its own way (``teacher.input``).

    ``.train()`` on this module, or on any container holding it, leaves it in eval mode (batch
    norm statistics and dropout stay fixed). Parameters have ``requires_grad=False`` and every
    forward runs under ``torch.no_grad()``, so outputs are plain fp32 tensors. Never wrap it in
    DDP/DeepSpeed: it has nothing to synchronise.
    """

    def __init__(self, teacher: nn.Module, autocast_dtype: str | torch.dtype | None = None) -> None:
        super().__init__()
        self.teacher = teacher
        if autocast_dtype is None:
            autocast_dtype = getattr(getattr(teacher, "cfg", None), "autocast_dtype", "bfloat16")
        self.autocast_dtype = resolve_dtype(autocast_dtype)
        teacher.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Ignore ``mode``: the teacher stays in eval mode."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        """d, the joint embedding dimension."""
        return int(self.teacher.embed_dim)

    @property
    def name(self) -> str:
        """The teacher's label."""
        return str(self.teacher.name)

    @property
    def source(self) -> str:
        """Which kind of teacher: "vlcd", "open_clip" or "hf_clip"."""
        return str(self.teacher.source)

    @property
    def max_logit_scale(self) -> float:
        """Cap on the logit scale of students that learn their own."""
        return float(self.teacher.max_logit_scale)

    @property
    def input(self) -> ImageInput:
        """How the teacher resizes and normalises its [0, 1] input."""
        return self.teacher.input

    @property
    def text(self) -> TextTower:
        """The text tower (for anchor building)."""
        return self.teacher.text

    def num_image_params(self) -> int:
        """How many parameters the teacher's image tower has (any source)."""
        return sum(p.numel() for p in self.teacher.image_parameters())

    def _autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(
            device_type=device.type,
            dtype=self.autocast_dtype,
            enabled=self.autocast_dtype != torch.float32,
        )

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> z_T [B, d], fp32, no grad."""
        with self._autocast(images.device):
            return self.teacher.encode_image(images).float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw strings -> [B, d], fp32, no grad."""
        with self._autocast(next(self.teacher.parameters()).device):
            return self.teacher.encode_text(texts).float()

    def image_forward(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's plain image forward ([0, 1] in; no autocast, no no_grad of its own):
        what the eval times."""
        return self.teacher.encode_image(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode_image`."""
        return self.encode_image(images)

    @torch.no_grad()
    def get_logit_scale(self) -> torch.Tensor:
        """The teacher's (frozen) logit scale, a detached fp32 scalar."""
        return self.teacher.get_logit_scale().float()

    def text_hash(self) -> str:
        """Fingerprint of the weights that produce text anchors."""
        return self.teacher.text_hash()


# ---------------------------------------------------------------------------------------------
# Registry: named teacher configs, create_teacher(cfg or name).
# ---------------------------------------------------------------------------------------------

_TEACHERS: dict[str, Callable[[], TeacherConfig]] = {}


def register_teacher(fn: Callable[[], TeacherConfig]) -> Callable[[], TeacherConfig]:
    """Decorator: register a function returning a :class:`TeacherConfig` under its own name."""
    if fn.__name__ in _TEACHERS:
        raise ValueError(f"teacher {fn.__name__!r} is already registered")
    _TEACHERS[fn.__name__] = fn
    return fn


def list_teachers(pattern: str = "*") -> list[str]:
    """Registered teacher names matching a glob pattern, sorted."""
    return sorted(n for n in _TEACHERS if fnmatch.fnmatch(n, pattern))


def teacher_config(name: str, **overrides: object) -> TeacherConfig:
    """The registered config ``name`` with fields replaced by ``overrides``."""
    if name not in _TEACHERS:
        close = difflib.get_close_matches(name, list(_TEACHERS), n=3)
        raise ModelError(
            f"unknown teacher {name!r}; registered: {list_teachers()}"
            + (f" (did you mean {close}?)" if close else "")
        )
    return dataclasses.replace(_TEACHERS[name](), **overrides)


def create_teacher(
    cfg: TeacherConfig | str, *, image_tower: bool = True, **overrides: object
) -> VisionLanguageTeacher:
    """Build a teacher from a config or a registered name (fields replaced by ``overrides``).

    When ``cfg.checkpoint`` is set, towers are built without their pretrained weights and the
    whole-teacher checkpoint is loaded strictly over them. ``image_tower=False`` builds no
    image tower (its weights in the checkpoint are left unread).
    """
    if isinstance(cfg, str):
        cfg = teacher_config(cfg, **overrides)
    elif overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    teacher = VisionLanguageTeacher(
        cfg, load_pretrained=cfg.checkpoint is None, image_tower=image_tower
    )
    if cfg.checkpoint is not None:
        load_into(
            teacher,
            load_state_dict(cfg.checkpoint),
            source=cfg.checkpoint,
            ignore_prefixes=() if image_tower else ("image",),
        )
        logger.info("teacher %s: loaded checkpoint %s", cfg.name, cfg.checkpoint)
    return teacher


def save_teacher(
    teacher: VisionLanguageTeacher,
    path: str | Path,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the teacher's weights (or ``state``, full-precision weights a training backend
    supplies) as safetensors, its config in the metadata. Returns the path.

    Reload with ``create_teacher(dataclasses.replace(cfg, checkpoint=str(path)))``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = teacher.state_dict() if state is None else state
    metadata = {"teacher_config": json.dumps(teacher.cfg.to_dict()), "format": "vlcd-teacher/1"}
    return save_tensors(source, path, metadata=metadata)


@register_teacher
def resnet50_bert() -> TeacherConfig:
    """The paper's teacher: ResNet-50 image tower + BERT-base text tower, 384x512 input."""
    return TeacherConfig()


@register_teacher
def resnet50_minilm() -> TeacherConfig:
    """Demo teacher: ResNet-50 (hub weights) + the packaged all-MiniLM-L6-v2 text tower."""
    return TeacherConfig(
        name="resnet50_minilm",
        text_model=packaged_minilm_path(),
        text_pooling="mean",
    )


@register_teacher
def tiny_resnet18_minilm() -> TeacherConfig:
    """Test teacher: random ResNet-18 at 64x64, packaged MiniLM, d=64. Nothing is downloaded."""
    return TeacherConfig(
        name="tiny_resnet18_minilm",
        image_model="resnet18",
        image_weights="random",
        text_model=packaged_minilm_path(),
        text_pooling="mean",
        embed_dim=64,
        image_size=(64, 64),
    )
