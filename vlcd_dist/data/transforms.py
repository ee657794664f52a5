"""Image transforms: PIL image in, normalised float tensor (3, H, W) out.

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
    return [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transform(size: tuple[int, int], scale: tuple[float, float] = (0.5, 1.0)) -> v2.Compose:
    """Random resized crop to (H, W), horizontal flip, colour jitter, normalise."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
            *_to_tensor(),
        ]
    )


def eval_transform(size: tuple[int, int]) -> v2.Compose:
    """Resize to cover (H, W), centre crop, normalise."""
    return v2.Compose([ResizeCover(size), *_to_tensor()])
