"""From files to arrays: the class map, normalisation, reading a case, the train/validation split.

``PatchDataset`` (:mod:`unetseg.data.sampling`) and ``prepare_data`` / ``PreparedData``
(:mod:`unetseg.data.prepare`) are importable from here as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from unetseg.config import DataConfig
from unetseg.data.io import read_image, read_mask
from unetseg.data.layout import Case, find_cases
from unetseg.errors import ConfigError, DataError

__all__ = [
    "Case", "find_cases", "ClassMap", "Normalizer", "normalize", "read_pair", "load_case", "split_cases",
    "case_cache",
]

# More distinct values than this in the masks means an intensity or instance image, not class labels.
MAX_INFERRED_CLASSES = 32


def unique_values(mask: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label array (a histogram for 8/16-bit masks: much faster than sorting)."""
    m = np.asarray(mask)
    if m.dtype in (np.uint8, np.uint16, np.bool_):
        return np.flatnonzero(np.bincount(m.ravel(), minlength=1))
    return np.unique(m)


class ClassMap:
    """The map between stored mask values and class indices: ``values[k]`` is the value of class ``k``.

    ``ClassMap([0, 255])`` maps 0 -> 0, 255 -> 1; ``ClassMap([255, 0])`` makes 255 the background. A class
    may merge several values: ``ClassMap([0, [1, 2, 3, 4]])`` trains the BraTS whole tumour (every label
    > 0) as class 1, and writes such a class back as its first value. The map is stored in the checkpoint
    config (``data.class_values``) so prediction can write original values back.
    """

    def __init__(self, values: list[Any]) -> None:
        if not values:
            raise ConfigError("class map: needs at least one class value")
        try:
            groups = [[float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)] for v in values]
        except (TypeError, ValueError):
            raise ConfigError(f"class map: {values!r} is not a list of numbers (or of lists of numbers, "
                              "one list per merged class)") from None
        flat = [x for g in groups for x in g]
        if not all(groups) or len(set(flat)) != len(flat):
            raise ConfigError(f"class map: empty or repeated values in {self._fmt(values)}")
        self.values = [g if isinstance(v, (list, tuple)) else g[0]
                       for v, g in zip(values, groups, strict=True)]
        self.groups = groups
        self.mask_values = flat  # every value a mask may hold
        cls = np.asarray([k for k, g in enumerate(groups) for _ in g])
        order = np.argsort(flat, kind="stable")
        self._sorted, self._class_of_sorted = np.asarray(flat, dtype=np.float64)[order], cls[order]

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    def key(self) -> tuple:
        """A hashable identity of the map (for caches)."""
        return tuple(tuple(g) for g in self.groups)

    def __repr__(self) -> str:
        return f"ClassMap({self._fmt(self.values)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClassMap) and other.groups == self.groups

    @staticmethod
    def _fmt(values: Any) -> str:
        def one(v: Any) -> str:
            return "+".join(f"{x:g}" for x in v) if isinstance(v, (list, tuple)) else f"{v:g}"

        return "[" + ", ".join(one(v) for v in values) + "]"

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
            found = unique_values(m[bad])
            shown = self._fmt(found[:5]) + (" ..." if found.size > 5 else "")
            raise DataError(f"{source or 'mask'}: value(s) {shown} not in the class map "
                            f"{self._fmt(self.values)} (set --classes / data.class_values to change it)")
        return idx.astype(dtype, copy=False)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Original mask values of class indices (uint8/uint16 when the values are whole numbers); a merged
        class becomes its first value."""
        vals = np.asarray([g[0] for g in self.groups])
        whole = np.array_equal(vals, np.round(vals))
        dtype = (np.uint8 if vals.min() >= 0 and vals.max() <= 255 else np.uint16 if vals.min() >= 0
                 and vals.max() <= 65535 else np.int64) if whole else np.float32
        return vals.astype(dtype)[np.asarray(indices)]

    @classmethod
    def from_masks(cls, masks_or_paths: Any, max_classes: int = MAX_INFERRED_CLASSES) -> ClassMap:
        """The map whose classes are the sorted union of the values found in ``masks_or_paths`` (arrays or
        files). Raises DataError when that looks like an intensity or instance image."""
        found: set[float] = set()
        source = "masks"
        for m in masks_or_paths:
            if isinstance(m, (str, Path)):
                source = str(m)
                m, _ = read_mask(m)
            found.update(float(v) for v in unique_values(m))
            if len(found) > max_classes:
                raise DataError(f"{source}: masks hold more than {max_classes} distinct values; that looks "
                                "like an intensity or instance image (give --classes to choose them)")
        return cls(sorted(found))


class Normalizer:
    """Intensity normalisation, per channel of each image.

    ``zscore``: subtract the mean, divide by the standard deviation (nnU-Net's default for non-CT data);
    ``percentile``: clip to the ``percentiles`` of the image, then z-score; ``window``: clip to a fixed
    ``[lo, hi]`` and map to [-1, 1] (CT Hounsfield windows, e.g. -1000..1000); ``none``: as stored.
    """

    METHODS = ("zscore", "percentile", "window", "none")

    def __init__(self, method: str = "zscore", percentiles: Any = (0.5, 99.5), window: Any = None) -> None:
        if method not in self.METHODS:
            raise ConfigError(f"data.normalization: unknown {method!r}; choose {', '.join(self.METHODS)}")
        if method == "window" and (window is None or len(window) != 2 or window[0] >= window[1]):
            raise ConfigError("data.window: normalization 'window' needs [lo, hi] with lo < hi")
        if method == "percentile" and not (len(percentiles) == 2
                                           and 0 <= percentiles[0] < percentiles[1] <= 100):
            raise ConfigError(f"data.percentiles: need [lo, hi] with 0 <= lo < hi <= 100, got {percentiles}")
        self.method = method
        self.percentiles = tuple(float(p) for p in percentiles)
        self.window = tuple(float(w) for w in window) if window is not None else None

    @classmethod
    def from_config(cls, data_cfg: DataConfig) -> Normalizer:
        """The normaliser a :class:`DataConfig` describes (validated: ConfigError when inconsistent)."""
        return cls(data_cfg.normalization, data_cfg.percentiles, data_cfg.window)

    def key(self) -> tuple:
        return self.method, self.percentiles, self.window

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalise a ``(C, *spatial)`` image; returns a new float32 array."""
        img = np.asarray(image, dtype=np.float32)
        if self.method == "none":
            return img.copy()
        if self.method == "window":
            lo, hi = self.window
            return ((np.clip(img, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0).astype(np.float32)
        out = np.empty_like(img)
        for c in range(img.shape[0]):
            ch = img[c]
            if self.method == "percentile":
                lo, hi = np.percentile(ch, self.percentiles)
                ch = np.clip(ch, lo, hi)
            mean, std = float(ch.mean(dtype=np.float64)), float(ch.std(dtype=np.float64))
            out[c] = (ch - mean) / max(std, 1e-8)
        return out


def normalize(image: np.ndarray, data_cfg: DataConfig) -> np.ndarray:
    """Apply ``data_cfg.normalization`` to a ``(C, *spatial)`` image (see :class:`Normalizer`)."""
    return Normalizer.from_config(data_cfg)(image)


def read_pair(case: Case, *, read_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read a case as stored: image ``(C, *spatial)`` float32 (channel files stacked), mask or None, meta.

    Checks that channel files agree in size, that the mask has the image's dimensionality and size, and
    resolves an unlabelled TIFF plane axis as channels when the mask is 2D. Raises DataError naming the file.
    """
    images, meta = [], {}
    for p in case.image_paths:
        img, m = read_image(p, group_channels=len(case.image_paths) == 1)
        if images and img.shape[1:] != images[0].shape[1:]:
            raise DataError(f"{p}: size {img.shape[1:]} differs from {case.image_paths[0].name} "
                            f"{images[0].shape[1:]}")
        meta = meta or m
        images.append(img)
    image = images[0] if len(images) == 1 else np.concatenate(images, axis=0)
    if not read_labels or case.mask_path is None:
        return image, None, meta
    mask, _ = read_mask(case.mask_path)
    first = case.image_paths[0].name
    if meta.get("planes_unlabelled") and mask.ndim == 2 and image.ndim == 4 and image.shape[0] == 1:
        image = image[0]  # a multi-page TIFF whose mask is 2D: the pages are channels
        meta = {**meta, "spatial_dims": 2, "spacing": meta["spacing"][1:], "shape": image.shape[1:]}
    if mask.ndim != image.ndim - 1:
        raise DataError(f"{case.mask_path}: mask is {mask.ndim}D {mask.shape} but image {first} is "
                        f"{image.ndim - 1}D {image.shape[1:]}")
    if mask.shape != image.shape[1:]:
        raise DataError(f"{case.mask_path}: mask size {mask.shape} does not match image {first} size "
                        f"{image.shape[1:]}")
    meta["channels"] = int(image.shape[0])
    return image, mask, meta


class CaseCache:
    """Decoded, normalised cases kept in memory up to a byte budget (the dataset-fits-in-memory case).

    Keys include each file's size and modification time, so a file rewritten on disk is read again.
    DataLoader workers forked after the cache is filled share its arrays copy-on-write.
    """

    def __init__(self) -> None:
        self.items: dict[tuple, tuple[np.ndarray, np.ndarray | None, dict]] = {}
        self.nbytes = 0

    @staticmethod
    def key(case: Case, norm: Normalizer, class_map: ClassMap | None) -> tuple:
        files = [*case.image_paths, *([case.mask_path] if case.mask_path and class_map else [])]
        stats = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) if f.exists() else (str(f),)
                      for f in files)
        return stats, norm.key(), class_map.key() if class_map else None

    def put(self, key: tuple, value: tuple, budget: float) -> bool:
        size = value[0].nbytes + (value[1].nbytes if value[1] is not None else 0)
        if key in self.items or self.nbytes + size > budget:
            return key in self.items
        self.items[key] = value
        self.nbytes += size
        return True

    def clear(self) -> None:
        self.items.clear()
        self.nbytes = 0


case_cache = CaseCache()


def cache_budget(data_cfg: DataConfig) -> float:
    """Bytes of decoded data kept in memory (``data.cache``: lazy -> 0, memory -> unlimited, auto ->
    ``data.cache_gib``)."""
    mode = data_cfg.cache
    if mode not in ("auto", "memory", "lazy"):
        raise ConfigError(f"data.cache: unknown {mode!r}; choose auto, memory or lazy")
    return {"lazy": 0.0, "memory": float("inf")}.get(mode, float(data_cfg.cache_gib) * 2**30)


def load_case(
    case: Case,
    data_cfg: DataConfig,
    class_map: ClassMap | None,
    *,
    cache: bool = False,
    compact: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read, check, normalise and encode one case.

    Returns ``(image (C, *spatial) float32 normalised, labels (*spatial) int64 class indices or None,
    meta)``; labels are None without a mask or without ``class_map``. With ``cache`` the result is kept in
    memory while the ``data.cache`` budget allows; ``compact`` returns uint8 labels (what the cache stores).
    """
    norm = Normalizer.from_config(data_cfg)
    key = CaseCache.key(case, norm, class_map)
    hit = case_cache.items.get(key)
    if hit is None:
        raw, mask, meta = read_pair(case, read_labels=class_map is not None)
        labels = None
        if mask is not None and class_map is not None:
            small = np.uint8 if class_map.num_classes <= 256 else np.int16
            labels = class_map.encode(mask, source=case.mask_path, dtype=small)
        hit = (norm(raw), labels, meta)
        if cache:
            case_cache.put(key, hit, cache_budget(data_cfg))
    image, labels, meta = hit
    if labels is not None and not compact:
        labels = labels.astype(np.int64)
    return image, labels, dict(meta)


def split_cases(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Hold out ``round(n * val_fraction)`` cases (at least 1, leaving at least 1 for training) chosen with
    ``seed``; both lists keep the input order. ``val_fraction=0`` or a single case gives no validation."""
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
    n = len(cases)
    n_val = int(round(n * val_fraction))
    n_val = min(max(1, n_val), n - 1) if val_fraction > 0 and n >= 2 else 0
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return [c for i, c in enumerate(cases) if i not in held], [c for i, c in enumerate(cases) if i in held]


def __getattr__(name: str) -> Any:
    # Re-exported lazily: sampling and prepare import this module.
    if name == "PatchDataset":
        from unetseg.data.sampling import PatchDataset

        return PatchDataset
    if name in ("prepare_data", "PreparedData"):
        from unetseg.data import prepare

        return getattr(prepare, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
