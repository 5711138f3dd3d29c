"""Instance metrics on hand-worked tiny label images; expected numbers derived in the comments.

Thresholds of the DSB score: 0.5, 0.55, ..., 0.95 (ten). IoUs below are chosen away from them.
"""

from __future__ import annotations

import numpy as np
import pytest

from unetseg.errors import DataError
from unetseg.metrics.instances import (
    aggregated_jaccard_index,
    average_precision,
    dsb_score,
    f1_score,
    instance_metrics,
    match_objects,
    panoptic_quality,
)


def row(*ids: int) -> np.ndarray:
    """A 2D label image of one row."""
    return np.array([ids], np.int32)


def check(pred: np.ndarray, true: np.ndarray, expected: dict[str, float]) -> None:
    got = instance_metrics(pred, true)
    assert set(got) == {"dsb", "ap50", "f1_50", "pq", "sq", "rq", "aji", "n_true", "n_pred"}
    assert got == pytest.approx(expected, abs=1e-9)
    # the single-metric functions agree with the combined one
    assert dsb_score(pred, true) == pytest.approx(expected["dsb"])
    assert average_precision(pred, true) == pytest.approx(expected["ap50"])
    assert f1_score(pred, true) == pytest.approx(expected["f1_50"])
    assert panoptic_quality(pred, true) == pytest.approx((expected["pq"], expected["sq"], expected["rq"]))
    assert aggregated_jaccard_index(pred, true) == pytest.approx(expected["aji"])


ALL_ONE = {"dsb": 1.0, "ap50": 1.0, "f1_50": 1.0, "pq": 1.0, "sq": 1.0, "rq": 1.0, "aji": 1.0}
ALL_ZERO = {"dsb": 0.0, "ap50": 0.0, "f1_50": 0.0, "pq": 0.0, "sq": 0.0, "rq": 0.0, "aji": 0.0}


def test_perfect_prediction_with_other_ids() -> None:
    true = row(0, 1, 1, 0, 2, 2, 2, 0)
    pred = row(0, 7, 7, 0, 3, 3, 3, 0)  # ids need not agree, only the objects
    check(pred, true, {**ALL_ONE, "n_true": 2, "n_pred": 2})


def test_one_object_missed() -> None:
    true = row(1, 1, 1, 1, 0, 2, 2, 2, 2)
    pred = row(5, 5, 5, 5, 0, 0, 0, 0, 0)
    # every threshold: TP 1, FP 0, FN 1 -> 1/2; F1 = 2/(2+0+1); SQ 1, RQ = 1/(1 + 0.5) = 2/3
    # AJI: object 1 pairs with 5 (I 4, U 4); object 2 overlaps nothing, its 4 pixels join U -> 4/8
    check(pred, true, {"dsb": 0.5, "ap50": 0.5, "f1_50": 2 / 3, "pq": 2 / 3, "sq": 1.0, "rq": 2 / 3,
                       "aji": 0.5, "n_true": 2, "n_pred": 1})


def test_two_true_objects_merged_into_one_prediction() -> None:
    true = row(1, 1, 1, 1, 1, 2, 2, 2)  # 5 + 3 pixels, touching
    pred = row(4, 4, 4, 4, 4, 4, 4, 4)  # one object of 8
    # IoU(1, 4) = 5/8 = 0.625, IoU(2, 4) = 3/8. Match at t = 0.5, 0.55, 0.6: TP 1, FP 0, FN 1 -> 1/2;
    # at the other 7 thresholds TP 0 -> 0. DSB = 3 * 0.5 / 10 = 0.15.
    # F1 = 2/(2 + 0 + 1); SQ = 0.625, RQ = 1/(1 + 0 + 0.5) = 2/3, PQ = 0.625 * 2/3
    # AJI: both true objects pick 4: I = 5 + 3, U = 8 + 8 -> 0.5
    check(pred, true, {"dsb": 0.15, "ap50": 0.5, "f1_50": 2 / 3, "pq": 0.625 * 2 / 3, "sq": 0.625,
                       "rq": 2 / 3, "aji": 0.5, "n_true": 2, "n_pred": 1})


def test_one_true_object_split_in_two() -> None:
    true = row(0, 3, 3, 3, 3, 3, 3, 3, 3, 0)  # 8 pixels
    pred = row(0, 1, 1, 1, 1, 1, 2, 2, 2, 0)  # 5 + 3 pixels
    # IoU(3, 1) = 5/8: matched at 3 thresholds with TP 1, FP 1, FN 0 -> 1/2; DSB 0.15.
    # F1 = 2/(2 + 1 + 0); SQ 0.625, RQ = 1/(1 + 0.5) = 2/3.
    # AJI: 3 pairs with 1 (I 5, U 8); 2 is never chosen, its 3 pixels join U -> 5/11
    check(pred, true, {"dsb": 0.15, "ap50": 0.5, "f1_50": 2 / 3, "pq": 0.625 * 2 / 3, "sq": 0.625,
                       "rq": 2 / 3, "aji": 5 / 11, "n_true": 1, "n_pred": 2})


def test_empty_prediction() -> None:
    check(np.zeros((1, 6), np.uint8), row(1, 1, 0, 2, 2, 0), {**ALL_ZERO, "n_true": 2, "n_pred": 0})


def test_empty_truth() -> None:
    check(row(0, 1, 1, 0, 0, 0), np.zeros((1, 6), np.uint16), {**ALL_ZERO, "n_true": 0, "n_pred": 1})


def test_both_empty() -> None:
    empty = np.zeros((3, 4), np.int64)
    check(empty, empty, {**ALL_ONE, "n_true": 0, "n_pred": 0})


def test_threshold_is_strict_and_tunable() -> None:
    true = row(1, 1, 1, 1, 0, 0)
    pred = row(0, 1, 1, 1, 0, 0)  # IoU 3/4
    assert average_precision(pred, true, threshold=0.7) == 1.0
    assert average_precision(pred, true, threshold=0.8) == 0.0  # TP 0, FP 1, FN 1 -> 0
    assert f1_score(pred, true, threshold=0.8) == 0.0


def test_3d_and_no_background() -> None:
    true = np.zeros((2, 3, 4), np.uint32)
    true[:, :, 2:] = 9  # two objects of 12 voxels and no background at all
    true[:, :, :2] = 2**32 - 1
    pred = true.copy()
    pred[0, 0, 0] = 9  # IoU of the big ids: 11/12; of the 9s: 12/13
    got = instance_metrics(pred, true)
    # all IoUs > 0.9 -> TP at every threshold but 0.95: DSB = 9/10
    assert got["dsb"] == pytest.approx(0.9) and got["ap50"] == 1.0
    assert got["sq"] == pytest.approx((11 / 12 + 12 / 13) / 2)
    assert got["aji"] == pytest.approx((11 + 12) / (12 + 13))


def test_match_objects_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, (12, 13))
    pred = rng.integers(0, 4, (12, 13)) * 3
    m = match_objects(pred, true)
    np.testing.assert_array_equal(m.true_ids, [1, 2, 3, 4])
    np.testing.assert_array_equal(m.pred_ids, [3, 6, 9])
    dense = np.zeros((m.n_true, m.n_pred))
    dense[m.pair_true, m.pair_pred] = m.iou
    for i, t in enumerate(m.true_ids):
        for j, p in enumerate(m.pred_ids):
            a, b = true == t, pred == p
            assert dense[i, j] == pytest.approx((a & b).sum() / (a | b).sum())


def test_bad_input() -> None:
    with pytest.raises(DataError):
        instance_metrics(np.zeros((2, 3), np.int32), np.zeros((3, 2), np.int32))
    with pytest.raises(DataError):
        instance_metrics(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int32))
    with pytest.raises(DataError):
        instance_metrics(-np.ones((2, 3), np.int32), np.zeros((2, 3), np.int32))
