"""Slow: read a few real pairs of each dataset in ../shared/datasets (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg.config import AugmentConfig, DataConfig
from unetseg.data import ClassMap, find_cases, load_case
from unetseg.data.sampling import PatchDataset

from .helpers import DATASETS, real_dataset

pytestmark = pytest.mark.slow


def _read(name: str, n: int, values: list[float]):
    cases = find_cases(DATASETS / name)
    out = []
    for case in cases[:n]:
        image, labels, meta = load_case(case, DataConfig(), ClassMap(values))
        assert image.dtype == np.float32 and np.isfinite(image).all()
        assert labels.shape == image.shape[1:] and labels.max() >= 1
        out.append((case, image, labels, meta))
    return cases, out


@real_dataset("isbi2012_em")
def test_isbi2012_grey_png():
    cases, pairs = _read("isbi2012_em", 3, [0, 255])
    assert len(cases) == 24
    for _, image, labels, _ in pairs:
        assert image.shape == (1, 512, 512)
        assert 0.6 < labels.mean() < 0.9  # 255 = cell interior, ~78% of pixels


@real_dataset("dsb2018_stage1_test")
def test_dsb2018_rgb_png_of_varied_sizes_sample_with_padding():
    cases, pairs = _read("dsb2018_stage1_test", 4, [0, 255])
    assert all(image.shape[0] == 3 for _, image, _, _ in pairs)
    small = [c for c in cases if min(load_case(c, DataConfig(), ClassMap([0, 255]))[1].shape) < 256][:1]
    ds = PatchDataset(small, (256, 256), augment_cfg=AugmentConfig(), class_map=ClassMap([0, 255]), seed=0,
                      samples_per_epoch=2)
    img, lab = ds[0]
    assert img.shape == (3, 256, 256) and lab.shape == (256, 256)


@real_dataset("drive_retina")
def test_drive_rgb_with_thin_vessels():
    _, pairs = _read("drive_retina", 2, [0, 255])
    for _, image, labels, _ in pairs:
        assert image.shape == (3, 584, 565)
        assert 0.05 < labels.mean() < 0.2


@real_dataset("brats2013_deepmedic_3d")
def test_brats_nifti_volumes_keep_spacing_and_five_classes():
    _, pairs = _read("brats2013_deepmedic_3d", 1, [0, 1, 2, 3, 4])
    _, image, labels, meta = pairs[0]
    assert image.shape == (1, 155, 240, 240) and meta["spatial_dims"] == 3  # (z, y, x)
    assert meta["spacing"] == (1.0, 1.0, 1.0) and meta["affine"].shape == (4, 4)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3, 4} and len(np.unique(labels)) >= 3
