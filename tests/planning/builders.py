"""Fingerprints built in memory, so each planning rule is tested on exactly the property it decides from,
without writing files. Defaults describe an ordinary dataset: four 64x64 uint8 grey images at spacing 1,
background (80% of the voxels) and one foreground class of mid-sized objects (10% of a side) that are not
thin; a test names only what its rule reads, and every other field follows from those (medians, counts,
per-case lists), as :func:`~unetseg.planning.fingerprint.compute_fingerprint` would give them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unetseg.planning.fingerprint import Fingerprint


def stats(mean: float = 100.0, std: float = 20.0, lo: float = 0.0, hi: float = 255.0, *,
          p05: float | None = None, p995: float | None = None, voxels: int = 4096) -> dict[str, Any]:
    """One channel's intensity statistics (:attr:`Fingerprint.intensity`); the percentiles default to
    ``mean -/+ 2.5 std`` within ``[lo, hi]``."""
    p05 = max(lo, mean - 2.5 * std) if p05 is None else p05
    p995 = min(hi, mean + 2.5 * std) if p995 is None else p995
    return {"mean": mean, "std": std, "min": lo, "max": hi, "p0.5": p05, "median": mean, "p99.5": p995,
            "voxels": voxels}


def objects(shape: Sequence[int], share: float = 0.1, *, count: int = 10, border: float = 0.0,
            reach_share: float | None = None) -> dict[str, Any]:
    """One class's object statistics (:attr:`Fingerprint.objects`) in images of ``shape`` (spacing 1): 90%
    of the objects reach ``share`` of each side and the median one half that; ``border``: the share that
    touches the image border; ``reach_share``: the side share of the object holding the median voxel
    (default: the median object's)."""
    d = len(shape)
    p90 = [share * s for s in shape]
    median = [e / 2 for e in p90]
    reach = share / 2 if reach_share is None else reach_share
    voxels = float(np.prod(median))
    return {"count": count, "median_voxels": voxels, "p10_voxels": voxels / 4, "min_voxels": 1.0,
            "max_voxels": float(np.prod(p90)), "median_volume": voxels, "p10_volume": voxels / 4,
            "median_extent": median, "p90_extent": p90, "median_extent_share": [share / 2] * d,
            "p90_extent_share": [share] * d, "border_fraction": border,
            "median_reach": [reach * s for s in shape], "median_reach_share": [reach] * d}


def _per(value: Any, n: int) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _number(label: str) -> float | int:
    x = float(label)
    return int(x) if x.is_integer() else x


def fingerprint(
    shapes: Sequence[Sequence[int]] = ((64, 64),) * 4,
    spacings: Sequence[Sequence[float]] | None = None,
    classes: Mapping[str, float] | None = None,
    *,
    channels: int = 1,
    dtypes: str | Sequence[str] = "uint8",
    raw_dtypes: str | Sequence[str] | None = None,
    intensity: Mapping[str, Any] | None = None,
    foreground: Mapping[str, Any] | None = None,
    ranges: Sequence[tuple[float, float]] | None = None,
    objects_of: Mapping[str, Mapping[str, Any]] | None = None,
    thickness: Mapping[str, float] | None = None,
    images_with_class: Mapping[str, int] | None = None,
) -> Fingerprint:
    """A :class:`Fingerprint` of ``len(shapes)`` cases.

    Args:
        shapes: each case's spatial shape (2 or 3 axes).
        spacings: each case's spacing (default 1 per axis).
        classes: class label -> share of the voxels, background first (default ``{"0": 0.8, "1": 0.2}``);
            a label ``"1+2"`` is a merged class of a class map.
        channels, dtypes, raw_dtypes: per case (or one for all) stored and on-disk pixel types.
        intensity, foreground: one channel's statistics over all voxels / the foreground (:func:`stats`),
            the same for every channel.
        ranges: each case's ``[p0.5, p99.5]`` (every channel); default the intensity's.
        objects_of: class label -> :func:`objects` (default: mid-sized objects for each foreground class).
        thickness: class label -> the p10 thickness of its regions (the median twice that; default 20).
        images_with_class: class label -> cases holding it (default: all).
    """
    n, d = len(shapes), len(shapes[0])
    spacings = [list(map(float, s)) for s in spacings] if spacings is not None else [[1.0] * d] * n
    classes = dict(classes if classes is not None else {"0": 0.8, "1": 0.2})
    labels = list(classes)
    merged = any("+" in label for label in labels)
    values = sorted({_number(v) for label in labels for v in label.split("+")})
    median_shape = [float(m) for m in np.median(np.asarray(shapes, dtype=np.float64), axis=0)]
    overall = dict(intensity if intensity is not None else stats())
    fg = dict(foreground if foreground is not None else overall)
    case_ranges = ranges if ranges is not None else [(overall["p0.5"], overall["p99.5"])] * n
    dtype_list = _per(dtypes, n)
    if objects_of is None:
        objects_of = {label: objects([int(m) for m in median_shape]) for label in labels[1:]}
    thick = {label: 20.0 for label in labels} | dict(thickness or {})
    return Fingerprint(
        spatial_dims=d,
        channels=channels,
        n_cases=n,
        names=[f"c{i}" for i in range(n)],
        shapes=[list(map(int, s)) for s in shapes],
        spacings=spacings,
        dtypes=dtype_list,
        raw_dtypes=_per(raw_dtypes, n) if raw_dtypes is not None else list(dtype_list),
        median_shape=median_shape,
        median_spacing=[float(m) for m in np.median(np.asarray(spacings), axis=0)],
        intensity=[dict(overall) for _ in range(channels)],
        intensity_foreground=[dict(fg) for _ in range(channels)],
        file_ranges=[[[float(lo), float(hi)] for _ in range(channels)] for lo, hi in case_ranges],
        class_values=values,
        class_map=[[_number(v) for v in label.split("+")] if "+" in label else _number(label)
                   for label in labels] if merged else None,
        classes=labels,
        class_fraction=classes,
        images_with_class={label: n for label in labels} | dict(images_with_class or {}),
        objects={label: dict(o) for label, o in objects_of.items()},
        thickness={label: {"p10": t, "median": 2 * t} for label, t in thick.items()},
        foreground_fraction=sum(classes[label] for label in labels[1:]),
    )
