"""Tablet-camera degradations."""

import cv2
import numpy as np
import pytest

from vlcd_dist.data.degrade import CORRUPTIONS, corruption, degrade
from vlcd_dist.data.synthetic_placenta import make_sample


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A photograph at the size the severities are given at (degrade.REFERENCE_WIDTH)."""
    return make_sample(0, 1, size=(512, 384))[1]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_grows_with_severity(photo, name):
    assert degrade(photo, name, 0) is photo  # severity 0 is the identity, exactly
    diffs = []
    for severity in (1, 3, 5):
        out = degrade(photo, name, severity, seed=4)
        assert out.shape == photo.shape and out.dtype == np.uint8
        assert np.array_equal(out, degrade(photo, name, severity, seed=4))  # seeded
        diffs.append(np.abs(out.astype(float) - photo).mean())
    assert 0 < diffs[0] < diffs[2], diffs


def test_unknown_corruption_and_severity_are_refused():
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption("fog", 1)
    with pytest.raises(ValueError, match="severity"):
        corruption("jpeg", 6)


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (w // factor, h // factor), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_severity_means_the_same_at_any_resolution(photo, name):
    # The photograph degraded at 128x96 must look like the 512x384 one degraded, then shrunk:
    # same damage, same layout (seeded), up to the resampling. Pixel-sized corruptions fail
    # this by far (a 6 px disc at 128 px is a 24 px disc at 512 px).
    small = _shrink(photo, 4)
    for severity in (1, 3, 5):
        direct = degrade(small, name, severity, seed=7).astype(float)
        via_large = _shrink(degrade(photo, name, severity, seed=7), 4).astype(float)
        gap = np.abs(direct - via_large).mean()
        effect = np.abs(via_large - small).mean()
        # Resampling alone moves a pixel by well under one level on average.
        assert gap < 1.0 + 0.2 * effect, (severity, gap, effect)


def test_damage_finer_than_the_image_leaves_it_unchanged(photo):
    # A 307 px sensor (downsample, severity 1) shows nothing at 128 px; at 512 px it blurs.
    small = _shrink(photo, 4)
    assert np.array_equal(degrade(small, "downsample", 1), small)
    assert not np.array_equal(degrade(photo, "downsample", 1), photo)
