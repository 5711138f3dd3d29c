"""Reading a case into training arrays, and the in-memory store of one prepared dataset's cases."""

from __future__ import annotations

from typing import Any

import numpy as np

from unetseg.config import DataConfig
from unetseg.data.cases import Case, read_pair
from unetseg.data.labels import ClassMap
from unetseg.data.normalize import Normalizer
from unetseg.errors import DataError

GIB = 2**30


def cache_budget(data_cfg: DataConfig) -> float:
    """Bytes of decoded data kept in memory (``data.cache``: lazy -> 0, memory -> unlimited, auto ->
    ``data.cache_gib``)."""
    return {"lazy": 0.0, "memory": float("inf")}.get(data_cfg.cache, float(data_cfg.cache_gib) * GIB)


def load_case(case: Case, data_cfg: DataConfig, class_map: ClassMap | None, *, compact: bool = False
              ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read, check, normalise and encode one case.

    Returns ``(image (C, *spatial) float32 normalised, labels (*spatial) class indices or None, meta)``;
    labels are None without a mask or without ``class_map``; int64, or the map's compact dtype with
    ``compact``. Raises DataError naming the file.
    """
    raw, mask, meta = read_pair(case, read_labels=class_map is not None,
                                max_bytes=data_cfg.max_image_gib * GIB)
    labels = None
    if mask is not None and class_map is not None:
        labels = class_map.encode(mask, source=case.mask_path,
                                  dtype=class_map.compact_dtype() if compact else np.int64)
    return Normalizer.from_config(data_cfg)(raw), labels, meta


class CaseStore:
    """The decoded, normalised, encoded cases of one dataset, kept in memory up to a byte budget.

    Owned by :class:`~unetseg.data.prepare.PreparedData` (no module-level cache): the sampler and the
    validator read through it, so every case is decoded once. Cases beyond the budget are read again per
    use. DataLoader workers forked after it is filled share its arrays copy-on-write.
    """

    def __init__(self, data_cfg: DataConfig, class_map: ClassMap, budget: float | None = None) -> None:
        self.data_cfg, self.class_map = data_cfg, class_map
        self.budget = cache_budget(data_cfg) if budget is None else float(budget)
        self.items: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
        self.nbytes = 0

    @staticmethod
    def key(case: Case) -> tuple[str, ...]:
        return tuple(str(p) for p in case.image_paths)

    def __contains__(self, case: Case) -> bool:
        return self.key(case) in self.items

    def put(self, case: Case, image: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> bool:
        """Keep a case when the budget allows; True when it is (now) held."""
        key = self.key(case)
        size = image.nbytes + labels.nbytes
        if key not in self.items and self.nbytes + size <= self.budget:
            self.items[key] = (image, labels, meta)
            self.nbytes += size
        return key in self.items

    def get(self, case: Case, *, keep: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``(image, labels in the compact dtype, meta)``: from memory, or read now (and kept when
        ``keep`` and the budget allows)."""
        hit = self.items.get(self.key(case))
        if hit is not None:
            return hit
        image, labels, meta = load_case(case, self.data_cfg, self.class_map, compact=True)
        if labels is None:
            raise DataError(f"{case.image_paths[0]}: no mask (every training case needs one)")
        if keep:
            self.put(case, image, labels, meta)
        return image, labels, meta
