"""The ``steps`` normalisation (an imported bioimage.io package's preprocessing): bioimageio.core's formulas,
statistics of the raw image, the same result when frozen for a streamed image, and one line for a bad step."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg.data.normalize import Normalizer, frozen_steps
from unetseg.errors import ConfigError

STEPS = [
    {"op": "scale_linear", "gain": [2.0, 0.5], "offset": 1.0},
    {"op": "zero_mean_unit_variance", "per_channel": True},
    {"op": "clip", "min_percentile": 1.0, "max": 3.0, "per_channel": False},
    {"op": "scale_range", "min_percentile": 5.0, "max_percentile": 95.0, "per_channel": False, "eps": 1e-6},
    {"op": "fixed_zero_mean_unit_variance", "mean": 0.5, "std": [0.25, 2.0]},
]


def _image() -> np.ndarray:
    return np.random.default_rng(0).gamma(2.0, 30.0, size=(2, 20, 30)).astype(np.float32)


def test_each_step_follows_bioimageio_core_with_statistics_of_the_raw_image():
    raw = _image().astype(np.float64)
    x = raw * np.array([2.0, 0.5])[:, None, None] + 1.0
    x = (x - raw.mean(axis=(1, 2), keepdims=True)) / (raw.std(axis=(1, 2), keepdims=True) + 1e-6)
    x = np.clip(x, np.percentile(raw, 1.0, method="inverted_cdf"), 3.0)
    lo, hi = np.percentile(raw, [5.0, 95.0])
    x = (x - lo) / (hi - lo + 1e-6)
    x = (x - 0.5) / (np.array([0.25, 2.0])[:, None, None] + 1e-6)
    got = Normalizer("steps", steps=STEPS)(_image())
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)


def test_frozen_steps_give_the_same_image_pixel_by_pixel():
    image = _image()
    mean, std = image.mean(axis=(1, 2), dtype=np.float64), image.std(axis=(1, 2), dtype=np.float64)
    frozen = frozen_steps(STEPS, mean, std, image.reshape(2, -1))
    assert not any(s["op"] in ("zero_mean_unit_variance", "scale_range") for s in frozen)
    region = (slice(None), slice(3, 11), slice(5, 20))
    np.testing.assert_allclose(Normalizer("steps", steps=frozen)(image[region]),
                               Normalizer("steps", steps=STEPS)(image)[region], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step, why", [({"op": "sigmoid"}, "unknown step"),
                                       ({"op": "fixed_zero_mean_unit_variance", "mean": 1.0}, "needs std"),
                                       ({"op": "clip", "per_channel": True}, "needs min"),
                                       ({"op": "scale_linear", "gain": 1.0, "axis": "x"}, "takes no axis")])
def test_a_bad_step_is_one_line(step, why):
    with pytest.raises(ConfigError, match=why):
        Normalizer("steps", steps=[step])
