"""Tablet-camera degradations."""

import numpy as np
import pytest

from vlcd_dist.data.degrade import CORRUPTIONS, corruption, degrade
from vlcd_dist.data.synthetic_placenta import make_sample


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return make_sample(0, 1, size=(160, 120))[1]


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
