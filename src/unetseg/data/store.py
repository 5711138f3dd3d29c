"""Reading a case into training arrays (normalised, encoded and, with a target spacing, resampled), and the
store of one prepared dataset's cases: in memory up to a budget, the rest memory-mapped from a disk cache
beside the run, keyed by everything that shapes the arrays (files, normalisation, spacing, class map)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Protocol, overload

import numpy as np

from unetseg.config import DataConfig
from unetseg.data.cases import Case, read_pair
from unetseg.data.instances import InstanceLabels
from unetseg.data.labels import ClassMap, LabelMap
from unetseg.data.normalize import Normalizer
from unetseg.data.resample import model_grid, resample_image, resample_mask
from unetseg.errors import DataError
from unetseg.fileio import atomic_write, ensure_dir, write_json

GIB = 2**30


class ExtraChannels(Protocol):
    """Input channels computed from a prepared case (a cascade's first-stage prediction): ``(N, *spatial)``
    float32 from the normalised image on the model's grid and its meta (``spacing``: that grid's)."""

    channels: int

    def __call__(self, image: np.ndarray, meta: dict[str, Any]) -> np.ndarray: ...


def label_map(data_cfg: DataConfig) -> LabelMap:
    """How a trained model's masks are read: its class map, or object ids for an instance model."""
    if data_cfg.task == "instances":
        return InstanceLabels(data_cfg.instance_target)
    return ClassMap(data_cfg.class_values)


def cache_budget(data_cfg: DataConfig) -> float:
    """Bytes of decoded data kept in memory (``data.cache``: lazy -> 0, memory -> unlimited, auto ->
    ``data.cache_gib``)."""
    return {"lazy": 0.0, "memory": float("inf")}.get(data_cfg.cache, float(data_cfg.cache_gib) * GIB)


@overload
def to_training_space(
    image: np.ndarray, labels: np.ndarray, meta: dict[str, Any], data_cfg: DataConfig, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]: ...
@overload
def to_training_space(
    image: np.ndarray, labels: np.ndarray | None, meta: dict[str, Any], data_cfg: DataConfig,
    num_classes: int | None
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]: ...
def to_training_space(
    image: np.ndarray,
    labels: np.ndarray | None,
    meta: dict[str, Any],
    data_cfg: DataConfig,
    num_classes: int | None,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Resample a normalised image (third-order spline) and its class indices to the model's grid
    (:func:`~unetseg.data.resample.model_grid`); ``meta`` then records the ``original_shape`` and
    ``original_spacing``."""
    grid = model_grid(meta.get("spacing"), data_cfg, image.ndim - 1)
    if grid is None:
        return image, labels, meta
    own, target = grid
    shape = tuple(image.shape[1:])
    image = resample_image(image, own, target)
    if labels is not None:
        labels = resample_mask(labels, own, target, num_classes or None).astype(labels.dtype, copy=False)
    return image, labels, {**meta, "spacing": target, "original_shape": shape, "original_spacing": own}


def load_case(
    case: Case,
    data_cfg: DataConfig,
    class_map: LabelMap | None,
    *,
    compact: bool = False,
    resample: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read, check, normalise and encode one case (and with ``resample``, bring it to ``data.spacing``).

    Returns ``(image (C, *spatial) float32 normalised, labels (*spatial) class indices or None, meta)``;
    labels are None without a mask or without ``class_map``; int64, or the map's compact dtype with
    ``compact``. Raises DataError naming the file.
    """
    raw, mask, meta = read_pair(
        case, read_labels=class_map is not None, max_bytes=data_cfg.max_image_gib * GIB
    )
    labels = None
    if mask is not None and class_map is not None:
        labels = class_map.encode(
            mask, source=case.mask_path, dtype=class_map.compact_dtype() if compact else np.int64
        )
    image = Normalizer.from_config(data_cfg)(raw)
    if resample and class_map is not None:
        return to_training_space(image, labels, meta, data_cfg, class_map.resample_classes)
    return image, labels, meta


class DiskCache:
    """Training arrays memory-mapped from ``folder/<key>/`` (``.npy`` files written atomically): cases the
    memory budget cannot hold are resampled and normalised once, never per epoch. ``key`` hashes what
    shapes the arrays (normalisation, spacing, class map); a case's files also carry its files' sizes and
    times, so a changed image or plan is read afresh; older keys' folders are removed."""

    def __init__(self, folder: str | Path, data_cfg: DataConfig, class_map: LabelMap) -> None:
        recipe = {
            "norm": [data_cfg.normalization, data_cfg.percentiles, data_cfg.window, data_cfg.intensity_stats],
            "spacing": data_cfg.spacing,
            "downsample": data_cfg.downsample,
            "prior": data_cfg.prior_channels,  # a cascade's cache lives in its own run folder
            "classes": class_map.groups,
        }
        self.key = hashlib.sha1(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.root = Path(folder)
        self.dir = self.root / self.key  # made on the first write: most datasets fit in memory

    def _open(self) -> Path:
        if not self.dir.is_dir():
            if self.root.is_dir():
                for old in self.root.iterdir():
                    if old.is_dir() and old.name != self.key:
                        shutil.rmtree(old, ignore_errors=True)  # another plan's arrays
            ensure_dir(self.dir)
        return self.dir

    def _name(self, case: Case) -> str:
        stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in case.files]
        return hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:20]

    def get(self, case: Case) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        name = self._name(case)
        try:
            meta = json.loads((self.dir / f"{name}.json").read_text())
            return (
                np.load(self.dir / f"{name}.image.npy", mmap_mode="c"),
                np.load(self.dir / f"{name}.labels.npy", mmap_mode="c"),
                meta,
            )
        except (OSError, ValueError):
            return None

    def put(self, case: Case, image: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> None:
        name = self._name(case)
        self._open()
        atomic_write(self.dir / f"{name}.image.npy", lambda p: np.save(p, image))
        atomic_write(self.dir / f"{name}.labels.npy", lambda p: np.save(p, labels))
        plain = {k: v for k, v in meta.items() if k != "affine"}
        write_json(self.dir / f"{name}.json", json.loads(json.dumps(plain, default=list)))  # last: the marker


class CaseStore:
    """The decoded, normalised, encoded cases of one dataset, kept in memory up to a byte budget.

    Owned by :class:`~unetseg.data.prepare.PreparedData` (no module-level cache): the sampler and the
    validator read through it, so every case is decoded once. Cases beyond the budget are read again per
    use. DataLoader workers forked after it is filled share its arrays copy-on-write.
    """

    def __init__(
        self,
        data_cfg: DataConfig,
        class_map: LabelMap,
        budget: float | None = None,
        disk: DiskCache | None = None,
    ) -> None:
        self.data_cfg, self.class_map, self.disk = data_cfg, class_map, disk
        self.budget = cache_budget(data_cfg) if budget is None else float(budget)
        self.items: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
        self.nbytes = 0
        self.extra: ExtraChannels | None = None

    def add_channels(self, extra: ExtraChannels) -> None:
        """From now on every case has ``extra``'s channels after its own (computed once per case: those
        held now at once, the others when first read, then kept as the budget allows)."""
        self.extra = extra
        for key, (image, labels, meta) in list(self.items.items()):
            more = self._extended(image, meta)
            self.items[key] = (more, labels, meta)
            self.nbytes += more.nbytes - image.nbytes

    def _extended(self, image: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
        if self.extra is None:
            return image
        more = np.asarray(self.extra(image, meta), dtype=np.float32)
        if more.shape != (self.extra.channels, *image.shape[1:]):
            raise DataError(f"extra channels of shape {more.shape} do not fit an image of {image.shape}")
        return np.concatenate([image, more], axis=0)

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
        hit = self.items.get(self.key(case)) or (self.disk.get(case) if self.disk is not None else None)
        if hit is not None:
            return hit
        image, labels, meta = load_case(case, self.data_cfg, self.class_map, compact=True, resample=True)
        if labels is None:
            raise DataError(f"{case.image_paths[0]}: no mask (every training case needs one)")
        image = self._extended(image, meta)
        if keep and not self.put(case, image, labels, meta) and self.disk is not None:
            self.disk.put(case, image, labels, meta)
        return image, labels, meta
