"""Object-level metrics between a predicted and a true instance label image (2D or 3D, 0 = background).

All metrics come from one sparse contingency table of paired (true id, predicted id) pixels, never from
per-object masks. A true and a predicted object "match at t" when their IoU > t; for t >= 0.5 a match is
necessarily unique on both sides, so no assignment problem has to be solved. Counts at a threshold: TP =
matches, FP = predicted objects without a match, FN = true objects without a match.

Empty cases are defined, never dropped: when both images have no object every score is 1.0; when exactly
one is empty every score is 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from unetseg.errors import ConfigError, DataError

DSB_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class ObjectOverlaps:
    """The non-zero part of the IoU matrix between true and predicted objects.

    ``true_ids``/``pred_ids`` are the object ids present (sorted), ``true_areas``/``pred_areas`` their pixel
    counts. ``pair_true``/``pair_pred`` index into them for every overlapping pair, with its
    ``intersection`` (pixels) and ``iou``.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_areas: np.ndarray
    pred_areas: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray

    @property
    def n_true(self) -> int:
        return len(self.true_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)

    def true_positives(self, threshold: float) -> int:
        """Number of matches at IoU > ``threshold`` (unique when ``threshold >= 0.5``)."""
        if threshold < 0.5:
            raise ConfigError(f"threshold={threshold}: matches by IoU are unique only for thresholds >= 0.5")
        return int(np.count_nonzero(self.iou > threshold))


def _check_labels(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise DataError(f"instance metrics: prediction shape {pred.shape} != truth shape {true.shape}")
    for name, a in (("prediction", pred), ("truth", true)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == bool):
            raise DataError(f"instance metrics: {name} must hold integer ids, got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise DataError(f"instance metrics: {name} has negative ids")
    return pred.ravel(), true.ravel()


def match_objects(pred: np.ndarray, true: np.ndarray) -> ObjectOverlaps:
    """IoUs of every overlapping (true, predicted) object pair from one sparse contingency table."""
    pred, true = _check_labels(pred, true)
    true_values, true_index = np.unique(true, return_inverse=True)
    pred_values, pred_index = np.unique(pred, return_inverse=True)
    # Index 0 is background when the image has any, so that row/column is dropped below.
    table = sparse.coo_matrix((np.ones(true.size, np.int64), (true_index.ravel(), pred_index.ravel())),
                              shape=(len(true_values), len(pred_values))).tocsr()
    areas_true = np.asarray(table.sum(axis=1)).ravel()
    areas_pred = np.asarray(table.sum(axis=0)).ravel()
    t0 = int(true_values.size > 0 and true_values[0] == 0)
    p0 = int(pred_values.size > 0 and pred_values[0] == 0)
    objects = table[t0:, p0:].tocoo()
    rows, cols, inter = objects.row, objects.col, objects.data.astype(np.int64)
    areas_true, areas_pred = areas_true[t0:], areas_pred[p0:]
    iou = inter / (areas_true[rows] + areas_pred[cols] - inter)
    order = np.lexsort((cols, rows))
    return ObjectOverlaps(true_values[t0:], pred_values[p0:], areas_true, areas_pred,
                          rows[order], cols[order], inter[order], iou[order])


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` with 0/0 = 1.0: nothing to find and nothing found is perfect."""
    return 1.0 if denominator == 0 else float(numerator / denominator)


def _ap(m: ObjectOverlaps, threshold: float) -> float:
    tp = m.true_positives(threshold)
    return _ratio(tp, m.n_true + m.n_pred - tp)


def dsb_score(pred: np.ndarray, true: np.ndarray) -> float:
    """2018 Data Science Bowl score: mean over t = 0.5, 0.55, ..., 0.95 of TP(t) / (TP(t) + FP(t) + FN(t))."""
    m = match_objects(pred, true)
    return float(np.mean([_ap(m, t) for t in DSB_THRESHOLDS]))


def average_precision(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> float:
    """TP / (TP + FP + FN) at one IoU threshold.

    This is the "AP" of the DSB 2018 and StarDist papers (strictly a critical success index), not the area
    under a precision-recall curve: instance label images carry no scores to rank by.
    """
    return _ap(match_objects(pred, true), threshold)


def f1_score(pred: np.ndarray, true: np.ndarray, threshold: float = 0.5) -> float:
    """Object F1 at one IoU threshold: 2 TP / (2 TP + FP + FN)."""
    m = match_objects(pred, true)
    tp = m.true_positives(threshold)
    return _ratio(2 * tp, m.n_true + m.n_pred)


def _pq(m: ObjectOverlaps) -> tuple[float, float, float]:
    if m.n_true == 0 and m.n_pred == 0:
        return 1.0, 1.0, 1.0
    matched = m.iou > 0.5
    tp = int(np.count_nonzero(matched))
    if tp == 0:
        return 0.0, 0.0, 0.0
    sq = float(m.iou[matched].mean())
    rq = tp / (tp + 0.5 * (m.n_pred - tp) + 0.5 * (m.n_true - tp))
    return sq * rq, sq, rq


def panoptic_quality(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float]:
    """``(PQ, SQ, RQ)`` of Kirillov et al. 2019 for one class: matches at IoU > 0.5, SQ = mean IoU of the
    matches, RQ = TP / (TP + FP/2 + FN/2), PQ = SQ * RQ. With no match at all (and objects present) SQ is 0.
    """
    return _pq(match_objects(pred, true))


def _aji(m: ObjectOverlaps) -> float:
    # Best predicted object per true object: pairs sorted by true index, then IoU descending, then pred
    # index (ties go to the lower id, like an argmax).
    order = np.lexsort((m.pair_pred, -m.iou, m.pair_true))
    first = np.unique(m.pair_true[order], return_index=True)[1]
    best = order[first]
    inter = int(m.intersection[best].sum())
    union = int((m.true_areas[m.pair_true[best]] + m.pred_areas[m.pair_pred[best]]).sum()) - inter
    unpaired_true = np.ones(m.n_true, bool)
    unpaired_true[m.pair_true[best]] = False
    unused_pred = np.ones(m.n_pred, bool)
    unused_pred[m.pair_pred[best]] = False
    union += int(m.true_areas[unpaired_true].sum() + m.pred_areas[unused_pred].sum())
    return _ratio(inter, union)


def aggregated_jaccard_index(pred: np.ndarray, true: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017).

    Each true object is paired with the predicted object of highest IoU (a predicted object may serve several
    true ones); AJI = sum of paired intersections / (sum of paired unions + areas of true objects that
    overlap nothing + areas of predicted objects never chosen).
    """
    return _aji(match_objects(pred, true))


def instance_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """All instance metrics from one matching: ``dsb, ap50, f1_50, pq, sq, rq, aji, n_true, n_pred``."""
    m = match_objects(pred, true)
    tp50 = m.true_positives(0.5)
    pq, sq, rq = _pq(m)
    return {
        "dsb": float(np.mean([_ap(m, t) for t in DSB_THRESHOLDS])),
        "ap50": _ap(m, 0.5),
        "f1_50": _ratio(2 * tp50, m.n_true + m.n_pred),
        "pq": pq, "sq": sq, "rq": rq,
        "aji": _aji(m),
        "n_true": float(m.n_true),
        "n_pred": float(m.n_pred),
    }
