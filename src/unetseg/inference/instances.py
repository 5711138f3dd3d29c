"""Instance models at prediction time: objects from the predicted 3-class map (background, interior,
boundary) or distance bins (``data.instance_target``) by seeded watershed
(:mod:`unetseg.postprocess.instances`), with the options of ``infer``, and the files an instance
prediction writes: ``<stem>.tif`` (uint16 ids, uint32 when needed) and
``<stem>_objects.csv`` (one row per object: id, area, centroid, bounding box, mean intensity per channel).

The watershed runs on the blended probabilities of the whole image, so objects cut by tile borders are
one object: there are no seams to stitch in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypedDict

import numpy as np
from typing_extensions import Unpack

from unetseg.config import Config
from unetseg.fileio import write_text
from unetseg.postprocess.instances import instances_from_distance_classes, instances_from_three_class
from unetseg.postprocess.objects import object_table, table_to_csv_text


class FloatOptions(TypedDict, total=False):
    """The watershed's options that are numbers in (0, 1) (those validation calibrates)."""

    foreground_threshold: float
    interior_threshold: float
    distance_h: float


@dataclass(frozen=True)
class Watershed:
    """How an instance model's probabilities become objects: the ``infer`` options it was validated with
    (its own small value, so trying other values never touches a Config)."""

    target: str = "three_class"
    foreground_threshold: float = 0.5
    interior_threshold: float = 0.5
    distance_h: float = 0.2
    min_object_size: int = 10

    @classmethod
    def of(cls, config: Config) -> Watershed:
        i = config.infer
        return cls(config.data.instance_target, i.foreground_threshold, i.interior_threshold, i.distance_h,
                   i.min_object_size)

    def but(self, **values: Unpack[FloatOptions]) -> Watershed:
        """The same watershed with some options changed."""
        return replace(self, **values)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """Object ids (1..N, 0 background) from the model's ``(classes, *spatial)`` probabilities: 3 for
        the 3-class target, 1 + the bins for the distance target."""
        if self.target == "distance":
            return instances_from_distance_classes(probs, h=self.distance_h, min_size=self.min_object_size,
                                                   foreground_threshold=self.foreground_threshold)
        return instances_from_three_class(probs, interior_threshold=self.interior_threshold,
                                          foreground_threshold=self.foreground_threshold,
                                          min_size=self.min_object_size)


def instances_of(probs: np.ndarray, config: Config) -> np.ndarray:
    """Object ids by the watershed ``config`` describes (:class:`Watershed`)."""
    return Watershed.of(config)(probs)


def write_objects_csv(path: Path, labels: np.ndarray, image: np.ndarray | None,
                      spacing: tuple[float, ...] | None) -> Path:
    """The per-object table (``skimage.measure.regionprops_table``) as CSV, written atomically."""
    return write_text(path, table_to_csv_text(object_table(labels, image, spacing)))
