"""Image students: registry, factory and the backbone + projection module.

Follows timm's pattern: ``@register_student`` names a builder after its function,
``create_student(name, ...)`` builds one, ``list_students()`` lists them. Any timm model name
works in ``create_student`` even when not registered.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from vlcd_dist.models.preprocess import ImageInput, image_input
from vlcd_dist.models.towers import (
    backbone_data_config,
    backbone_dim,
    check_input_size,
    create_backbone,
)
from vlcd_dist.models.weights import ModelError

logger = logging.getLogger(__name__)


@dataclass
class StudentConfig:
    """How to build one student."""

    name: str = "mobilenetv3_large_100"
    """Registered student name (list_students()) or any timm model name."""
    embed_dim: int = 512
    """Output dimension of the projection; must equal the teacher's d."""
    pretrained: bool = False
    """Start the backbone from timm's pretrained weights on the hub (needs network)."""
    weights: str | None = None
    """Local weight file/folder for the backbone (timm state_dict); wins over pretrained."""
    image_size: tuple[int, int] | None = None
    """[height, width] the student sees; other inputs are resized in forward. None: as given."""

    def __post_init__(self) -> None:
        if self.embed_dim <= 0:
            raise ModelError(
                f"StudentConfig.embed_dim={self.embed_dim}: use the teacher's embed_dim"
            )
        if self.image_size is not None:
            try:
                h, w = (int(v) for v in self.image_size)
            except (TypeError, ValueError):
                h = w = -1
            if h <= 0 or w <= 0:
                raise ModelError(
                    f"StudentConfig.image_size={self.image_size!r}: give [height, width] or null"
                )
            self.image_size = (h, w)
        if self.name not in _STUDENTS and not timm.is_model(self.name):
            raise ModelError(_unknown(self.name))


class Student(nn.Module):
    """Student k: z_k = P_k(f_k(x)), a timm backbone f_k (pooled features) and a linear P_k.

    Input of :meth:`forward`: images [B, 3, H, W] normalised with the backbone's own mean and
    std (timm's ``pretrained_cfg``; :meth:`normalize` turns a [0, 1] batch into that, and the
    exported/packaged model states them); resized to ``image_size`` first when that is set and
    differs (fixed-size backbones such as EfficientFormer). Output: z_k [B, d], unnormalised.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embed_dim: int,
        *,
        name: str,
        image_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.num_features = backbone_dim(backbone)
        self.proj = nn.Linear(self.num_features, embed_dim)
        self.image_size: tuple[int, int] | None = (
            None if image_size is None else (int(image_size[0]), int(image_size[1]))
        )
        # Buffers outside the state_dict: exported students and checkpoints are unchanged.
        self.input: ImageInput = image_input(self.data_config, what=f"student {name}")

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean the backbone expects its [0, 1] input shifted by (timm's, or the
        stored one of an exported student, :mod:`vlcd_dist.models.exported`)."""
        return self.input.mean_values

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel std the backbone expects its [0, 1] input divided by (timm's, or the
        stored one of an exported student)."""
        return self.input.std_values

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> the input :meth:`forward` takes (own mean, std)."""
        return self.input(images)

    @property
    def embed_dim(self) -> int:
        """d, the output dimension."""
        return self.proj.out_features

    @property
    def data_config(self) -> dict[str, Any]:
        """Normalisation the backbone expects ("mean", "std", ...), from timm's pretrained cfg."""
        return backbone_data_config(self.backbone)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features f_k(x): [B, C]."""
        if self.image_size is not None and tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(
                images, size=self.image_size, mode="bilinear", align_corners=False, antialias=True
            )
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] -> z_k [B, d]."""
        return self.proj(self.features(images))

    def num_params(self) -> dict[str, int]:
        """Parameter counts: {"backbone", "projection", "total"}."""
        backbone = sum(p.numel() for p in self.backbone.parameters())
        projection = sum(p.numel() for p in self.proj.parameters())
        return {"backbone": backbone, "projection": projection, "total": backbone + projection}


_STUDENTS: dict[str, Callable[..., Student]] = {}


def register_student(fn: Callable[..., Student]) -> Callable[..., Student]:
    """Decorator: register a student builder under its function name.

    The builder takes ``embed_dim``, ``pretrained``, ``weights``, ``image_size`` and extra
    keyword arguments for ``timm.create_model``, and returns a :class:`Student`.
    """
    if fn.__name__ in _STUDENTS:
        raise ValueError(f"student {fn.__name__!r} is already registered")
    _STUDENTS[fn.__name__] = fn
    return fn


def list_students(pattern: str = "*") -> list[str]:
    """Registered student names matching a glob pattern, sorted."""
    return sorted(n for n in _STUDENTS if fnmatch.fnmatch(n, pattern))


def is_student(name: str) -> bool:
    """True for a registered student name."""
    return name in _STUDENTS


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(_STUDENTS) + timm.list_models(), n=3)
    return f"unknown student {name!r}: neither registered ({list_students()}) nor a timm model" + (
        f"; did you mean {close}?" if close else ""
    )


def timm_student(
    model_name: str,
    embed_dim: int = 512,
    pretrained: bool = False,
    weights: str | None = None,
    image_size: Sequence[int] | None = None,
    *,
    name: str | None = None,
    **timm_kwargs: Any,
) -> Student:
    """A :class:`Student` around timm's ``model_name`` with ``num_classes=0``.

    Fixed-input-size backbones get their native size as ``image_size`` when none is given,
    so they accept images of any size (resized in forward).
    """
    name = name or model_name
    source = weights if weights is not None else ("hub" if pretrained else "none")
    backbone = create_backbone(model_name, source, what=f"student {name}", **timm_kwargs)
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    if image_size is None and cfg.get("fixed_input_size"):
        image_size = tuple(cfg["input_size"][1:])
        logger.info("student %s: fixed input size, images are resized to %s", name, image_size)
    if image_size is not None:
        check_input_size(backbone, image_size, f"student {name}")
    return Student(backbone, embed_dim, name=name, image_size=image_size)


def create_student(
    name: str,
    embed_dim: int = 512,
    pretrained: bool = False,
    weights: str | None = None,
    image_size: Sequence[int] | None = None,
    **kwargs: Any,
) -> Student:
    """Build a registered student, or wrap any timm backbone of that name.

    name: registered name (:func:`list_students`) or a timm model name.
    embed_dim: d of the teacher the student distils from.
    pretrained: timm's pretrained backbone weights from the hub; the default is random init.
    weights: local backbone weight file/folder (timm state_dict), instead of the hub.
    image_size: [H, W] the student sees; inputs of another size are resized.
    kwargs: passed on to ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    if name in _STUDENTS:
        return _STUDENTS[name](
            embed_dim=embed_dim,
            pretrained=pretrained,
            weights=weights,
            image_size=image_size,
            **kwargs,
        )
    if timm.is_model(name):
        return timm_student(name, embed_dim, pretrained, weights, image_size, **kwargs)
    raise ModelError(_unknown(name))


def build_student(cfg: StudentConfig) -> Student:
    """:func:`create_student` from a :class:`StudentConfig`."""
    return create_student(
        cfg.name,
        embed_dim=cfg.embed_dim,
        pretrained=cfg.pretrained,
        weights=cfg.weights,
        image_size=cfg.image_size,
    )


# The paper's students (VLCD, arXiv 2506.02229).


@register_student
def mobilenetv3_large_100(**kwargs: Any) -> Student:
    """MobileNetV3-Large 1.0 (paper student; ~4.2 M backbone parameters)."""
    return timm_student("mobilenetv3_large_100", name="mobilenetv3_large_100", **kwargs)


@register_student
def efficientnet_b0(**kwargs: Any) -> Student:
    """EfficientNet-B0 (paper student; ~4.0 M backbone parameters)."""
    return timm_student("efficientnet_b0", name="efficientnet_b0", **kwargs)


@register_student
def efficientformer_l1(image_size: Sequence[int] | None = None, **kwargs: Any) -> Student:
    """EfficientFormer-L1 (paper student; ~11.4 M backbone parameters).

    timm builds it for 224x224 only (its last-stage attention biases cover a 7x7 grid). With
    ``image_size`` [H, W] (multiples of 32) the biases are re-laid for the (H/32) x (W/32) grid
    instead, so that CPU-sized runs need not upsample every image to 224x224.
    """
    # Built at its native 224x224 first (explicitly, so nothing logs a resize that won't happen).
    native = (224, 224) if image_size is not None else None
    student = timm_student(
        "efficientformer_l1", name="efficientformer_l1", image_size=native, **kwargs
    )
    if image_size is not None and tuple(int(v) for v in image_size) != student.image_size:
        set_attention_grid(student.backbone, image_size, "student efficientformer_l1")
        student.image_size = (int(image_size[0]), int(image_size[1]))
    return student


def set_attention_grid(backbone: nn.Module, image_size: Sequence[int], what: str) -> None:
    """Re-lay the relative-position attention biases of a timm EfficientFormer for a new input.

    The bias of a head depends only on the token offset (|dy|, |dx|) on the stride-32 grid, so
    offsets the old grid had keep their (possibly pretrained) values exactly; offsets beyond it
    take the value of the largest old offset (edge padding).
    """
    from timm.models.efficientformer import Attention

    h, w = (int(v) for v in image_size)
    if h % 32 or w % 32 or h < 32 or w < 32:
        raise ModelError(
            f"{what}: image_size={[h, w]} must be multiples of 32 (the attention grid is "
            "H/32 x W/32), e.g. [96, 128] or [224, 224]"
        )
    gh, gw = h // 32, w // 32
    pos = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")).flatten(1)
    rel = (pos[:, :, None] - pos[:, None, :]).abs()
    idxs = rel[0] * gw + rel[1]
    for module in backbone.modules():
        if not isinstance(module, Attention):
            continue
        old = module.attention_biases.data
        heads, tokens = old.shape
        side = int(round(tokens**0.5))
        table = old.reshape(heads, side, side)[:, :gh, :gw]
        if table.shape[1] < gh or table.shape[2] < gw:
            pad = (0, gw - table.shape[2], 0, gh - table.shape[1])
            table = F.pad(table.unsqueeze(0), pad, mode="replicate").squeeze(0)
        module.attention_biases = nn.Parameter(table.reshape(heads, gh * gw).contiguous())
        module.attention_bias_idxs = idxs.to(module.attention_bias_idxs.device)
        module.attention_bias_cache = {}
    cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    if cfg:
        cfg["input_size"] = (3, h, w)
        backbone.pretrained_cfg = cfg


# Tiny variants for tests and the CPU demo.


@register_student
def tiny_mobilenetv3(**kwargs: Any) -> Student:
    """MobileNetV3-Small 0.5 (~0.57 M backbone parameters), for tests."""
    return timm_student("mobilenetv3_small_050", name="tiny_mobilenetv3", **kwargs)


@register_student
def tiny_resnet(**kwargs: Any) -> Student:
    """ResNet-10-T (~4.9 M backbone parameters), for tests."""
    return timm_student("resnet10t", name="tiny_resnet", **kwargs)
