"""The synthetic generator: exact masks with the documented values, reproducible, a valid dataset folder."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetseg.config import Config
from unetseg.data import find_cases
from unetseg.data.prepare import prepare_data
from unetseg.data.synthetic import make_dataset, make_image
from unetseg.errors import ConfigError
from unetseg.io.images import read_image, read_mask


@pytest.mark.parametrize("kind, values, shape", [
    ("cells", {0, 255}, (96, 80)), ("membranes", {0, 255}, (96, 80)), ("cells3d", {0, 1, 2}, (12, 32, 40)),
])
def test_kinds_have_their_values_and_are_reproducible(kind, values, shape):
    image, mask = make_image(kind, shape, seed=4)
    assert image.shape == mask.shape == shape
    assert set(np.unique(mask).tolist()) == values
    again, mask2 = make_image(kind, shape, seed=4)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(mask, mask2)
    assert not np.array_equal(make_image(kind, shape, seed=5)[1], mask)


def test_cells_are_brighter_than_background_and_some_touch():
    image, mask = make_image("cells", (128, 128), seed=0)
    fg, bg = image[mask > 0].astype(float), image[mask == 0].astype(float)
    assert fg.mean() > bg.mean() + 30  # visible, but
    assert np.percentile(fg, 5) < np.percentile(bg, 95)  # not trivially separable by one threshold
    labels, n = ndimage.label(mask > 0)
    assert n >= 5
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.max() > 2 * np.median(sizes)  # touching blobs merge into bigger components


def test_membranes_are_thin_dark_lines():
    image, mask = make_image("membranes", (128, 128), seed=0)
    membrane = mask == 0
    assert 0.05 < membrane.mean() < 0.3
    assert image[membrane].mean() < image[~membrane].mean() - 40
    assert ndimage.binary_erosion(membrane, iterations=3).mean() < 0.01  # thin


def test_make_dataset_writes_a_readable_layout(tmp_path):
    root = make_dataset(tmp_path / "d", n=3, size=(48, 40), kind="membranes", seed=2)
    cases = find_cases(root)
    assert [c.name for c in cases] == ["case_000", "case_001", "case_002"]
    image, _ = read_image(cases[0].image_paths[0])
    assert image.shape == (1, 48, 40)
    bigger = make_dataset(tmp_path / "e", n=4, size=(48, 40), kind="membranes", seed=2)
    np.testing.assert_array_equal(read_mask(bigger / "masks" / "case_001.png")[0],
                                  read_mask(root / "masks" / "case_001.png")[0])


@pytest.mark.parametrize("ext", [".nii.gz", ".tif"])
def test_3d_dataset_keeps_spacing(tmp_path, ext):
    root = make_dataset(tmp_path / "v", n=2, size=(8, 16, 16), kind="cells3d", seed=0, ext=ext)
    image, meta = read_image(root / "images" / f"case_000{ext}")
    assert image.shape == (1, 8, 16, 16) and meta["spatial_dims"] == 3
    np.testing.assert_allclose(meta["spacing"], (2.0, 1.0, 1.0))
    cfg = Config()
    cfg.data.data = str(root)
    assert prepare_data(cfg).class_map.values == [0, 1, 2]


def test_bad_kind_or_size():
    with pytest.raises(ConfigError, match="choose one of"):
        make_image("blobs")
    with pytest.raises(ConfigError, match="must be 3D"):
        make_image("cells3d", (64, 64))
