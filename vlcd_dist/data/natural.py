"""Natural-image shards for predistillation: from a folder tree, scikit-image's photographs, or
procedural drawings.

Samples hold ``__key__``, ``jpg`` and, for class-folder trees such as ImageNet, ``cls`` (the class
folder's name as text).
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from .imaging import upright
from .writer import SampleError

ORIENTATION_TAG = 0x0112
"""The EXIF tag of how a photograph must be turned to be upright (1: as stored)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_QUALITY = 92

# Real photographs that ship inside the scikit-image wheel (no download needed). Synthetic test
# patterns (checkerboard, logo, colour wheel, text) are left out: they are not natural images.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
)


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def safe_key(text: str) -> str:
    """A WebDataset key from a path: no dots (they separate key from extension), no slashes."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "sample"


# --------------------------------------------------------------------------------------------
# Folder trees


def walk_images(root: Path) -> Iterator[Path]:
    """Image files under root, recursively, in a stable order, without listing them all first."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=True):
            yield from walk_images(Path(entry.path))
        elif entry.name.lower().endswith(IMAGE_SUFFIXES):
            yield Path(entry.path)


def folder_items(root: Path) -> Iterator[tuple[str, str]]:
    """(relative path, class folder) per image. Files directly under root have no class."""
    for path in walk_images(root):
        rel = path.relative_to(root)
        cls = rel.parts[0] if len(rel.parts) > 1 else ""
        yield rel.as_posix(), cls


def load_resized(path: Path, max_side: int) -> tuple[bytes, bool]:
    """JPEG bytes for an image file, shrunk so its shorter side is at most ``max_side``.

    Returns (bytes, re-encoded?). The image is written upright (its EXIF orientation applied),
    since the reader decodes pixels as stored. A JPEG that needs neither resizing nor turning is
    copied byte for byte: it is lossless and an order of magnitude faster, which matters for
    1.28 M ImageNet files.
    """
    try:
        with Image.open(path) as img:
            fmt = img.format
            # Orientations 5-8 swap width and height: the target is of the upright photograph.
            orientation = img.getexif().get(ORIENTATION_TAG, 1)
            turned = orientation not in (1, None)
            swap = orientation in (5, 6, 7, 8)
            width, height = (img.height, img.width) if swap else img.size
            if max_side > 0 and min(width, height) > max_side:
                scale = max_side / min(width, height)
                target = (max(1, round(width * scale)), max(1, round(height * scale)))
                # draft() lets libjpeg decode at 1/2, 1/4 or 1/8 scale straight away.
                img.draft("RGB", (target[1], target[0]) if swap else target)
                img = upright(img).convert("RGB")
                img = img.resize(target, Image.BICUBIC) if img.size != target else img
                return encode_jpeg(img), True
            if turned:
                return encode_jpeg(upright(img).convert("RGB")), True
            if fmt == "JPEG":
                img.load()  # decode once, so a corrupt file is caught here, not in training
                return path.read_bytes(), False
            return encode_jpeg(img.convert("RGB")), True
    except (OSError, ValueError, Image.DecompressionBombError) as exn:
        raise SampleError(f"unreadable image: {path}: {exn}") from exn


def folder_sample(item: tuple[str, str], root: str, max_side: int) -> dict:
    rel, cls = item
    data, _ = load_resized(Path(root) / rel, max_side)
    sample = {"__key__": safe_key(os.path.splitext(rel)[0]), "jpg": data}
    if cls:
        sample["cls"] = cls
    return sample


# --------------------------------------------------------------------------------------------
# scikit-image photographs


@cache
def _skimage_photos() -> tuple[Image.Image, ...]:
    import skimage.data

    folder = Path(skimage.data.data_dir)
    photos = []
    for name in SKIMAGE_PHOTOS:
        path = folder / name
        if path.exists():
            with Image.open(path) as img:
                photos.append(img.convert("RGB"))
    if not photos:
        raise RuntimeError(
            f"no bundled photographs found in {folder}; reinstall scikit-image "
            "(pip install --force-reinstall scikit-image) or use --source synthetic"
        )
    return tuple(photos)


def random_resized_crop(
    img: Image.Image, rng: np.random.Generator, size: int, scale=(0.1, 1.0), ratio=(0.75, 4 / 3)
) -> Image.Image:
    """A crop of random area fraction and aspect ratio, resized to size x size."""
    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return img.resize((size, size), Image.BICUBIC, box=(x, y, x + cw, y + ch))
    side = min(w, h)
    x, y = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), Image.BICUBIC, box=(x, y, x + side, y + side))


def skimage_sample(index: int, seed: int, image_size: int) -> dict:
    rng = np.random.default_rng([seed, index, 0x5C])
    photos = _skimage_photos()
    photo = photos[int(rng.integers(len(photos)))]
    crop = random_resized_crop(photo, rng, image_size)
    if rng.random() < 0.5:
        crop = ImageOps.mirror(crop)
    return {"__key__": f"skimage_{index:08d}", "jpg": encode_jpeg(crop)}


# --------------------------------------------------------------------------------------------
# Procedural images


def procedural_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Gradient background with random ellipses, polygons, lines and a texture: cheap images
    with edges, colours and shapes, for smoke tests without any photographs."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * t[None, :] + np.sin(angle) * t[:, None]) / math.sqrt(2) + 0.5
    base = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    freq = rng.uniform(2, 20)
    base += 20 * np.sin(2 * math.pi * freq * t)[None, :, None] * rng.random()
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.integers(0, size, 2)
        x1, y1 = x0 + rng.integers(4, size // 2), y0 + rng.integers(4, size // 2)
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=colour)
        elif kind == 1:
            pts = [
                tuple(int(v) for v in rng.integers(0, size, 2))
                for _ in range(int(rng.integers(3, 7)))
            ]
            draw.polygon(pts, fill=colour)
        else:
            draw.line(
                [int(x0), int(y0), int(x1), int(y1)], fill=colour, width=int(rng.integers(1, 6))
            )
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))


def synthetic_sample(index: int, seed: int, image_size: int) -> dict:
    rng = np.random.default_rng([seed, index, 0x5A])
    return {
        "__key__": f"synthetic_{index:08d}",
        "jpg": encode_jpeg(procedural_image(rng, image_size)),
    }
