"""Metrics on numpy label arrays: per-class overlap and surface metrics (:mod:`.semantic`) and object-level
instance metrics (:mod:`.instances`). ``unetseg.metrics.dice`` etc. are the stable API."""

from __future__ import annotations

from unetseg.metrics.instances import (
    aggregated_jaccard_index,
    average_precision,
    dsb_score,
    f1_score,
    instance_metrics,
    match_objects,
    panoptic_quality,
)
from unetseg.metrics.semantic import (
    compute_metrics,
    confusion_matrix,
    dice,
    hd95,
    instances_from_membranes,
    iou,
    mean_surface_distance,
    pixel_error,
    precision,
    rand_error,
    recall,
    surface_distances,
)

__all__ = [
    "aggregated_jaccard_index", "average_precision", "dsb_score", "f1_score", "instance_metrics",
    "match_objects", "panoptic_quality",
    "compute_metrics", "confusion_matrix", "dice", "hd95", "instances_from_membranes", "iou",
    "mean_surface_distance", "pixel_error", "precision", "rand_error", "recall", "surface_distances",
]
