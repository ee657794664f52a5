"""Images without torch: decode, resize-and-crop, normalise (PIL and numpy only).

The one place for what every image path shares: the shard stream (:mod:`.stream`) decodes with
:func:`decode_rgb`, the eval transform (:mod:`.transforms`) resizes with :class:`ResizeCover`,
and ``vlcd predict`` (:mod:`vlcd_dist.deploy.predict`), which never imports torch, does all three
and :func:`normalised_array`, so a packaged model sees exactly the pixels evaluation saw.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""The suffixes (any case) of the files taken as images when a folder is searched for them."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What PIL raises for bytes it cannot decode (corrupt, truncated, not an image, too large)."""


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


def draft_size(size: tuple[int, int], train: bool) -> tuple[int, int]:
    """(W, H) to ask libjpeg for when decoding: the smallest decode that keeps full detail.

    A random resized crop keeps as little as half the area, so training decodes at twice the
    target; evaluation only needs to cover the target.
    """
    h, w = size
    factor = 2 if train else 1
    return (w * factor, h * factor)


def decode_rgb(
    source: bytes | BinaryIO | str | Path, size: tuple[int, int], train: bool = False
) -> Image.Image:
    """Decode an image (its bytes, an open binary file or a path) to a loaded RGB image.

    JPEGs are decoded by libjpeg at the smallest scale that still covers ``draft_size(size,
    train)`` (``size`` is the (H, W) the image is meant for), so a large photograph costs a
    fraction of a full decode. The image is turned upright by its EXIF orientation, as a viewer
    shows it (shards are written upright, so there this changes nothing; a phone photograph
    given to ``vlcd predict`` is read the way it was taken). Raises one of
    :data:`DECODE_ERRORS` for bytes PIL cannot read.
    """
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    with Image.open(source) as img:
        img.draft("RGB", draft_size(size, train))
        return upright(img).convert("RGB")


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (itself, loaded, when there is nothing to
    turn)."""
    turned = ImageOps.exif_transpose(img)
    return img if turned is None else turned


def normalised_array(
    img: Image.Image,
    mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
    std: tuple[float, ...] | list[float] = IMAGENET_STD,
) -> np.ndarray:
    """An RGB image as a float32 array [3, H, W]: ``(pixels / 255 - mean) / std`` per channel.

    Equal (to float32 rounding) to torchvision's ``PILToTensor``, ``ToDtype(float32,
    scale=True)`` and ``Normalize(mean, std)``, which compute the same steps in float32.
    """
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}")
    pixels = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # [3, H, W]
    x = pixels.astype(np.float32) * np.float32(1.0 / 255)
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)
