"""Image transforms: PIL image in, normalised float tensor (3, H, W) out."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResizeCover:
    """Resize so the image covers (H, W) with its aspect kept, then centre-crop to (H, W)."""

    def __init__(self, size: tuple[int, int]):
        self.size = size

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        scale = max(h / img.height, w / img.width)
        rw, rh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
        left, top = (rw - w) // 2, (rh - h) // 2
        # Resize and crop in one PIL call: only the kept box is resampled.
        box_scale_x, box_scale_y = img.width / rw, img.height / rh
        box = (
            left * box_scale_x,
            top * box_scale_y,
            (left + w) * box_scale_x,
            (top + h) * box_scale_y,
        )
        return img.resize((w, h), Image.BILINEAR, box=box)


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


def draft_size(size: tuple[int, int], train: bool) -> tuple[int, int]:
    """(W, H) to ask libjpeg for when decoding: the smallest decode that keeps full detail.

    A random resized crop keeps as little as half the area, so training decodes at twice the
    target; evaluation only needs to cover the target.
    """
    h, w = size
    factor = 2 if train else 1
    return (w * factor, h * factor)
