"""Image transforms: PIL image in, float tensor (3, H, W) in [0, 1] out.

Nothing here normalises: the teacher and every student apply their own mean and std (and
resize, when their input size differs) right before their forward
(:class:`vlcd_dist.models.preprocess.ImageInput`), so one decoded batch serves models with
different statistics.

The torch-free pieces (the ImageNet mean and std, :class:`ResizeCover`, :func:`draft_size`) live
in :mod:`.imaging`, which ``vlcd predict`` shares; they are re-exported here.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from .imaging import IMAGENET_MEAN, IMAGENET_STD, ResizeCover, draft_size

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResizeCover",
    "draft_size",
    "eval_transform",
    "train_transform",
]


def _to_tensor() -> list:
    # uint8 -> float32 in [0, 1]; each model normalises its own view (models.preprocess).
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]


def train_transform(
    size: tuple[int, int],
    scale: tuple[float, float] = (0.5, 1.0),
    jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.02),
) -> v2.Compose:
    """Random resized crop to (H, W) over ``scale`` of the area, horizontal flip, colour jitter
    of strengths ``jitter`` (brightness, contrast, saturation, hue; all 0: none), to [0, 1]."""
    brightness, contrast, saturation, hue = jitter
    colour = (
        [v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)]
        if any(jitter)
        else []
    )
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            *colour,
            *_to_tensor(),
        ]
    )


def eval_transform(size: tuple[int, int]) -> v2.Compose:
    """Resize to cover (H, W), centre crop, to [0, 1]."""
    return v2.Compose([ResizeCover(size), *_to_tensor()])
