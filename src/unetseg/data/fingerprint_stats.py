"""The accumulators of one fingerprint pass (:mod:`unetseg.data.fingerprint`): exact intensity moments and
sampled percentiles per channel, class coverage and connected objects per class."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage.measure import label as label_components

SAMPLES_PER_CASE = 10_000
PERCENTILES = (0.5, 50.0, 99.5)
_CHUNK = 1 << 22  # voxels per float64 chunk of the exact moments (bounds the temporary memory)


def _combine(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Merge (count, mean, sum of squared deviations) of two parts (Chan et al.'s parallel variance)."""
    n = a[0] + b[0]
    if n == 0:
        return 0, 0.0, 0.0
    delta = b[1] - a[1]
    return n, a[1] + delta * b[0] / n, a[2] + b[2] + delta * delta * a[0] * b[0] / n


def _moments(x: np.ndarray) -> tuple[int, float, float]:
    """Exact float64 (count, mean, M2) of ``x``, in chunks so the float64 copy stays small."""
    flat, acc = x.ravel(), (0, 0.0, 0.0)
    for start in range(0, flat.size, _CHUNK):
        c = flat[start : start + _CHUNK].astype(np.float64)
        m = float(c.mean())
        acc = _combine(acc, (c.size, m, float(np.square(c - m).sum())))
    return acc


class _Intensity:
    """Running statistics of one channel over a set of voxels (all, or the foreground)."""

    def __init__(self) -> None:
        self.moments: tuple[int, float, float] = (0, 0.0, 0.0)
        self.lo, self.hi = np.inf, -np.inf
        self.samples: list[np.ndarray] = []

    def add(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        """Add one case's voxels; returns its sample (None when it has none)."""
        if values.size == 0:
            return None
        self.moments = _combine(self.moments, _moments(values))
        self.lo, self.hi = min(self.lo, float(values.min())), max(self.hi, float(values.max()))
        sample = values[rng.integers(0, values.size, SAMPLES_PER_CASE)]
        self.samples.append(sample)
        return sample

    def summary(self) -> dict[str, Any]:
        n, mean, m2 = self.moments
        if n == 0:
            empty = dict.fromkeys(("mean", "std", "min", "max", "p0.5", "median", "p99.5"))
            return empty | {"voxels": 0}
        p_lo, med, p_hi = np.percentile(np.concatenate(self.samples), PERCENTILES)
        return {
            "mean": mean,
            "std": float(np.sqrt(m2 / n)),
            "min": self.lo,
            "max": self.hi,
            "p0.5": float(p_lo),
            "median": float(med),
            "p99.5": float(p_hi),
            "voxels": n,
        }


def _value_counts(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts (a histogram for 8/16-bit arrays)."""
    if arr.dtype in (np.uint8, np.uint16, np.bool_):
        counts = np.bincount(arr.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(arr, return_counts=True)


def _objects(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face-connected components of equal non-zero value: (value, size in voxels, extent per axis) each."""
    comp = label_components(labels, background=0, connectivity=1)
    n = int(comp.max())
    if n == 0:
        return np.zeros(0, labels.dtype), np.zeros(0, np.int64), np.zeros((0, labels.ndim), np.int64)
    sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    value = np.zeros(n + 1, labels.dtype)
    value[comp.ravel()] = labels.ravel()  # every voxel of a component holds its value: any one will do
    extents = np.array([[s.stop - s.start for s in box] for box in ndimage.find_objects(comp)])
    return value[1:], sizes, extents


class _Classes:
    """Voxel counts, case counts and objects per class key (a mask value, or a class index of a map)."""

    def __init__(self) -> None:
        self.voxels: dict[float, int] = {}
        self.cases: dict[float, int] = {}
        self.sizes: dict[float, list[np.ndarray]] = {}
        self.volumes: dict[float, list[np.ndarray]] = {}
        self.extents: dict[float, list[np.ndarray]] = {}

    def add(self, labels: np.ndarray, voxel_volume: float, objects: np.ndarray | None = None) -> None:
        """Count ``labels``; objects are its connected regions, or the ids of an instance image
        ``objects`` (all under class 1)."""
        for v, c in zip(*_value_counts(labels), strict=True):
            key = float(v)
            self.voxels[key] = self.voxels.get(key, 0) + int(c)
            self.cases[key] = self.cases.get(key, 0) + 1
        values, sizes, extents = _objects(labels if objects is None else objects)
        if objects is not None:
            values = (values > 0).astype(values.dtype)
        for v in np.unique(values[values > 0]):
            pick = values == v
            key = float(v)
            self.sizes.setdefault(key, []).append(sizes[pick])
            self.volumes.setdefault(key, []).append(sizes[pick] * voxel_volume)
            self.extents.setdefault(key, []).append(extents[pick])

    def object_stats(self, key: float) -> dict[str, Any]:
        if key not in self.sizes:
            return {"count": 0} | dict.fromkeys(
                (
                    "median_voxels",
                    "p10_voxels",
                    "min_voxels",
                    "max_voxels",
                    "median_volume",
                    "p10_volume",
                    "median_extent",
                )
            )
        sizes, volumes = np.concatenate(self.sizes[key]), np.concatenate(self.volumes[key])
        return {
            "count": int(sizes.size),
            "median_voxels": float(np.median(sizes)),
            "p10_voxels": float(np.percentile(sizes, 10)),
            "min_voxels": int(sizes.min()),
            "max_voxels": int(sizes.max()),
            "median_volume": float(np.median(volumes)),
            "p10_volume": float(np.percentile(volumes, 10)),
            "median_extent": np.median(np.concatenate(self.extents[key]), axis=0).tolist(),
        }


# ---------------------------------------------------------------------------------------------- the pass
