"""The accumulators of one fingerprint pass (:mod:`unetseg.planning.fingerprint`): exact intensity moments and
sampled percentiles per channel, class coverage and connected objects per class."""

from __future__ import annotations

from collections.abc import Sequence
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


class IntensityStats:
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


def value_counts(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts (a histogram for 8/16-bit arrays)."""
    if arr.dtype in (np.uint8, np.uint16, np.bool_):
        counts = np.bincount(arr.ravel())
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(arr, return_counts=True)


def _regions(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, np.ndarray]:
    """Face-connected regions of equal value (0 included), each with its ``value``, ``size`` (voxels),
    ``extent`` (bounding-box side per axis, voxels), ``surface`` (area of the faces it shares with another
    value, in spacing units: the image's own border is not a surface) and ``border`` (touches the image
    border)."""
    comp = label_components(labels.astype(np.int64, copy=False), background=-1, connectivity=1)
    n = int(comp.max())
    flat = comp.ravel()
    size = np.bincount(flat, minlength=n + 1)[1:]
    value = np.zeros(n + 1, labels.dtype)
    value[flat] = labels.ravel()  # every voxel of a region holds its value: any one will do
    boxes = ndimage.find_objects(comp)
    extent = np.array([[b.stop - b.start for b in box] for box in boxes], dtype=np.int64)
    border = np.array([any(b.start == 0 or b.stop == m for b, m in zip(box, comp.shape, strict=True))
                       for box in boxes], dtype=bool)
    surface = np.zeros(n + 1, np.float64)
    voxel = float(np.prod(spacing))
    for axis in range(labels.ndim):
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = comp[tuple(lo)], comp[tuple(hi)]
        cut = a != b
        face = voxel / float(spacing[axis])
        surface += face * (np.bincount(a[cut], minlength=n + 1) + np.bincount(b[cut], minlength=n + 1))
    return {"value": value[1:], "size": size, "extent": extent, "surface": surface[1:], "border": border}


def _weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of ``values`` where each counts ``weights`` times (the value below which
    ``q`` % of the weight lies)."""
    order = np.argsort(values)
    cum = np.cumsum(weights[order], dtype=np.float64)
    return float(values[order][min(int(np.searchsorted(cum, q / 100.0 * cum[-1])), values.size - 1)])


FACES_PER_AREA = {2: 4 / np.pi, 3: 1.5}  # mean |n|_1 / |n|_2 of a boundary's normal, random orientations
# A structure is told from its surroundings within a few of its own widths: a vessel tree or a membrane net
# spans the image but is traced locally; a blob (lesion, organ) needs its whole extent in view.
REACH_WIDTHS = 8.0
OBJECT_KEYS = ("median_voxels", "p10_voxels", "min_voxels", "max_voxels", "median_volume", "p10_volume",
               "median_extent", "p90_extent", "median_extent_share", "p90_extent_share", "border_fraction",
               "median_reach", "median_reach_share")


class ClassStats:
    """Voxel counts, case counts, objects and region thickness per class key (a mask value, or a class
    index of a map)."""

    def __init__(self) -> None:
        self.voxels: dict[float, int] = {}
        self.cases: dict[float, int] = {}
        self.sizes: dict[float, list[np.ndarray]] = {}
        self.volumes: dict[float, list[np.ndarray]] = {}
        self.extents: dict[float, list[np.ndarray]] = {}
        self.shares: dict[float, list[np.ndarray]] = {}
        self.borders: dict[float, list[np.ndarray]] = {}
        self.thick: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {}  # (thickness, voxels) per region
        self.reaches: dict[float, list[np.ndarray]] = {}
        self.reach_shares: dict[float, list[np.ndarray]] = {}

    def add(self, labels: np.ndarray, spacing: Sequence[float], objects: np.ndarray | None = None) -> None:
        """Count ``labels``; objects are its connected regions, or the ids of an instance image
        ``objects`` (all under class 1). Every region (background too) adds its thickness: twice its
        volume over its surface, in spacing units (the width of a band, the radius of a disc; the surface
        counted in voxel faces, corrected by their mean excess over a smooth boundary's area)."""
        for v, c in zip(*value_counts(labels), strict=True):
            key = float(v)
            self.voxels[key] = self.voxels.get(key, 0) + int(c)
            self.cases[key] = self.cases.get(key, 0) + 1
        reg = _regions(labels if objects is None else objects, spacing)
        values = reg["value"]
        if objects is not None:
            values = (values > 0).astype(values.dtype)
        volume = reg["size"] * float(np.prod(spacing))
        side = np.asarray(labels.shape, dtype=np.float64)
        # faces overcount a boundary's true area by 4/pi (2D), 3/2 (3D) on average over its orientations;
        # a region with no surface fills the image: as thick as the image is wide
        whole = FACES_PER_AREA[labels.ndim] * 2.0 * volume / np.maximum(reg["surface"], 1e-12)
        thickness = np.where(reg["surface"] > 0, whole, float(np.max(side * np.asarray(spacing))))
        # how far a region needs to be seen, per axis (voxels): its extent, or REACH_WIDTHS of its widths
        widths = REACH_WIDTHS * thickness[:, None] / np.asarray(spacing, dtype=np.float64)[None, :]
        reach = np.minimum(reg["extent"].astype(np.float64), np.maximum(widths, 1.0))
        for v in np.unique(values):
            pick = values == v
            key = float(v)
            self.thick.setdefault(key, []).append((thickness[pick], reg["size"][pick]))
            if key <= 0:
                continue
            self.sizes.setdefault(key, []).append(reg["size"][pick])
            self.volumes.setdefault(key, []).append(volume[pick])
            self.extents.setdefault(key, []).append(reg["extent"][pick])
            self.shares.setdefault(key, []).append(reg["extent"][pick] / side)
            self.borders.setdefault(key, []).append(reg["border"][pick])
            self.reaches.setdefault(key, []).append(reach[pick])
            self.reach_shares.setdefault(key, []).append(reach[pick] / side)

    def object_stats(self, key: float) -> dict[str, Any]:
        """Objects of a foreground class: sizes, volumes, bounding-box extents per axis (voxels, and as a
        share of the image's side; median and 90th percentile) and the share touching the image border.
        Weighted by voxels, so that specks beside a large object do not hide it: ``median_reach`` (half of
        the class's voxels lie in objects that reach no further per axis: the extent, at most
        :data:`REACH_WIDTHS` widths) and its share of the side."""
        if key not in self.sizes:
            return {"count": 0} | dict.fromkeys(OBJECT_KEYS)
        sizes, volumes = np.concatenate(self.sizes[key]), np.concatenate(self.volumes[key])
        extents, shares = np.concatenate(self.extents[key]), np.concatenate(self.shares[key])
        reach, reach_share = np.concatenate(self.reaches[key]), np.concatenate(self.reach_shares[key])
        weights = sizes.astype(np.float64)
        return {
            "count": int(sizes.size),
            "median_voxels": float(np.median(sizes)),
            "p10_voxels": float(np.percentile(sizes, 10)),
            "min_voxels": int(sizes.min()),
            "max_voxels": int(sizes.max()),
            "median_volume": float(np.median(volumes)),
            "p10_volume": float(np.percentile(volumes, 10)),
            "median_extent": np.median(extents, axis=0).tolist(),
            "p90_extent": np.percentile(extents, 90, axis=0).tolist(),
            "median_extent_share": np.median(shares, axis=0).tolist(),
            "p90_extent_share": np.percentile(shares, 90, axis=0).tolist(),
            "border_fraction": float(np.concatenate(self.borders[key]).mean()),
            "median_reach": [_weighted_percentile(reach[:, a], weights, 50.0) for a in range(reach.shape[1])],
            "median_reach_share": [_weighted_percentile(reach_share[:, a], weights, 50.0)
                                   for a in range(reach.shape[1])],
        }

    def thickness_stats(self, key: float) -> dict[str, float | None]:
        """How thin a class's regions are (spacing units), weighted by voxels so that specks do not
        decide: ``p10`` (10% of the class's voxels lie in thinner regions) and ``median``."""
        if key not in self.thick:
            return {"p10": None, "median": None}
        values = np.concatenate([t for t, _ in self.thick[key]])
        weights = np.concatenate([w for _, w in self.thick[key]]).astype(np.float64)
        return {"p10": _weighted_percentile(values, weights, 10.0),
                "median": _weighted_percentile(values, weights, 50.0)}


# ---------------------------------------------------------------------------------------------- the pass
