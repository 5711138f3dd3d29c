"""Seeded watershed instances from ideal predicted maps, small-object removal, hole filling, stitching."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetseg.config.schema import DISTANCE_BINS, instance_classes
from unetseg.data.instances import distance_class_target, distance_target, instance_target
from unetseg.errors import ConfigError, DataError
from unetseg.metrics.instances import match_objects
from unetseg.postprocess.instances import (
    expected_distance,
    instances_from_distance,
    instances_from_distance_classes,
    instances_from_three_class,
    remove_small_and_fill,
    stitch_band_sequence,
    stitch_bands,
)


def touching_balls(shape: tuple[int, ...], centres: list[tuple[float, ...]], radius: float) -> np.ndarray:
    """Objects 1..N: the pixels within ``radius`` of a centre, each given to its nearest centre, so balls
    closer than ``2 * radius`` touch along a flat face."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    dist = np.linalg.norm(grid[..., None, :] - np.array(centres, float), axis=-1)
    labels = dist.argmin(-1) + 1
    labels[dist.min(-1) > radius] = 0
    return labels.astype(np.int32)


def discs_2d(rows: int = 3) -> np.ndarray:
    """``2 * rows`` horizontal pairs of touching discs of radius 7 (centres 13 apart), 32 rows per pair."""
    centres = [(16.0 + 32 * r, c + d) for r in range(rows) for c in (24.0, 70.0) for d in (-6.5, 6.5)]
    return touching_balls((32 * rows, 96), centres, 7.0)


def ideal_probs(labels: np.ndarray, blur: float = 0.7, kind: str = "three_class") -> np.ndarray:
    """One-hot map of the ``kind`` target of ``labels`` (the 3-class map or the distance bins), each channel
    slightly blurred (channels still sum to 1)."""
    target = instance_target(labels, kind)
    onehot = np.stack([target == k for k in range(instance_classes(kind))]).astype(np.float32)
    return np.stack([ndimage.gaussian_filter(c, blur) for c in onehot])


def assert_same_objects(pred: np.ndarray, true: np.ndarray, min_iou: float) -> None:
    """Same count and a perfect one-to-one matching with IoU > ``min_iou``."""
    m = match_objects(pred, true)
    assert m.n_pred == m.n_true
    assert m.true_positives(min_iou) == m.n_true, np.sort(m.iou)[:5]


def test_three_class_2d_recovers_touching_discs() -> None:
    true = discs_2d()
    assert len(np.unique(true)) - 1 == 12 and ndimage.label(true > 0)[1] == 6  # 6 touching pairs
    labels = instances_from_three_class(ideal_probs(true))
    assert labels.dtype == np.uint16 and labels.shape == true.shape
    np.testing.assert_array_equal(np.unique(labels), np.arange(13))  # ids 1..12, consecutive
    assert_same_objects(labels, true, 0.8)


def test_three_class_3d_recovers_touching_balls() -> None:
    centres = [(12.0, 12.0, c) for c in (8.0, 19.0)] + [(12.0, 29.0, c) for c in (8.0, 19.0)] \
        + [(27.0, 20.0, 12.0), (27.0, 20.0, 23.0)]
    true = touching_balls((36, 38, 32), centres, 6.0)
    assert ndimage.label(true > 0)[1] < 6  # some balls touch
    labels = instances_from_three_class(ideal_probs(true), min_size=20)
    assert labels.max() == 6
    assert_same_objects(labels, true, 0.8)


def test_distance_path_2d_and_3d() -> None:
    true = discs_2d()
    distance = ndimage.gaussian_filter(distance_target(true), 0.5)
    labels = instances_from_distance(distance, true > 0)
    assert labels.max() == 12
    assert_same_objects(labels, true, 0.8)
    true3 = touching_balls((20, 24, 36), [(10.0, 12.0, 9.0), (10.0, 12.0, 19.0), (10.0, 12.0, 28.0)], 6.0)
    labels3 = instances_from_distance(distance_target(true3), true3 > 0, min_size=20)
    assert labels3.max() == 3 and ndimage.label(true3 > 0)[1] == 1
    assert_same_objects(labels3, true3, 0.8)


def test_distance_path_small_bumps_do_not_split() -> None:
    true = touching_balls((30, 30), [(15.0, 15.0)], 10.0)
    distance = distance_target(true)
    distance[15, 8] += 0.05  # a local maximum of dynamic 0.05 < h
    assert instances_from_distance(distance, true > 0, h=0.2).max() == 1
    # two plateau maxima 2 pixels apart are one seed with min_distance 3, two without
    flat = np.zeros((9, 20))
    flat[2:7, 1:19] = 0.5
    flat[4, 8] = flat[4, 11] = 1.0
    assert instances_from_distance(flat, flat > 0, min_distance=4, min_size=1).max() == 1
    assert instances_from_distance(flat, flat > 0, min_distance=0, min_size=1).max() == 2


def test_expected_distance_of_bin_probabilities() -> None:
    true = discs_2d(rows=1)
    target = distance_class_target(true)
    onehot = ideal_probs(true, blur=0.0, kind="distance")
    centres = (np.arange(1, DISTANCE_BINS + 1) - 0.5) / DISTANCE_BINS
    want = np.where(target > 0, centres[np.maximum(target, 1) - 1], 0.0)
    got = expected_distance(onehot)
    assert got.dtype == np.float32 and got.shape == true.shape
    np.testing.assert_allclose(got, want, atol=1e-6)
    # half background, half the top bin: half the top bin's centre; the bins' mean: their mean centre
    mixed = np.zeros((1 + DISTANCE_BINS, 1, 2), np.float32)
    mixed[[0, DISTANCE_BINS], 0, 0] = 0.5
    mixed[1:, 0, 1] = 1.0 / DISTANCE_BINS
    np.testing.assert_allclose(expected_distance(mixed)[0], [0.5 * centres[-1], centres.mean()], atol=1e-6)
    with pytest.raises(DataError):
        expected_distance(onehot[:1])


def test_distance_bins_2d_and_3d_recover_touching_discs() -> None:
    true = discs_2d()
    labels = instances_from_distance_classes(ideal_probs(true, kind="distance"))
    assert labels.dtype == np.uint16 and labels.max() == 12
    assert_same_objects(labels, true, 0.8)
    true3 = touching_balls((20, 24, 36), [(10.0, 12.0, 9.0), (10.0, 12.0, 19.0), (10.0, 12.0, 28.0)], 6.0)
    labels3 = instances_from_distance_classes(ideal_probs(true3, kind="distance"), min_size=20)
    assert labels3.max() == 3
    assert_same_objects(labels3, true3, 0.8)


def test_noise_seeds_are_dropped() -> None:
    true = discs_2d(rows=1)
    probs = ideal_probs(true)
    # a 2-pixel speck of interior between the two pairs: a spurious object unless its seed is dropped
    probs[:, 16, 46:48] = np.array([0.0, 1.0, 0.0])[:, None]
    labels = instances_from_three_class(probs, min_seed_size=3, min_size=1)
    assert labels.max() == 4 and labels[16, 46] == 0
    assert instances_from_three_class(probs, min_seed_size=1, min_size=1).max() == 5


def test_remove_small_and_fill() -> None:
    labels = np.zeros((10, 12), np.int32)
    labels[1:8, 1:8] = 40
    labels[4, 4] = 0  # a hole of object 40
    labels[2, 2] = 9  # a tiny object inside 40: removed, then filled
    labels[1:8, 8:11] = 7  # touches 40
    labels[3, 8] = 0  # a gap touching both 40 and 7: not a hole of either
    labels[9, 0] = 5  # tiny, at the border
    out = remove_small_and_fill(labels, min_size=2, fill_holes=True)
    assert out.dtype == np.uint16
    assert out[4, 4] == out[2, 2] == out[1, 1] and out[3, 8] == 0 and out[9, 0] == 0
    assert out.max() == 2 and out[1, 9] != out[1, 1]
    kept = remove_small_and_fill(labels, min_size=2, fill_holes=False)
    assert kept[4, 4] == 0 and kept[2, 2] == 0 and kept.max() == 2


def test_many_objects_give_uint32() -> None:
    labels = np.zeros((2, 2 * 70000), np.int32)
    labels[0, ::2] = np.arange(1, 70001)
    out = remove_small_and_fill(labels, min_size=1, fill_holes=False)
    assert out.dtype == np.uint32 and out.max() == 70000


def test_stitch_bands_contract() -> None:
    previous = np.array([[0, 4, 4, 0, 5, 0]], np.uint32)  # final global rows, ids up to 5
    band = np.array([
        [0, 2, 2, 0, 0, 0],  # local 2 continues global 4; local object 3 only here is discarded
        [0, 2, 2, 0, 3, 3],
        [1, 0, 0, 0, 3, 3],  # local 1 and 3 are new
    ])
    band[0, 4] = 8  # local 8 sits on global 5 but has no pixel in the new rows: gets no id
    rows, next_id = stitch_bands(previous, band, next_id=6)
    np.testing.assert_array_equal(rows, [[0, 4, 4, 0, 7, 7], [6, 0, 0, 0, 7, 7]])
    assert rows.dtype == np.uint32 and next_id == 8
    first, next_id = stitch_bands(None, band, next_id=1)
    assert first.shape == band.shape and set(np.unique(first)) == {0, 1, 2, 3, 4} and next_id == 5


def test_stitched_bands_equal_the_whole_image() -> None:
    true = discs_2d(rows=5)  # 160 x 96, 20 discs; band seams at rows 48, 80, 112 cut through discs
    probs = ideal_probs(true)
    whole = instances_from_three_class(probs)
    height, overlap, step = 64, 32, 32
    starts = range(0, len(true) - overlap, step)
    bands = (instances_from_three_class(probs[:, s:s + height]) for s in starts)
    stitched = np.concatenate(list(stitch_band_sequence(bands, overlap)))
    assert stitched.shape == true.shape
    np.testing.assert_array_equal(np.unique(stitched), np.arange(21))
    assert_same_objects(stitched, whole, 0.9)
    # the same pieces without matching: every seam splits the discs it crosses (those centred on it)
    pieces = [instances_from_three_class(probs[:, s:s + height]).astype(np.int64) for s in starts]
    naive = np.concatenate([(p + 1000 * k) * (p > 0) for k, p in enumerate(
        [pieces[0][:48], *(p[16:48] for p in pieces[1:-1]), pieces[-1][16:]])])
    assert naive.shape == true.shape and len(np.unique(naive)) - 1 == 20 + 3 * 4


def test_bad_options() -> None:
    probs = ideal_probs(discs_2d(rows=1))
    with pytest.raises(ConfigError):
        instances_from_three_class(probs, interior_threshold=1.5)
    with pytest.raises(DataError):
        instances_from_three_class(probs[:2])
    with pytest.raises(DataError):
        instances_from_three_class(probs.astype(np.int32))
    with pytest.raises(ConfigError):
        instances_from_distance(probs[1], probs[1] > 0, h=0)
    with pytest.raises(ConfigError):
        instances_from_distance_classes(probs, foreground_threshold=1.0)
    with pytest.raises(ConfigError):
        stitch_bands(None, np.zeros((3, 3), int), 1, min_iou=0.3)
    with pytest.raises(DataError):
        stitch_bands(np.zeros((3, 4), int), np.zeros((3, 4), int), 1)  # no new rows
    with pytest.raises(DataError):
        list(stitch_band_sequence([np.zeros((8, 4), int), np.zeros((4, 4), int)], overlap=4))


def test_one_band_shorter_than_the_overlap_is_the_whole_image():
    """A thin volume (20 slices, overlap 32) is one band: no seam to stitch, its objects numbered 1..N."""
    band = np.zeros((20, 6, 6), int)
    band[2:5, 1:3, 1:3], band[10:18, 3:6, 3:6] = 7, 3
    (rows,) = list(stitch_band_sequence([band], overlap=32))
    assert rows.shape == band.shape and sorted(np.unique(rows)) == [0, 1, 2]
    assert ((rows > 0) == (band > 0)).all() and len(np.unique(rows[band == 7])) == 1
