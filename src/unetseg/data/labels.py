"""The class map between stored mask values and class indices, and the checks on a dataset's mask values."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from unetseg.errors import ConfigError, DataError

# More distinct values than this in the masks means an intensity or instance image, not class labels.
MAX_INFERRED_CLASSES = 32


def unique_values(mask: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label array (a histogram for 8/16-bit masks: much faster than sorting)."""
    m = np.asarray(mask)
    if m.dtype in (np.uint8, np.uint16, np.bool_):
        return np.flatnonzero(np.bincount(m.ravel(), minlength=1))
    return np.unique(m)


def fmt_values(values: Iterable[Any]) -> str:
    """``[0, 1+2+4, 3]``: a class map or value list as users write it (``+`` joins merged values)."""

    def one(v: Any) -> str:
        return "+".join(f"{float(x):g}" for x in v) if isinstance(v, (list, tuple)) else f"{float(v):g}"

    return "[" + ", ".join(one(v) for v in values) + "]"


class LabelMap(Protocol):
    """How masks become training labels and back: a :class:`ClassMap` (classes of mask values) or, for an
    instance task, :class:`~unetseg.data.instances.InstanceLabels` (object ids)."""

    @property
    def num_classes(self) -> int: ...
    @property
    def values(self) -> Sequence[Any]: ...
    @property
    def groups(self) -> Sequence[Sequence[float]]: ...
    @property
    def resample_classes(self) -> int | None:
        """Classes for resampling masks through a one-hot map; None: by nearest neighbour (object ids)."""
        ...

    def check_values(self, found: Collection[float], source: str | Path | None) -> None: ...
    def encode(self, mask: np.ndarray, source: str | Path | None = None, dtype: Any = ...) -> np.ndarray: ...
    def decode(self, indices: np.ndarray) -> np.ndarray: ...
    def compact_dtype(self) -> Any: ...
    def config_values(self) -> list[Any]: ...


class ClassMap:
    """The map between stored mask values and class indices: ``values[k]`` is the value of class ``k``.

    ``ClassMap([0, 255])`` maps 0 -> 0, 255 -> 1; ``ClassMap([255, 0])`` makes 255 the background. A class
    may merge several values: ``ClassMap([0, [1, 2, 3, 4]])`` trains the BraTS whole tumour (every label
    > 0) as class 1, and writes such a class back as its first value. The map is stored in the checkpoint
    config (``data.class_values``) so prediction can write original values back.
    """

    def __init__(self, values: Sequence[Any] | None) -> None:
        if not values:
            raise ConfigError("class map: needs at least one class value")
        try:
            groups = [[float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)] for v in values]
        except (TypeError, ValueError):
            raise ConfigError(
                f"class map: {values!r} is not a list of numbers (or of lists of numbers, "
                "one list per merged class)"
            ) from None
        flat = [x for g in groups for x in g]
        if not all(groups) or len(set(flat)) != len(flat) or not np.isfinite(flat).all():
            raise ConfigError(f"class map: empty, repeated or non-finite values in {fmt_values(values)}")
        self.values = [
            g if isinstance(v, (list, tuple)) else g[0] for v, g in zip(values, groups, strict=True)
        ]
        self.groups = groups
        self.mask_values = flat  # every value a mask may hold
        cls = np.asarray([k for k, g in enumerate(groups) for _ in g])
        order = np.argsort(flat, kind="stable")
        self._sorted, self._class_of_sorted = np.asarray(flat, dtype=np.float64)[order], cls[order]

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    @property
    def resample_classes(self) -> int:
        """Masks are resampled through a one-hot map of every class."""
        return self.num_classes

    def config_values(self) -> list[Any]:
        """The values as ``data.class_values`` stores them (whole numbers as ints: 0/255, not 0.0/255.0)."""

        def tidy(x: float) -> float | int:
            return int(x) if float(x).is_integer() else x

        return [[tidy(x) for x in v] if isinstance(v, list) else tidy(v) for v in self.values]

    def __repr__(self) -> str:
        return f"ClassMap({fmt_values(self.values)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassMap) and other.groups == self.groups

    def check_values(self, found: Iterable[float], source: str | Path | None) -> None:
        """Raise one DataError naming ``source`` when ``found`` holds values outside the map."""
        allowed = set(self.mask_values)
        bad = sorted(float(v) for v in found if float(v) not in allowed)
        if bad:
            shown = fmt_values(bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise DataError(
                f"{source or 'mask'}: value(s) {shown} not in the class map "
                f"{fmt_values(self.values)} (set --classes / data.class_values to change it)"
            )

    def encode(self, mask: np.ndarray, source: str | Path | None = None, dtype: Any = np.int64) -> np.ndarray:
        """Class indices of a mask. Raises DataError naming ``source`` for values outside the map."""
        m = np.asarray(mask)
        if m.dtype in (np.uint8, np.uint16, np.bool_):
            lut = np.full(256 if m.dtype != np.uint16 else 65536, -1, dtype=np.int16)
            for k, group in enumerate(self.groups):
                for v in group:
                    if v == int(v) and 0 <= v < lut.size:
                        lut[int(v)] = k
            idx = lut[m]
            bad = idx < 0
        else:
            pos = np.clip(np.searchsorted(self._sorted, m), 0, len(self._sorted) - 1)
            bad = self._sorted[pos] != m
            idx = self._class_of_sorted[pos]
        if bad.any():
            self.check_values(unique_values(m[bad]), source)
        return idx.astype(dtype, copy=False)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Original mask values of class indices (uint8/uint16 when the values are whole numbers); a merged
        class becomes its first value."""
        vals = np.asarray([g[0] for g in self.groups])
        whole = np.array_equal(vals, np.round(vals))
        dtype = (
            (
                np.uint8
                if vals.min() >= 0 and vals.max() <= 255
                else np.uint16
                if vals.min() >= 0 and vals.max() <= 65535
                else np.int64
            )
            if whole
            else np.float32
        )
        return vals.astype(dtype)[np.asarray(indices)]

    def compact_dtype(self) -> Any:
        """The smallest dtype that holds the class indices (what the case store keeps)."""
        return np.uint8 if self.num_classes <= 256 else np.int16


_FULL_SCALE = {"uint8": 255, "uint16": 65535, "int16": 32767, "int32": 2**31 - 1}


def infer_class_values(masks: Sequence[tuple[Path, str, np.ndarray]], folder: str | Path) -> list[float]:
    """The sorted union of the mask values found, with the checks that catch mistakes.

    ``masks``: ``(path, stored dtype, distinct values)`` per file. Raises DataError when the values look like
    an intensity or instance image (too many), or when binary masks mark the foreground with different
    full-scale values in different files (0/255 in 8-bit files beside 0/65535 in 16-bit ones), which would
    otherwise silently become an extra class.
    """
    found = sorted({float(v) for _, _, values in masks for v in values})
    if len(found) > MAX_INFERRED_CLASSES:
        raise DataError(
            f"{folder}: masks hold {len(found)} distinct values; that looks like an intensity or "
            "instance image (give --classes to choose the class values, or --task instances)"
        )
    binary = [(p, dt, [float(v) for v in vals if v != 0]) for p, dt, vals in masks if len(vals) <= 2]
    fg: dict[float, tuple[Path, str]] = {}
    for path, dtype, values in binary:
        for v in values:
            fg.setdefault(v, (path, dtype))
    full = {v: src for v, src in fg.items() if _FULL_SCALE.get(src[1]) == v}
    if len(binary) == len(masks) and len(fg) > 1 and full:
        shown = "; ".join(f"{{0, {v:g}}} in {p.name} ({dt})" for v, (p, dt) in sorted(fg.items())[:3])
        merged = "+".join(f"{v:g}" for v in sorted(fg))
        raise DataError(
            f"{folder}: binary masks mark the foreground with different values: {shown}; fix the "
            f"masks, or give --classes 0,{merged} to make them one class"
        )
    return found
