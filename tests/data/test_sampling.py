"""PatchDataset: shapes, padding, the foreground share, caching and seed-determinism across workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unetseg.config import AugmentConfig, DataConfig
from unetseg.data import ClassMap, find_cases
from unetseg.data.sampling import PatchDataset, choose_origin

from .helpers import gradient_image


def _sparse_pair(size=128):
    image = np.zeros((1, size, size), np.float32)
    labels = np.zeros((size, size), np.uint8)
    labels[100:103, 20:23] = 1  # one tiny structure
    image[0][labels > 0] = 1.0
    return image, labels


def test_patches_from_cases_have_the_right_shapes(cells2d):
    ds = PatchDataset(find_cases(cells2d), (32, 48), data_cfg=DataConfig(), augment_cfg=AugmentConfig(),
                      class_map=ClassMap([0, 255]), samples_per_epoch=5, seed=0)
    assert len(ds) == 5 and ds.in_memory == 6
    img, lab = ds[0]
    assert img.shape == (1, 32, 48) and img.dtype == torch.float32
    assert lab.shape == (32, 48) and lab.dtype == torch.int64
    assert set(torch.unique(lab).tolist()) <= {0, 1}


def test_3d_arrays_smaller_than_the_patch_are_padded():
    image = gradient_image((6, 10, 12))[None]
    labels = (image[0] > 0).astype(np.uint8)
    geometric = AugmentConfig(brightness_prob=0, contrast_prob=0, gamma_prob=0, noise_prob=0, blur_prob=0)
    ds = PatchDataset([(image, labels)], (8, 16, 16), augment_cfg=geometric, seed=1, samples_per_epoch=3)
    for i in range(3):
        img, lab = ds[i]
        assert img.shape == (1, 8, 16, 16) and lab.shape == (8, 16, 16)
        assert (lab != (img[0] > 0).long()).float().mean() < 0.05


@pytest.mark.parametrize("fraction, low, high", [(1.0, 1.0, 1.0), (0.0, 0.0, 0.35)])
def test_foreground_share(fraction, low, high):
    ds = PatchDataset([_sparse_pair()], (32, 32), data_cfg=DataConfig(foreground_fraction=fraction),
                      samples_per_epoch=60, seed=0)
    hit = np.mean([bool(ds[i][1].any()) for i in range(len(ds))])
    assert low <= hit <= high


def test_choose_origin_centres_and_pads():
    rng = np.random.default_rng(0)
    assert choose_origin((100, 100), (20, 20), rng, centre=np.array([50, 3])) == (40, 0)
    for _ in range(20):
        o = choose_origin((10, 100), (16, 20), rng)
        assert -6 <= o[0] <= 0 and 0 <= o[1] <= 80


def test_same_seed_same_patches_and_epochs_differ():
    pair = (gradient_image((64, 64))[None], (gradient_image((64, 64)) > 0).astype(np.uint8))
    kw = {"augment_cfg": AugmentConfig(), "samples_per_epoch": 4}
    a, b = PatchDataset([pair], (32, 32), seed=3, **kw), PatchDataset([pair], (32, 32), seed=3, **kw)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(4))
    first = a[0][0]
    a.set_epoch(1)
    assert not torch.equal(a[0][0], first)


def test_two_workers_give_the_same_batches_as_none():
    pair = (gradient_image((64, 64))[None], (gradient_image((64, 64)) > 0).astype(np.uint8))
    ds = PatchDataset([pair], (32, 32), augment_cfg=AugmentConfig(), samples_per_epoch=8, seed=7)
    ds.set_epoch(2)
    serial = [b[0] for b in DataLoader(ds, batch_size=4)]
    parallel = [b[0] for b in DataLoader(ds, batch_size=4, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(serial, parallel, strict=True))


def test_cache_modes(cells2d):
    cases = find_cases(cells2d)
    cm = ClassMap([0, 255])
    lazy = PatchDataset(cases, (32, 32), class_map=cm, cache="lazy", seed=0)
    assert lazy.in_memory == 0
    per_case = 64 * 64 * 4 + 64 * 64  # a float32 image and its uint8 labels
    tiny = PatchDataset(cases, (32, 32), data_cfg=DataConfig(cache_gib=2.5 * per_case / 2**30), class_map=cm,
                        seed=0)
    assert tiny.in_memory == 2  # auto: the cases that fit the budget, the rest per sample
    assert tiny.store.nbytes == 2 * per_case <= tiny.store.budget
    memory = PatchDataset(cases, (32, 32), class_map=cm, cache="memory", seed=0)
    assert memory.in_memory == len(cases)
    for i in range(3):
        assert torch.equal(lazy[i][0], memory[i][0]) and torch.equal(lazy[i][1], tiny[i][1])
