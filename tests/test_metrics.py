"""Metrics against hand-worked examples, including the empty cases, spacing and 3D."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetseg import metrics as m

# Pixels (pred, truth): (0,0) (1,1) (1,0) / (0,0) (0,2) (2,2); class 3 appears in neither.
PRED = np.array([[0, 1, 1], [0, 0, 2]])
TRUE = np.array([[0, 1, 0], [0, 2, 2]])


def test_overlap_metrics_by_hand():
    # class 0: TP 2, FP 1 (pred 0 / truth 2), FN 1 (pred 1 / truth 0)
    # class 1: TP 1, FP 1, FN 0;   class 2: TP 1, FP 0, FN 1;   class 3: empty in both
    np.testing.assert_allclose(m.dice(PRED, TRUE, 4), [4 / 6, 2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(m.iou(PRED, TRUE, 4), [2 / 4, 1 / 2, 1 / 2, 1.0])
    np.testing.assert_allclose(m.precision(PRED, TRUE, 4), [2 / 3, 1 / 2, 1.0, 1.0])
    np.testing.assert_allclose(m.recall(PRED, TRUE, 4), [2 / 3, 1.0, 1 / 2, 1.0])
    cm = m.confusion_matrix(PRED, TRUE, 4)  # rows truth, columns prediction
    np.testing.assert_array_equal(cm[:3, :3], [[2, 1, 0], [0, 1, 0], [1, 0, 1]])


def test_empty_cases():
    empty = np.zeros((4, 4), int)
    some = empty.copy()
    some[1, 1] = 1
    # class 1 predicted, truth empty: dice 0, precision 0 (TP 0 of 1), recall 0 (something predicted)
    out = m.compute_metrics(some, empty, 2)
    assert out["dice"][1] == 0 and out["iou"][1] == 0 and out["precision"][1] == 0 and out["recall"][1] == 0
    assert out["hd95"][1] == np.inf and out["msd"][1] == np.inf
    # class 1 in the truth, nothing predicted: precision 0 (truth not empty), recall 0
    out = m.compute_metrics(empty, some, 2)
    assert out["precision"][1] == 0 and out["recall"][1] == 0 and out["hd95"][1] == np.inf
    # both empty: everything perfect
    out = m.compute_metrics(empty, empty, 2)
    assert out["dice"][1] == out["iou"][1] == out["precision"][1] == out["recall"][1] == 1.0
    assert out["hd95"][1] == 0.0 and out["msd"][1] == 0.0


def test_dice_matches_direct_formula_on_random_3d_arrays():
    rng = np.random.default_rng(1)
    pred, true = rng.integers(0, 3, (6, 7, 8)), rng.integers(0, 3, (6, 7, 8))
    for c, value in enumerate(m.dice(pred, true, 3)):
        p, t = pred == c, true == c
        assert value == pytest.approx(2 * (p & t).sum() / (p.sum() + t.sum()))
        assert m.iou(pred, true, 3)[c] == pytest.approx((p & t).sum() / (p | t).sum())


def line_plus_outlier():
    """Truth: a 10-pixel line on row 0. Prediction: the same line plus one pixel 10 rows below."""
    true = np.zeros((12, 10), int)
    true[0, :] = 1
    pred = true.copy()
    pred[10, 0] = 1
    return pred, true


def test_hd95_and_msd_by_hand():
    pred, true = line_plus_outlier()
    # pred surface -> truth: ten 0s and one 10; 95th percentile (linear): rank 0.95 * 10 = 9.5 -> (0 + 10) / 2
    # truth surface -> pred: ten 0s -> 0.   HD95 = max(5, 0) = 5 (pooling both sets as MedPy would give 0)
    assert m.hd95(pred, true, 2)[1] == pytest.approx(5.0)
    assert m.mean_surface_distance(pred, true, 2)[1] == pytest.approx(10 / 21)  # (10 + 0) / (11 + 10)
    # rows 2 units apart: the outlier is 20 away
    assert m.hd95(pred, true, 2, spacing=(2.0, 1.0))[1] == pytest.approx(10.0)
    assert m.mean_surface_distance(pred, true, 2, spacing=(2.0, 1.0))[1] == pytest.approx(20 / 21)
    assert m.hd95(pred, true, 2, spacing=(1.0, 3.0))[1] == pytest.approx(5.0)  # columns don't matter here


def test_hd95_3d_with_spacing():
    pred, true = np.zeros((4, 4, 8), int), np.zeros((4, 4, 8), int)
    true[1:3, 1:3, 1:3] = 1
    pred[1:3, 1:3, 4:6] = 1  # the same 2x2x2 cube moved 3 voxels along x
    # all 8 voxels of a 2-cube are surface; the nearest partner lies along x: 2 voxels away for the facing
    # halves (x = 2 <-> 4), 3 for the others. Each direction: four 2s and four 3s.
    # 95th percentile: rank 0.95 * 7 = 6.65 between two 3s -> 3; mean 2.5
    assert m.hd95(pred, true, 2)[1] == pytest.approx(3.0)
    assert m.mean_surface_distance(pred, true, 2)[1] == pytest.approx(2.5)
    assert m.hd95(pred, true, 2, spacing=(1.0, 1.0, 0.5))[1] == pytest.approx(1.5)
    assert m.mean_surface_distance(pred, true, 2, spacing=(5.0, 5.0, 0.5))[1] == pytest.approx(1.25)
    with pytest.raises(ValueError, match="spacing"):
        m.hd95(pred, true, 2, spacing=(1.0, 1.0))


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(2)
    blobs = [ndimage.uniform_filter(rng.random((20, 24)), 4) > 0.5 for _ in range(2)]
    pred, true = blobs[0].astype(int), blobs[1].astype(int)
    spacing = (1.5, 0.7)

    def points(mask):
        surface = mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(2, 1))
        return np.argwhere(surface) * spacing

    for c in (0, 1):
        a, b = points(pred == c), points(true == c)
        d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
        ab, ba = d.min(1), d.min(0)
        expected_hd = max(np.percentile(ab, 95), np.percentile(ba, 95))
        assert m.hd95(pred, true, 2, spacing)[c] == pytest.approx(expected_hd)
        expected_msd = (ab.sum() + ba.sum()) / (ab.size + ba.size)
        assert m.mean_surface_distance(pred, true, 2, spacing)[c] == pytest.approx(expected_msd)


def test_identical_masks_have_zero_distance():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, (5, 6, 7))
    out = m.compute_metrics(labels, labels, 3)
    for key in ("dice", "iou", "precision", "recall"):
        np.testing.assert_array_equal(out[key], 1.0)
    np.testing.assert_array_equal(out["hd95"], 0.0)
    np.testing.assert_array_equal(out["msd"], 0.0)
    assert set(m.compute_metrics(labels, labels, 3, hd=False)) == {"dice", "iou", "precision", "recall"}


def test_rand_error_identical_and_relabelled():
    true = np.array([[1, 1, 0, 2], [1, 1, 0, 2], [0, 0, 0, 2]])
    assert m.rand_error(true, true) == 0.0
    assert m.rand_error(np.where(true > 0, true + 7, 0), true) == pytest.approx(0.0)
    # what the prediction says where the truth is 0 is ignored
    assert m.rand_error(np.where(true > 0, true, 5), true) == pytest.approx(0.0)
    assert m.rand_error(true, np.zeros_like(true)) == 0.0  # no truth foreground: nothing to score


def test_rand_error_split_and_merge_by_hand():
    # split: one true object of 4 px predicted as 2 + 2. sum t^2 = 16, sum s^2 = 4 + 4, sum p^2 = 8
    # split score 8/16, merge score 8/8 -> F = 2 * 0.5 / 1.5 = 2/3 -> error 1/3
    true = np.array([[1, 1, 1, 1, 0]])
    assert m.rand_error(np.array([[1, 1, 2, 2, 0]]), true) == pytest.approx(1 / 3)
    # merge: two true objects of 2 px predicted as one: sum t^2 = 8, sum s^2 = 16, sum p^2 = 8 -> error 1/3
    assert m.rand_error(np.array([[3, 3, 3, 3, 0]]), np.array([[1, 1, 2, 2, 0]])) == pytest.approx(1 / 3)
    # both: truth A = 4 px, B = 1 px; prediction splits A as 3 + 1 and merges that 1 with B
    # table rows A [3, 1], B [0, 1]: sum t^2 = 16 + 1 = 17, sum s^2 = 9 + 4 = 13, sum p^2 = 9 + 1 + 1 = 11
    # split 11/17, merge 11/13 -> F = 2 * 121/221 / (330/221) = 242/330 -> error 88/330
    pred = np.array([[1, 1, 1, 2, 2, 0]])
    true = np.array([[1, 1, 1, 1, 2, 0]])
    assert m.rand_error(pred, true) == pytest.approx(88 / 330)


def test_rand_error_unassigned_prediction_pixels():
    # a 4-px true object, predicted 2 px as segment 1 and 2 px as 0 (unassigned); n = 8 pixels in all
    # reference code: sum t^2 = 16, sum s^2 = 4 + 2/8, sum p^2 = 4 + 2/8 -> split 4.25/16, merge 1
    true = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])
    pred = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    split = 4.25 / 16
    assert m.rand_error(pred, true) == pytest.approx(1 - 2 * split / (split + 1))


def test_instances_from_membranes_and_pixel_error():
    mask = np.array([[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 1]])
    labels = m.instances_from_membranes(mask)
    assert labels.max() == 4 and (labels[mask == 0] == 0).all()
    assert len(np.unique(labels[:2, :2])) == 1 and labels[0, 0] != labels[0, 3]
    assert m.rand_error(labels, labels) == 0.0
    other = mask.copy()
    other[0, 2] = 1  # one membrane pixel lost: the two top cells merge
    assert m.pixel_error(other, mask) == pytest.approx(1 / 16)
    assert m.rand_error(m.instances_from_membranes(other), labels) > 0.1
    assert m.instances_from_membranes(mask, membrane_class=1).max() == 1  # the membrane grid is one piece


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        m.dice(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        m.iou(np.full((2, 2), 2), np.zeros((2, 2), int), 2)
