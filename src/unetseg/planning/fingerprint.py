"""The dataset fingerprint: what the self-configuring planner knows about a training set (as nnU-Net's).

One pass over the cases (each read once with :func:`~unetseg.data.cases.read_pair`) gathers the sizes,
spacings and stored pixel types, per-channel intensity statistics over all voxels and inside the
foreground, the class values and how much of the data each class covers, and the connected objects of
each foreground class (how many, how big, how long per axis). :func:`cached_fingerprint` keeps the result
in a per-user cache keyed by every file's size and mtime, so planning again is free until the data changes.

Intensity percentiles come from a deterministic sample of ``SAMPLES_PER_CASE`` voxels per case, drawn with
replacement so every case weighs the same whatever its foreground size (nnU-Net's
``collect_foreground_intensities``); mean, std, min and max are exact over all voxels.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from unetseg.data.cases import Case, read_pair
from unetseg.data.labels import ClassMap
from unetseg.errors import DataError
from unetseg.planning.fingerprint_stats import PERCENTILES, ClassStats, IntensityStats, value_counts

FORMAT_VERSION = 3  # bump when the fields or their meaning change: cached fingerprints are then recomputed
SEED = 1234  # nnU-Net's


@dataclass
class Fingerprint:
    """Dataset properties the planner decides from. Lists only (JSON round trips give equal objects).

    ``intensity`` / ``intensity_foreground``: per channel ``{mean, std, min, max, p0.5, median, p99.5,
    voxels}`` (None where no voxel counts). ``file_ranges[case][channel]``: that file's ``[p0.5, p99.5]``.
    ``classes``: the labels the class statistics are keyed by, in order: the mask values found (``"0"``,
    ``"255"``), or the entries of the given class map (``"0"``, ``"1+2"`` for a merged class).
    ``class_fraction`` (voxel share) and ``images_with_class`` (cases holding it) have every label;
    ``objects`` the foreground ones (values > 0, or classes >= 1 of a map): ``{count, median_voxels,
    p10_voxels, min_voxels, max_voxels, median_volume, p10_volume, median_extent, p90_extent,
    median_extent_share, p90_extent_share, border_fraction}`` (volumes in spacing units, i.e. voxels times
    prod(spacing); extents in voxels per axis of the bounding boxes, shares as a fraction of the image's
    side; border_fraction: the share of objects touching the image border; ``median_reach`` and
    ``median_reach_share``: weighted by voxels, each object's extent or at most 8 of its widths, so that a
    large object among specks is seen). ``thickness`` has every label:
    ``{p10, median}`` of twice the volume over the surface of its connected regions (spacing units: a band's
    width, a disc's radius), weighted by voxels: how fine a class's structures are, what a coarser
    resolution would lose.
    """

    spatial_dims: int
    channels: int
    n_cases: int
    names: list[str]
    shapes: list[list[int]]
    spacings: list[list[float]]
    dtypes: list[str]
    raw_dtypes: list[str]
    median_shape: list[float]
    median_spacing: list[float]
    intensity: list[dict[str, Any]]
    intensity_foreground: list[dict[str, Any]]
    file_ranges: list[list[list[float | None]]]
    class_values: list[float | int]
    class_map: list[Any] | None
    classes: list[str]
    class_fraction: dict[str, float]
    images_with_class: dict[str, int]
    objects: dict[str, dict[str, Any]]
    thickness: dict[str, dict[str, float | None]]
    foreground_fraction: float
    version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON data: NaN/inf become None, numpy scalars and tuples plain Python."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        """The inverse of :meth:`to_dict`. ValueError for another format version or missing fields."""
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"fingerprint format {data.get('version')!r}, expected {FORMAT_VERSION}")
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"fingerprint lacks {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _tidy(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def class_label(value: Any) -> str:
    """The key of a mask value or class-map entry in the class statistics: ``"255"``, ``"0.5"``, ``"1+2"``."""
    if isinstance(value, (list, tuple)):
        return "+".join(str(_tidy(v)) for v in value)
    return str(_tidy(value))


# ------------------------------------------------------------------------------------------ statistics
class _FingerprintScan:
    """Everything gathered case by case; :meth:`result` makes the Fingerprint."""

    def __init__(self, cmap: ClassMap | None, instances: bool = False) -> None:
        self.cmap, self.instances = cmap, instances
        self.cases: list[dict[str, Any]] = []
        self.all: list[IntensityStats] = []
        self.fg: list[IntensityStats] = []
        self.found: set[float] = set()
        self.classes = ClassStats()
        self.total = self.foreground = 0

    def add(self, case: Case, image: np.ndarray, mask: np.ndarray, meta: dict[str, Any]) -> None:
        dims, channels = image.ndim - 1, int(image.shape[0])
        if self.cases and (dims, channels) != (self.cases[0]["dims"], self.cases[0]["channels"]):
            first = self.cases[0]
            raise DataError(
                f"{case.image_paths[0]}: {dims}D with {channels} channel(s), but "
                f"{first['path']} is {first['dims']}D with {first['channels']}; a dataset "
                "holds one kind of image"
            )
        spacing = [float(s) for s in (meta.get("spacing") or ())]
        spacing = spacing if len(spacing) == dims else [1.0] * dims
        cmap = self.cmap
        labels = mask if cmap is None else cmap.encode(mask, case.mask_path, dtype=cmap.compact_dtype())
        if self.instances:
            labels = (mask > 0).astype(np.uint8)
        self.found.update(float(v) for v in value_counts(labels if self.instances else mask)[0])
        fg = labels > 0
        rng = np.random.default_rng([SEED, zlib.crc32(case.name.encode("utf-8", "surrogatepass"))])
        while len(self.all) < channels:
            self.all.append(IntensityStats())
            self.fg.append(IntensityStats())
        ranges = []
        for c in range(channels):
            sample = self.all[c].add(image[c].ravel(), rng)
            assert sample is not None  # the readers refuse empty images
            self.fg[c].add(image[c][fg], rng)
            ranges.append(np.percentile(sample, [PERCENTILES[0], PERCENTILES[2]]).tolist())
        self.classes.add(labels, spacing, objects=mask if self.instances else None)
        self.total += int(mask.size)
        self.foreground += int(np.count_nonzero(fg))
        dtype = str(meta.get("dtype"))
        self.cases.append(
            {
                "name": case.name,
                "path": case.image_paths[0],
                "dims": dims,
                "channels": channels,
                "shape": list(mask.shape),
                "spacing": spacing,
                "dtype": dtype,
                "raw_dtype": str(meta.get("raw_dtype") or dtype),
                "ranges": ranges,
            }
        )

    def result(self) -> Fingerprint:
        cs = self.cases
        if self.cmap is not None:
            keys = [float(k) for k in range(self.cmap.num_classes)]
            names = [class_label(v) for v in self.cmap.config_values()]
        else:
            keys = sorted(self.found)
            names = [class_label(k) for k in keys]
        per = self.classes
        return Fingerprint(
            spatial_dims=cs[0]["dims"],
            channels=cs[0]["channels"],
            n_cases=len(cs),
            names=[c["name"] for c in cs],
            shapes=[c["shape"] for c in cs],
            spacings=[c["spacing"] for c in cs],
            dtypes=[c["dtype"] for c in cs],
            raw_dtypes=[c["raw_dtype"] for c in cs],
            median_shape=np.median([c["shape"] for c in cs], axis=0).tolist(),
            median_spacing=np.median([c["spacing"] for c in cs], axis=0).tolist(),
            intensity=[s.summary() for s in self.all],
            intensity_foreground=[s.summary() for s in self.fg],
            file_ranges=[c["ranges"] for c in cs],
            class_values=[_tidy(v) for v in sorted(self.found)],
            class_map=self.cmap.config_values() if self.cmap is not None else None,
            classes=names,
            class_fraction={n: per.voxels.get(k, 0) / self.total for n, k in zip(names, keys, strict=True)},
            images_with_class={n: per.cases.get(k, 0) for n, k in zip(names, keys, strict=True)},
            objects={n: per.object_stats(k) for n, k in zip(names, keys, strict=True) if k > 0},
            thickness={n: per.thickness_stats(k) for n, k in zip(names, keys, strict=True)},
            foreground_fraction=self.foreground / self.total,
        )


def compute_fingerprint(
    cases: list[Case], *, max_bytes: float | None = None, class_values: list[Any] | None = None,
    instances: bool = False,
) -> Fingerprint:
    """The fingerprint of a training set, reading each case once.

    Args:
        cases: labelled cases (:func:`~unetseg.data.cases.find_cases`).
        max_bytes: passed to :func:`read_pair` (refuse files that would decode larger).
        class_values: a class map (``data.class_values``, e.g. ``[0, [1, 2]]``): the class, object and
            foreground statistics are then per class of the map (merged values form one class and their
            touching regions one object; the foreground is every class but class 0) instead of per raw
            mask value (foreground: mask > 0). Mask values outside the map raise DataError.
        instances: the masks are instance label images (one id per object): the statistics are those of
            one foreground class "1", whose objects are the instances (touching ones stay apart).
    Raises:
        DataError: no cases, a case without a mask, unreadable files, images of different dimensionality or
        channel count, mask values outside ``class_values``.
    """
    if not cases:
        raise DataError("no cases: the fingerprint needs at least one labelled case")
    acc = _FingerprintScan(ClassMap(class_values) if class_values is not None else None, instances)
    for case in cases:
        if case.mask_path is None:
            raise DataError(f"{case.image_paths[0]}: no mask; the fingerprint needs labelled cases")
        image, mask, meta = read_pair(case, max_bytes=max_bytes)
        assert mask is not None  # a case with a mask path reads a mask
        acc.add(case, image, mask, meta)
        del image, mask
    return acc.result()


# ------------------------------------------------------------------------------------------------ cache
# ------------------------------------------------------------------------------------------ heuristics
CT_AIR_BELOW = -500.0  # the 0.5th percentile of CT lies in air (-1000 HU) or padding (-1024, -2048, ...)
CT_MAX_P99_5 = 4000.0  # the 99.5th percentile of CT is soft tissue, contrast or bone: below ~3000 HU


def ct_like_channels(fp: Fingerprint) -> list[bool]:
    """Per channel: does it look like CT in Hounsfield units?

    Rule: 3D data stored as integers in every file (on-disk type; a scaled NIfTI counts by its raw type),
    and over all voxels (sampled equally per case) the 0.5th percentile below -500 (air is -1000 HU) while
    the 99.5th percentile, overall or in the foreground, is positive (tissue 0..100 HU, bone above) and the
    overall one at most 4000 (CT tops out near 3000 HU; a wider signed signal is something else).
    Percentiles, not min/max, so a few padding or metal voxels do not decide. Why it matters: CT
    intensities are physical, so they are normalised with dataset-wide foreground statistics (nnU-Net's
    ``CTNormalization``) instead of per image.
    """
    integer = all(np.dtype(dt).kind in "iu" for dt in fp.raw_dtypes)
    if fp.spatial_dims != 3 or not integer:
        return [False] * fp.channels
    out = []
    for every, fg in zip(fp.intensity, fp.intensity_foreground, strict=True):
        lo, hi, fg_hi = every["p0.5"], every["p99.5"], fg["p99.5"]
        ok = lo is not None and hi is not None and lo < CT_AIR_BELOW and hi <= CT_MAX_P99_5
        out.append(bool(ok and max(hi, fg_hi if fg_hi is not None else hi) > 0))
    return out


def is_ct_like(fp: Fingerprint) -> bool:
    """True when every channel looks like CT (see :func:`ct_like_channels` for the rule and its reason)."""
    return all(ct_like_channels(fp))


def range_outliers(fp: Fingerprint, factor: float = 10.0) -> list[str]:
    """Cases whose intensity span (p99.5 - p0.5, any channel) is over ``factor`` times larger or smaller
    than the dataset's median span: files on another scale (a 0..1 float export among 0..4095 files), which
    per-dataset normalisation would get wrong. A constant image counts as an outlier."""
    ranges = np.asarray(
        [[[np.nan if v is None else v for v in ch] for ch in case] for case in fp.file_ranges],
        dtype=np.float64,
    )  # (cases, channels, 2)
    span = ranges[..., 1] - ranges[..., 0]
    median = np.nanmedian(span, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(median > 0, span / median, 1.0)
    bad = (ratio > factor) | (ratio < 1.0 / factor)
    return [name for name, b in zip(fp.names, np.any(bad, axis=1), strict=True) if b]
