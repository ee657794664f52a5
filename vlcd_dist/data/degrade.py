"""Tablet-camera degradations for the robustness study, at severities 0 (none) to 5.

A severity means the same damage to the photograph at any resolution. The strengths are set for
a photograph :data:`REFERENCE_WIDTH` px wide (the shards' default 512x384), and every strength
with a size (blur radius, motion length, flare radius, sensor resolution, noise grain, JPEG
block) is a fraction of the image's width, so a 128x96 decode of a photograph gets the 512x384
corruption seen at 128x96: ``degrade(resize(x), ...)`` equals ``resize(degrade(x, ...))`` up to
resampling, and robustness curves measured at different decode sizes are comparable. A
consequence: damage finer than the decode can show (a 300 px sensor seen at 128 px) leaves the
decode unchanged.

Only the random layout (motion direction, flare position, noise pattern) varies, seeded per
image; it is drawn at the reference size, so the same seed gives the same layout at any size.
Severity 0 returns the input unchanged, so a "degraded" evaluation at severity 0 reproduces the
clean one exactly.

``tablet_camera`` chains the corruptions a cheap tablet adds all at once (low resolution, a little
defocus, a colour cast, sensor noise, JPEG); the single corruptions isolate one cause each.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)

REFERENCE_WIDTH = 512
"""The width (px) the strengths below are given at; sizes scale with the image's width."""

# Per corruption, one strength per severity 1..5. Sizes in px are px at REFERENCE_WIDTH.
_LEVELS: dict[str, tuple] = {
    "downsample": (307, 230, 169, 128, 92),  # sensor width, px at 512x384 (0.6 .. 0.18 of it)
    "defocus": (1, 2, 3, 4, 6),  # disc radius, px at 512x384
    "motion_blur": (3, 5, 7, 11, 15),  # blur length, px at 512x384
    "jpeg": (60, 40, 25, 15, 8),  # JPEG quality, of the photograph stored 512 px wide
    "white_balance": (5700, 5400, 5000, 4600, 4200),  # black-body colour temperature, K
    "colour_cast": (8, 16, 26, 38, 52),  # per-channel shift, in 0..255 levels
    "glare": (0.06, 0.1, 0.15, 0.2, 0.27),  # flare radius, fraction of the image width
    "sensor_noise": (0.02, 0.04, 0.07, 0.10, 0.14),  # noise std at 512x384, of full scale
}
CORRUPTIONS: tuple[str, ...] = (*_LEVELS, "tablet_camera")

# (image uint8 HxWx3, seed) -> image uint8 HxWx3
Step = Callable[[np.ndarray, int], np.ndarray]


class _WhiteBalance(A.PlanckianJitter):
    """Planckian jitter pinned to one colour temperature (albumentations samples a range)."""

    def __init__(self, temperature: int):
        super().__init__(mode="blackbody", temperature_limit=(temperature, 6000), p=1.0)
        self.fixed_temperature = temperature

    def get_params(self) -> dict:
        return {"temperature": self.fixed_temperature}


def _albumentations(transform: A.BasicTransform) -> Step:
    def step(image: np.ndarray, seed: int) -> np.ndarray:
        return A.Compose([transform], seed=seed)(image=image)["image"]

    return step


def _scale(image: np.ndarray) -> float:
    """Image px per reference px."""
    return image.shape[1] / REFERENCE_WIDTH


def _reference_shape(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the image at the reference width, aspect ratio kept."""
    h, w = image.shape[:2]
    return max(1, round(h * REFERENCE_WIDTH / w)), REFERENCE_WIDTH


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area averaging down (what a coarser sensor sees), bicubic up."""
    if array.shape[:2] == (height, width):
        return array
    shrink = width < array.shape[1]
    return cv2.resize(
        array, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(image, -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)


def _defocus(radius_ref: float) -> Step:
    """A uniform disc (an out-of-focus lens), weighted by pixel coverage, so the blur grows
    smoothly with the radius, below a pixel too."""

    def step(image: np.ndarray, seed: int) -> np.ndarray:
        radius = radius_ref * _scale(image)
        half = math.ceil(radius + 0.5)
        # Coverage of each kernel pixel by the disc, from an 8x8 grid of points per pixel.
        fine = (np.arange(8 * (2 * half + 1)) + 0.5) / 8 - half - 0.5
        inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius**2
        kernel = inside.reshape(2 * half + 1, 8, 2 * half + 1, 8).mean(axis=(1, 3))
        if kernel.sum() == 0:  # radius far below a pixel
            return image
        return _filter(image, kernel / kernel.sum())

    return step


def _motion_blur(length_ref: float) -> Step:
    """A straight, centred streak in a seeded direction, anti-aliased (bilinear splats)."""

    def step(image: np.ndarray, seed: int) -> np.ndarray:
        angle = np.random.default_rng([seed, 0x40]).uniform(0.0, math.pi)
        length = length_ref * _scale(image)
        half = math.ceil(length / 2) + 1
        kernel = np.zeros((2 * half + 1, 2 * half + 1))
        t = np.linspace(-length / 2, length / 2, max(2, math.ceil(8 * length)))
        xs, ys = half + t * math.cos(angle), half + t * math.sin(angle)
        x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
        fx, fy = xs - x0, ys - y0
        for dx, dy, weight in (
            (0, 0, (1 - fx) * (1 - fy)),
            (1, 0, fx * (1 - fy)),
            (0, 1, (1 - fx) * fy),
            (1, 1, fx * fy),
        ):
            np.add.at(kernel, (y0 + dy, x0 + dx), weight)
        return _filter(image, kernel / kernel.sum())

    return step


def _downsample(sensor_width: int) -> Step:
    """The photograph as a sensor ``sensor_width`` px wide takes it, shown at full size again
    (area averaging down, bilinear up: what a low-resolution sensor and a viewer do)."""

    def step(image: np.ndarray, seed: int) -> np.ndarray:
        h, w = image.shape[:2]
        if sensor_width >= w:
            return image  # the sensor is finer than this image can show
        small = cv2.resize(
            image, (sensor_width, max(1, round(h * sensor_width / w))), interpolation=cv2.INTER_AREA
        )
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    return step


def _jpeg(quality: int) -> Step:
    """The photograph stored as a JPEG at the reference width: the 8x8 blocks are a fixed
    fraction of the width, as in a tablet's own files, whatever size it is viewed at."""
    compress = _albumentations(A.ImageCompression(quality_range=(quality, quality), p=1.0))

    def step(image: np.ndarray, seed: int) -> np.ndarray:
        h, w = image.shape[:2]
        stored = compress(_resize(image, *_reference_shape(image)), seed)
        return _resize(stored, h, w)

    return step


def _glare(radius: float) -> Step:
    """Albumentations' physics-based sun flare, drawn at the reference size (its blurs and
    spikes are in px) on black, resized to the image and screen-blended onto it."""
    flare = _albumentations(
        A.RandomSunFlare(
            flare_roi=(0.2, 0.2, 0.8, 0.8),
            src_radius=max(1, round(radius * REFERENCE_WIDTH)),
            num_flare_circles_range=(1, 3),
            method="physics_based",
            p=1.0,
        )
    )

    def step(image: np.ndarray, seed: int) -> np.ndarray:
        h, w = image.shape[:2]
        # Screen blending onto black returns the flare layer itself.
        layer = flare(np.zeros((*_reference_shape(image), 3), np.uint8), seed)
        layer = _resize(layer.astype(np.float32), h, w)
        return _to_uint8(255.0 - (255.0 - image) * (255.0 - layer) / 255.0)

    return step


def _sensor_noise(std: float) -> Step:
    """Gaussian noise, independent per channel, with a grain of one reference px: drawn at the
    reference size and resized, so a smaller image sees it averaged, as a sensor would."""

    def step(image: np.ndarray, seed: int) -> np.ndarray:
        h, w = image.shape[:2]
        rng = np.random.default_rng([seed, 0x5E])
        noise = rng.normal(0.0, std * 255.0, (*_reference_shape(image), 3)).astype(np.float32)
        if w < REFERENCE_WIDTH:
            noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_AREA)
        else:  # grain coarser than a pixel: each reference px covers several
            noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_NEAREST)
        return _to_uint8(image.astype(np.float32) + noise)

    return step


def _build(name: str, level) -> Step:
    if name == "downsample":
        return _downsample(level)
    if name == "defocus":
        return _defocus(level)
    if name == "motion_blur":
        return _motion_blur(level)
    if name == "jpeg":
        return _jpeg(level)
    if name == "white_balance":
        return _albumentations(_WhiteBalance(level))
    if name == "colour_cast":
        # A cast is a shift of the channels against each other, signs drawn per image.
        return _albumentations(
            A.RGBShift(
                r_shift_limit=(-level, level),
                g_shift_limit=(-level, level),
                b_shift_limit=(-level, level),
                p=1.0,
            )
        )
    if name == "glare":
        return _glare(level)
    if name == "sensor_noise":
        return _sensor_noise(level)
    raise KeyError(name)


def corruption(name: str, severity: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """A function ``(image uint8 HxWx3, seed) -> degraded image`` for one corruption.

    ``name`` is one of :data:`CORRUPTIONS`; ``severity`` 0..5 (0 = identity). Sizes follow each
    image's width (see the module docstring), so one function serves every resolution.
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if not 0 <= severity <= 5:
        raise ValueError(f"severity must be 0..5, got {severity}")
    if severity == 0:
        return lambda image, seed=0: image
    if name == "tablet_camera":
        # A chain at full strength would be far worse than any single cause, so severity 1 is a
        # low-resolution JPEG alone, and from severity 2 all five parts run one level lower.
        parts = ("downsample", "defocus", "white_balance", "sensor_noise", "jpeg")
        if severity == 1:
            parts = ("downsample", "jpeg")
        steps = [(p, _build(p, _LEVELS[p][max(0, severity - 2)])) for p in parts]
    else:
        steps = [(name, _build(name, _LEVELS[name][severity - 1]))]

    def apply(image: np.ndarray, seed: int = 0) -> np.ndarray:
        out = np.ascontiguousarray(image)
        for part, step in steps:
            # Each part its own stream, keyed by its name: the same layout alone and in a chain.
            state = np.random.SeedSequence([int(seed) % 2**32, zlib.crc32(part.encode())])
            out = step(out, int(state.generate_state(1)[0]))
        return out

    return apply


def degrade(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Degrade one uint8 HxWx3 image; see :func:`corruption`."""
    return corruption(name, severity)(image, seed)
