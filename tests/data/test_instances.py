"""Instance training targets: 3-class map, U-Net weight map over objects, normalised distance map and its
bins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from unetseg.config.schema import DISTANCE_BINS
from unetseg.data.instances import (
    INTERIOR,
    InstanceLabels,
    distance_class_target,
    distance_target,
    instance_target,
    instance_weight_map,
    relabel_sequential,
    three_class_target,
)
from unetseg.errors import ConfigError, DataError


def _two_rectangles() -> np.ndarray:
    """Two touching 3x4 rectangles (ids 3 and 9) and a 1x2 object (id 70000) in a 6x10 uint32 image."""
    labels = np.zeros((6, 10), np.uint32)
    labels[1:4, 1:5] = 3
    labels[1:4, 5:9] = 9
    labels[5, 2:4] = 70000
    return labels


def _voronoi(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """Touching random cells: each pixel takes its nearest of ``n`` random points, a band of background
    where the nearest point is far."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, 1, (n, len(shape))) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    dist = np.linalg.norm(grid[..., None, :] - points, axis=-1)
    labels = dist.argmin(-1) + 1
    labels[dist.min(-1) > 6] = 0
    return labels.astype(np.int32)


def test_relabel_sequential_maps_ids_in_order_to_int32() -> None:
    out = relabel_sequential(np.array([[0, 70000, 5], [5, 0, 2**32 - 1]], np.uint32))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 2, 1], [1, 0, 3]])


def test_three_class_target_by_hand() -> None:
    expected = np.array([
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 2, 2, 2, 2, 2, 2, 2, 2, 0],
        [0, 2, 1, 1, 2, 2, 1, 1, 2, 0],
        [0, 2, 2, 2, 2, 2, 2, 2, 2, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        # the 1x2 object has no interior of its own: its deepest pixels (all of it) stay interior
        [0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
    ], np.uint8)
    target = three_class_target(_two_rectangles())
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target, expected)


def test_boundary_width_thickens_and_keeps_a_core() -> None:
    labels = np.zeros((12, 12), np.int32)
    labels[1:11, 1:11] = 1
    width2 = three_class_target(labels, boundary_width=2)
    # depth <= 2: the two outer rings of the 10x10 square are boundary, the 6x6 centre interior
    assert (width2[3:9, 3:9] == 1).all() and width2[1:11, 1:11].sum() == 36 + 2 * 64
    # width 5 leaves no pixel deeper than 5: the deepest ones (the central 2x2) are kept as interior
    width5 = three_class_target(labels, boundary_width=5)
    assert np.argwhere(width5 == 1).tolist() == [[5, 5], [5, 6], [6, 5], [6, 6]]


def test_interiors_of_touching_objects_are_separate_components() -> None:
    labels = _voronoi((48, 48), 12, seed=0)
    target = three_class_target(labels)
    components, n = ndimage.label(target == 1, structure=np.ones((3, 3)))  # even diagonal contact counts
    assert n == len(np.unique(labels[labels > 0]))
    for index in range(1, n + 1):
        assert len(np.unique(labels[components == index])) == 1


def test_three_class_target_3d_touching_boxes() -> None:
    labels = np.zeros((6, 8, 12), np.uint16)
    labels[1:5, 1:7, 1:6] = 1
    labels[1:5, 1:7, 6:11] = 2
    target = three_class_target(labels)
    assert target.dtype == np.uint8 and target.shape == labels.shape
    contact = labels[:, :, 5:7] > 0  # the two planes where the boxes touch are boundary on both sides
    assert (target[:, :, 5:7][contact] == 2).all()
    components, n = ndimage.label(target == 1)
    assert n == 2
    assert (target[2:4, 2:6, 2:5] == 1).all() and (target[labels == 0] == 0).all()


def test_weight_map_by_hand_two_points() -> None:
    labels = np.zeros((5, 11), np.int32)
    labels[2, 2] = 1
    labels[2, 8] = 2
    w = instance_weight_map(labels, w0=10.0, sigma=5.0, class_weights=None)
    assert w.dtype == np.float32
    # (2, 5): 3 pixels from both objects -> 1 + 10 exp(-(3 + 3)^2 / (2 * 25))
    assert w[2, 5] == pytest.approx(1 + 10 * math.exp(-36 / 50), rel=1e-6)
    # (0, 5): sqrt(9 + 4) from both -> 1 + 10 exp(-(2 sqrt 13)^2 / 50) = 1 + 10 exp(-52 / 50)
    assert w[0, 5] == pytest.approx(1 + 10 * math.exp(-52 / 50), rel=1e-6)
    # (2, 0): 2 from object 1, 8 from object 2 -> 1 + 10 exp(-100 / 50)
    assert w[2, 0] == pytest.approx(1 + 10 * math.exp(-2), rel=1e-6)
    assert w[2, 2] == 1.0  # the objects' own (interior) pixels get w_c only
    balanced = instance_weight_map(labels, class_weights="balanced")
    # 53 background and 2 interior pixels of 55: w_c = 55 / (2 * 53) and 55 / (2 * 2)
    assert balanced[2, 2] == pytest.approx(55 / 4)
    assert balanced[2, 5] == pytest.approx(55 / 106 + 10 * math.exp(-36 / 50), rel=1e-6)


def test_weight_map_separates_touching_objects_on_boundary_pixels() -> None:
    labels = _two_rectangles()
    w = instance_weight_map(labels, class_weights=None)
    # boundary pixel (2, 4) of id 3 touches id 9 at (2, 5): d1 = 0, d2 = 1
    assert w[2, 4] == pytest.approx(1 + 10 * math.exp(-1 / 50), rel=1e-6)
    # corner (1, 1) of id 3: id 9 is 4 columns away, id 70000 at (5, 2) sqrt(17) -> d2 = 4
    assert w[1, 1] == pytest.approx(1 + 10 * math.exp(-16 / 50), rel=1e-6)
    assert w[2, 2] == 1.0 and w[2, 7] == 1.0  # interior
    # a target without boundary class gives boundary pixels no border term
    plain = instance_weight_map(labels, class_weights=None, target=(labels > 0).astype(np.uint8))
    assert plain[2, 4] == 1.0


def test_weight_map_ignores_objects_beyond_the_margin() -> None:
    labels = np.zeros((3, 200), np.int32)
    labels[1, 0] = 1
    labels[1, 199] = 2
    w = instance_weight_map(labels, w0=10.0, sigma=5.0, class_weights=None)
    np.testing.assert_allclose(w, 1.0, atol=1e-3)  # d1 + d2 >= 198: term ~ exp(-784)


def test_weight_map_3d() -> None:
    labels = np.zeros((5, 6, 9), np.int64)
    labels[1:4, 1:5, 1:4] = 5
    labels[1:4, 1:5, 4:8] = 6
    w = instance_weight_map(labels, class_weights=None)
    assert w.shape == labels.shape and w.dtype == np.float32
    assert w[2, 2, 3] == pytest.approx(1 + 10 * math.exp(-1 / 50), rel=1e-6)


def test_distance_target_peaks_at_one_per_object() -> None:
    labels = _two_rectangles()
    dist = distance_target(labels)
    assert dist.dtype == np.float32 and (dist[labels == 0] == 0).all()
    maxima = ndimage.maximum(dist, labels, [3, 9, 70000])
    np.testing.assert_array_equal(maxima, [1.0, 1.0, 1.0])
    assert dist[2, 2] == 1.0 and dist[1, 1] == 0.5  # depth 2 at the centre row, 1 on the outline


def test_distance_target_3d() -> None:
    labels = _voronoi((20, 20, 20), 6, seed=1)
    dist = distance_target(labels)
    ids = np.unique(labels[labels > 0])
    np.testing.assert_allclose(ndimage.maximum(dist, labels, ids), 1.0)
    assert ((dist > 0) == (labels > 0)).all() and dist.max() <= 1.0


def test_distance_class_target_by_hand() -> None:
    labels = np.zeros((9, 17), np.int32)
    labels[1:8, 1:8] = 4  # 7x7: depths 1..4 ring by ring, normalised 0.25, 0.5, 0.75, 1: each on a bin edge
    labels[2:7, 10:15] = 2  # 5x5: depths 1..3, normalised 1/3, 2/3, 1
    ring7 = np.array([
        [1, 1, 1, 1, 1, 1, 1],
        [1, 2, 2, 2, 2, 2, 1],
        [1, 2, 3, 3, 3, 2, 1],
        [1, 2, 3, 4, 3, 2, 1],
        [1, 2, 3, 3, 3, 2, 1],
        [1, 2, 2, 2, 2, 2, 1],
        [1, 1, 1, 1, 1, 1, 1],
    ])
    ring5 = np.array([
        [2, 2, 2, 2, 2],
        [2, 3, 3, 3, 2],
        [2, 3, 4, 3, 2],
        [2, 3, 3, 3, 2],
        [2, 2, 2, 2, 2],
    ])
    expected = np.zeros(labels.shape, np.uint8)
    expected[1:8, 1:8] = ring7  # a depth on an edge stays in the lower bin: (k-1)/K < d <= k/K
    expected[2:7, 10:15] = ring5  # 1/3 lies in (1/4, 1/2]: a shallow object skips bin 1, keeps its centre
    target = distance_class_target(labels, bins=4)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target, expected)
    np.testing.assert_array_equal(distance_class_target(labels), distance_class_target(labels, DISTANCE_BINS))
    np.testing.assert_array_equal(instance_target(labels, "distance"), distance_class_target(labels))
    np.testing.assert_array_equal(instance_target(labels, "three_class"), three_class_target(labels))
    with pytest.raises(ConfigError):
        distance_class_target(labels, bins=0)
    with pytest.raises(ConfigError):
        instance_target(labels, "watershed")


def test_distance_classes_keep_every_object_pixel_and_centre() -> None:
    for labels in (_voronoi((40, 40), 12, seed=2), _voronoi((16, 18, 20), 5, seed=3)):
        target = distance_class_target(labels)
        assert ((target > 0) == (labels > 0)).all() and target.max() <= DISTANCE_BINS
        ids = np.unique(labels[labels > 0])
        np.testing.assert_array_equal(ndimage.maximum(target, labels, ids), DISTANCE_BINS)
    one_pixel = np.zeros((3, 3), np.int32)
    one_pixel[1, 1] = 7
    assert distance_class_target(one_pixel)[1, 1] == DISTANCE_BINS  # depth 1 of 1: its own centre


def test_weight_map_of_the_distance_target_keeps_the_3_class_border_term() -> None:
    labels = _two_rectangles()
    target = distance_class_target(labels)
    interior = three_class_target(labels) == INTERIOR
    w = instance_weight_map(labels, class_weights=None, target=target, interior=interior)
    np.testing.assert_allclose(w, instance_weight_map(labels, class_weights=None))
    balanced = instance_weight_map(labels, target=target, interior=interior)
    # w_c is balanced over the distance classes: total / (classes present * count of the pixel's class)
    values, counts = np.unique(target, return_counts=True)
    w_c = (target.size / (len(values) * counts))[np.searchsorted(values, target)]
    np.testing.assert_allclose(balanced - w_c, w - 1.0, atol=1e-5)
    with pytest.raises(DataError):
        instance_weight_map(labels, interior=np.zeros((2, 2), bool))


def test_instance_labels_of_each_target() -> None:
    three, dist = InstanceLabels(), InstanceLabels("distance")
    assert three.num_classes == 3 and three.config_values() == [0, 1, 2]
    assert dist.num_classes == 1 + DISTANCE_BINS and dist.config_values() == list(range(1 + DISTANCE_BINS))
    assert three != dist and dist == InstanceLabels("distance")
    with pytest.raises(ConfigError):
        InstanceLabels("watershed")


def test_empty_image_and_bad_input() -> None:
    empty = np.zeros((4, 5), np.uint8)
    assert not three_class_target(empty).any() and not distance_target(empty).any()
    np.testing.assert_allclose(instance_weight_map(empty), 1.0)
    with pytest.raises(DataError):
        three_class_target(np.zeros((4, 5), np.float32))
    with pytest.raises(DataError):
        three_class_target(-np.ones((4, 5), np.int32))
    with pytest.raises(ConfigError):
        three_class_target(empty, boundary_width=0)
    with pytest.raises(ConfigError):
        instance_weight_map(empty, sigma=0)
    with pytest.raises(ConfigError):
        instance_weight_map(empty, class_weights="inverse")
    with pytest.raises(DataError):
        instance_weight_map(empty, target=np.zeros((4, 4), np.uint8))
