"""Augmentation keeps image and mask aligned, masks legal, inputs untouched, and a seed reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetseg.config import AugmentConfig
from unetseg.data.augment import DROP_PROB, MORPH_PROB, Augmenter, crop, elastic_displacement, perturb_prior
from unetseg.errors import ConfigError

from .helpers import gradient_image

OFF = {k: 0.0 for k in ("flip_prob", "rot90_prob", "affine_prob", "elastic_prob", "brightness_prob",
                        "contrast_prob", "gamma_prob", "noise_prob", "blur_prob")}
GEOMETRIC = {
    "flip": {"flip_prob": 1.0},
    "rot90": {"rot90_prob": 1.0},
    "affine": {"affine_prob": 1.0, "rotation_degrees": 30.0, "scale_range": [0.7, 1.4]},
    "elastic": {"elastic_prob": 1.0},
    "all": {"flip_prob": 1.0, "rot90_prob": 1.0, "affine_prob": 1.0, "elastic_prob": 1.0},
}
SHAPES = {2: (96, 96), 3: (28, 28, 28)}
PATCH = {2: (64, 64), 3: (20, 20, 20)}


def _aug(dims: int, pad_mode: str = "reflect", **probs) -> Augmenter:
    return Augmenter(AugmentConfig(**{**OFF, **probs}), dims, pad_mode=pad_mode)


def _pair(dims: int, seed: int = 0):
    image = gradient_image(SHAPES[dims], seed)[None]
    return image, (image[0] > 0).astype(np.uint8)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_geometry_keeps_mask_equal_to_threshold_of_image(dims, name):
    image, mask = _pair(dims)
    aug = _aug(dims, **GEOMETRIC[name])
    origin = (-5,) + (10,) * (dims - 1)  # reaches past the border: padding is transformed alike
    changed = 0
    for seed in range(4):
        img, msk = aug.extract(image, mask, origin, PATCH[dims], np.random.default_rng(seed))
        assert img.shape == (1, *PATCH[dims]) and msk.shape == PATCH[dims] and msk.dtype == np.uint8
        assert 0 < msk.mean() < 1
        wrong = msk != (img[0] > 0)
        if name in ("flip", "rot90"):
            assert not wrong.any()  # exact array operations
        else:
            # Linear (image) and nearest (mask) interpolation may disagree only next to the boundary.
            edge = ndimage.binary_dilation(ndimage.morphological_gradient(msk, size=3) > 0)
            edge |= np.pad(np.zeros([s - 4 for s in msk.shape], bool), 2, constant_values=True)  # rim
            assert wrong.mean() < 0.05 and not (wrong & ~edge).any()
        plain = crop(image, origin, PATCH[dims], lead=1)
        changed += not np.allclose(img, plain)
    assert changed >= 3  # the transform really acted


@pytest.mark.parametrize("dims", [2, 3])
def test_affine_and_elastic_sample_image_and_mask_at_the_same_points(dims):
    image, mask = _pair(dims, seed=1)
    aug = _aug(dims, **GEOMETRIC["all"])
    rng = np.random.default_rng(3)
    params = aug.sample_spatial(PATCH[dims], rng)
    coords = aug.coordinates(params, (3,) * dims, PATCH[dims])
    nearest_image = aug.resample(image[0], coords, order=0)
    np.testing.assert_array_equal(aug.resample(mask, coords, order=0), nearest_image > 0)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_masks_keep_only_legal_values(pad_mode):
    rng = np.random.default_rng(0)
    image = gradient_image((80, 80))[None]
    mask = np.choose(np.digitize(image[0], [-0.05, 0.05]), [0, 3, 7]).astype(np.uint8)
    aug = Augmenter(AugmentConfig(**{k: 1.0 for k in OFF}), 2, pad_mode=pad_mode)
    seen = set()
    for seed in range(6):
        origin = (int(rng.integers(-30, 40)), 5)
        _, msk = aug.extract(image, mask, origin, (64, 64), np.random.default_rng(seed))
        seen |= set(np.unique(msk).tolist())
    assert seen <= {0, 3, 7} and len(seen) == 3


def test_same_seed_same_result_other_seed_differs():
    image, mask = _pair(2)
    aug = Augmenter(AugmentConfig(**{k: 0.7 for k in OFF}), 2)
    a = aug.extract(image, mask, (4, 4), (64, 64), np.random.default_rng(11))
    b = aug.extract(image, mask, (4, 4), (64, 64), np.random.default_rng(11))
    c = aug.extract(image, mask, (4, 4), (64, 64), np.random.default_rng(12))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_intensity_changes_image_not_mask_nor_input():
    image, mask = _pair(2)
    before_img, before_mask = image.copy(), mask.copy()
    probs = {k: 1.0 for k in ("brightness_prob", "contrast_prob", "gamma_prob", "noise_prob", "blur_prob")}
    aug = _aug(2, **probs)
    img, msk = aug(image, mask, np.random.default_rng(0))  # whole image: the crop is a view of the input
    np.testing.assert_array_equal(image, before_img)
    np.testing.assert_array_equal(mask, before_mask)
    np.testing.assert_array_equal(msk, mask)
    assert img.dtype == np.float32 and not np.allclose(img, image)


def test_a_cascades_prior_gets_no_intensity_change_and_is_damaged_as_nnunet_does():
    """The last channels (a first stage's one-hot prediction) move with the image but keep 0/1 values: the
    intensity transforms change only the image channels; some draws dilate, erode or drop parts of it."""
    image, mask = _pair(2)
    prior = mask[None].astype(np.float32)
    both = np.concatenate([image, prior])
    probs = {k: 1.0 for k in ("brightness_prob", "contrast_prob", "gamma_prob", "noise_prob", "blur_prob")}
    aug = Augmenter(AugmentConfig(**{**OFF, **probs, "flip_prob": 1.0}), 2, prior_channels=1)
    changed = 0
    for seed in range(40):
        img, msk = aug(both, mask, np.random.default_rng(seed))
        assert set(np.unique(img[1])) <= {0.0, 1.0}  # never brightened, blurred or noised
        assert not np.allclose(img[0], np.flip(image[0], (0, 1)))  # the image channel was
        changed += not np.array_equal(img[1], msk.astype(np.float32))  # the prior no longer equals the mask
    expected = 1 - (1 - MORPH_PROB) * (1 - DROP_PROB)  # at least one kind of damage drawn
    assert 0.5 * expected * 40 <= changed <= 40 * min(1.0, 1.5 * expected)


def test_perturb_prior_dilates_erodes_and_drops_small_parts():
    prior = np.zeros((2, 48, 48), np.float32)
    prior[0, 10:30, 10:30] = 1
    prior[1, 40:44, 40:44] = 1  # a small part (under 15% of the patch) that may be dropped
    sizes = {tuple(int(p.sum()) for p in perturb_prior(prior.copy(), np.random.default_rng(s)))
             for s in range(60)}
    first = {a for a, _ in sizes}
    assert min(first) < 400 < max(first)  # eroded/opened and dilated/closed
    assert any(b == 0 for _, b in sizes)  # the small square removed in some draws
    assert (400, 16) in sizes  # and some draws leave it alone


def test_gamma_keeps_the_range():
    image, mask = _pair(2)
    img, _ = _aug(2, gamma_prob=1.0)(image, mask, np.random.default_rng(0))
    np.testing.assert_allclose([img.min(), img.max()], [image.min(), image.max()], rtol=1e-5, atol=1e-5)
    assert not np.allclose(img, image)


def test_small_image_is_padded_by_reflection():
    image = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    mask = (image[0] > 9).astype(np.uint8)
    img, msk = _aug(2).extract(image, mask, (-3, -2), (10, 9), np.random.default_rng(0))
    np.testing.assert_array_equal(img[0], np.pad(image[0], ((3, 3), (2, 2)), mode="reflect"))
    np.testing.assert_array_equal(msk, np.pad(mask, ((3, 3), (2, 2)), mode="reflect"))
    img, msk = _aug(2, "constant").extract(image, mask, (-3, -2), (10, 9), np.random.default_rng(0))
    assert img[0, 0, 0] == 0 and msk[0, 0] == 0 and img[0, 3, 2] == 0 and img[0, 3, 3] == 1


def test_rot90_only_in_square_planes():
    image, mask = _pair(2)
    img, msk = _aug(2, rot90_prob=1.0).extract(image, mask, (0, 0), (40, 64), np.random.default_rng(0))
    assert img.shape == (1, 40, 64) and msk.shape == (40, 64)


def test_elastic_field_has_the_papers_scale():
    rng = np.random.default_rng(0)
    fields = np.stack([elastic_displacement((32, 32), 3, 10.0, rng) for _ in range(300)])
    assert fields.shape == (300, 2, 32, 32)
    assert 8.5 < fields[:, :, 0, 0].std() < 11.5  # the grid nodes carry N(0, 10 px)
    assert np.abs(np.diff(fields, axis=-1)).max() < 5.0  # smooth between them


def test_bad_config_is_refused():
    from unetseg.config import build_config

    with pytest.raises(ValueError, match="flip_prob"):  # the schema refuses it as the config is made
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ConfigError, match=r"recipe.yaml: augment.scale_range: .*lo <= hi"):
        build_config([({"augment": {"scale_range": [1.2, 0.8]}}, "recipe.yaml")])
    cfg = AugmentConfig()
    with pytest.raises(ConfigError, match="flip_prob"):
        cfg.flip_prob = 2.0  # assignments are validated too
    with pytest.raises(ConfigError, match="pad_mode"):
        Augmenter(None, 2, pad_mode="wrap")
