"""Tablet-camera degradations for the robustness study, at severities 0 (none) to 5.

Each corruption is one albumentations transform with its strength pinned per severity, so a
severity means the same damage on every image; only the random layout (motion direction, glare
position, noise pattern) varies, seeded per image. Severity 0 returns the input unchanged, so a
"degraded" evaluation at severity 0 reproduces the clean one exactly.

``tablet_camera`` chains the corruptions a cheap tablet adds all at once (low resolution, a little
defocus, a colour cast, sensor noise, JPEG); the single corruptions isolate one cause each.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)

# Per corruption, one strength per severity 1..5.
_LEVELS: dict[str, tuple] = {
    "downsample": (0.6, 0.45, 0.33, 0.25, 0.18),  # fraction of the resolution kept
    "defocus": (1, 2, 3, 4, 6),  # disc radius, px at 512x384
    "motion_blur": (3, 5, 7, 11, 15),  # kernel length, px
    "jpeg": (60, 40, 25, 15, 8),  # JPEG quality
    "white_balance": (5700, 5400, 5000, 4600, 4200),  # black-body colour temperature, K
    "colour_cast": (8, 16, 26, 38, 52),  # per-channel shift, in 0..255 levels
    "glare": (0.06, 0.1, 0.15, 0.2, 0.27),  # flare radius, fraction of the image width
    "sensor_noise": (0.02, 0.04, 0.07, 0.10, 0.14),  # noise std, fraction of full scale
}
CORRUPTIONS: tuple[str, ...] = (*_LEVELS, "tablet_camera")


class _WhiteBalance(A.PlanckianJitter):
    """Planckian jitter pinned to one colour temperature (albumentations samples a range)."""

    def __init__(self, temperature: int):
        super().__init__(mode="blackbody", temperature_limit=(temperature, 6000), p=1.0)
        self.fixed_temperature = temperature

    def get_params(self) -> dict:
        return {"temperature": self.fixed_temperature}


def _build(name: str, level, width: int) -> A.BasicTransform:
    if name == "downsample":
        # Area averaging down, bilinear up: what a low-resolution sensor and a viewer do.
        return A.Downscale(
            scale_range=(level, level),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR},
            p=1.0,
        )
    if name == "defocus":
        return A.Defocus(radius=(level, level), alias_blur=(0.1, 0.1), p=1.0)
    if name == "motion_blur":
        return A.MotionBlur(blur_limit=(level, level), allow_shifted=False, p=1.0)
    if name == "jpeg":
        return A.ImageCompression(quality_range=(level, level), p=1.0)
    if name == "white_balance":
        return _WhiteBalance(level)
    if name == "colour_cast":
        # A cast is a shift of the channels against each other, signs drawn per image.
        return A.RGBShift(
            r_shift_limit=(-level, level),
            g_shift_limit=(-level, level),
            b_shift_limit=(-level, level),
            p=1.0,
        )
    if name == "glare":
        return A.RandomSunFlare(
            flare_roi=(0.2, 0.2, 0.8, 0.8),
            src_radius=max(4, int(level * width)),
            num_flare_circles_range=(1, 3),
            method="physics_based",
            p=1.0,
        )
    if name == "sensor_noise":
        return A.GaussNoise(std_range=(level, level), per_channel=True, p=1.0)
    raise KeyError(name)


def corruption(
    name: str, severity: int, width: int = 512
) -> Callable[[np.ndarray, int], np.ndarray]:
    """A function ``(image uint8 HxWx3, seed) -> degraded image`` for one corruption.

    ``name`` is one of :data:`CORRUPTIONS`; ``severity`` 0..5 (0 = identity). ``width`` sets the
    scale of the size-dependent corruptions (glare).
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
        steps = [_build(p, _LEVELS[p][max(0, severity - 2)], width) for p in parts]
    else:
        steps = [_build(name, _LEVELS[name][severity - 1], width)]

    def apply(image: np.ndarray, seed: int = 0) -> np.ndarray:
        pipeline = A.Compose(steps, seed=int(seed) % (2**32))
        return pipeline(image=np.ascontiguousarray(image))["image"]

    return apply


def degrade(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Degrade one uint8 HxWx3 image; see :func:`corruption`."""
    return corruption(name, severity, width=image.shape[1])(image, seed)
