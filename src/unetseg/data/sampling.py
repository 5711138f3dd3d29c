"""Random training patches: uniform or centred on foreground, padded when the image is small, augmented.

Like nnU-Net (Isensee et al. 2021), a share of the patches (``data.foreground_fraction``, 1/3 by default)
is centred on a voxel of a randomly chosen foreground class present in the case, so small structures are
seen often enough; the rest are placed uniformly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unetseg.config import AugmentConfig, DataConfig
from unetseg.data.augment import Augmenter
from unetseg.data.cases import Case
from unetseg.data.labels import LabelMap
from unetseg.data.store import CaseStore
from unetseg.errors import ConfigError

MAX_FOREGROUND_POINTS = 10_000  # per class and case: enough to pick from, small to keep


def foreground_index(labels: np.ndarray, rng: np.random.Generator, max_points: int = MAX_FOREGROUND_POINTS
                     ) -> dict[int, np.ndarray]:
    """For each class > 0 present in ``labels``: up to ``max_points`` of its voxel positions, ``(k, d)``."""
    out = {}
    present = np.flatnonzero(np.bincount(labels.ravel().astype(np.int64, copy=False)))
    for cls in present[present > 0]:
        pts = np.argwhere(labels == cls)
        if len(pts) > max_points:
            pts = pts[np.sort(rng.choice(len(pts), max_points, replace=False))]
        out[int(cls)] = pts.astype(np.int32)
    return out


def choose_origin(shape: tuple[int, ...], size: tuple[int, ...], rng: np.random.Generator,
                  centre: np.ndarray | None = None) -> tuple[int, ...]:
    """Corner of a patch of ``size`` in an image of ``shape``: uniform, or with ``centre`` in its middle.

    The patch stays inside the image where it fits; where the image is smaller it is padded on both sides
    (the corner is negative), at a random share.
    """
    origin = []
    for a, (n, p) in enumerate(zip(shape, size, strict=True)):
        lo, hi = min(0, n - p), max(0, n - p)
        o = int(rng.integers(lo, hi + 1)) if centre is None else int(np.clip(int(centre[a]) - p // 2, lo, hi))
        origin.append(o)
    return tuple(origin)


class PatchDataset(Dataset):
    """A torch Dataset of random augmented patches: ``dataset[i] -> (image (C, *patch) float32,
    labels (*patch) int64)``.

    Args:
        cases_or_arrays: :class:`Case` objects (read through ``store``) or ``(image, labels)`` pairs
            already normalised and encoded (``(C, *spatial)`` float32, ``(*spatial)`` class indices).
        patch_size: ``(H, W)`` or ``(D, H, W)``.
        data_cfg: normalisation, ``foreground_fraction``, ``pad_mode``, cache budget.
        augment_cfg: augmentations; None for plain patches.
        class_map: value -> class map for reading Cases' masks (when no ``store`` is given).
        samples_per_epoch: ``len(dataset)``; default the number of cases.
        seed: sample ``i`` of epoch ``e`` is drawn from ``default_rng([seed, e, i])``, so the patches are the
            same whatever the number of DataLoader workers. Any index >= 0 is valid, so a sampler may pass
            ``epoch * len + i`` instead (which also works with persistent workers); :meth:`set_epoch` is the
            other way (workers see it when they are started per epoch, ``persistent_workers=False``).
        cache: ``auto`` | ``memory`` | ``lazy`` for a store made here; None: ``data_cfg.cache``.
        store: the prepared dataset's :class:`CaseStore` (cases decoded once, shared with validation).
            Loading happens here, in the main process, before DataLoader workers fork and share the arrays.
    """

    def __init__(
        self,
        cases_or_arrays: list[Case] | list[tuple[np.ndarray, np.ndarray]],
        patch_size: tuple[int, ...] | list[int],
        *,
        data_cfg: DataConfig | None = None,
        augment_cfg: AugmentConfig | None = None,
        class_map: LabelMap | None = None,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        cache: str | None = None,
        store: CaseStore | None = None,
    ) -> None:
        if not cases_or_arrays:
            raise ConfigError("PatchDataset: no cases to sample from")
        self.data_cfg = data_cfg or DataConfig()
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) not in (2, 3) or min(self.patch_size) < 1:
            raise ConfigError(f"patch size must be 2 or 3 positive sizes, got {list(patch_size)}")
        self.spatial_dims = len(self.patch_size)
        self.augmenter = Augmenter(augment_cfg, self.spatial_dims, pad_mode=self.data_cfg.pad_mode,
                                   prior_channels=self.data_cfg.prior_channels)
        self.seed = int(seed)
        self.epoch = 0
        self.foreground_fraction = float(self.data_cfg.foreground_fraction)
        self.sources: list[Any] = list(cases_or_arrays)
        self.samples_per_epoch = int(samples_per_epoch or len(self.sources))
        self.store = store
        if isinstance(self.sources[0], Case) and store is None:
            if class_map is None:
                raise ConfigError("PatchDataset: reading cases needs a class_map or a store")
            mode = self.data_cfg.model_copy(update={"cache": cache}) if cache else self.data_cfg
            self.store = CaseStore(mode, class_map)
        self._fg: dict[int, dict[int, np.ndarray]] = {}
        for i, src in enumerate(self.sources):
            if isinstance(src, Case) and src not in self._cases and self._cases.nbytes >= self._cases.budget:
                continue  # beyond the budget: read per sample
            labels = self._read(i)[1]  # a case read here is kept while the budget allows
            if not isinstance(src, Case) or src in self._cases:
                self._foreground(i, labels)

    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def _cases(self) -> CaseStore:
        """The store :class:`Case` sources are read through (made in ``__init__`` whenever there are any)."""
        assert self.store is not None
        return self.store

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` draws."""
        self.epoch = int(epoch)

    @property
    def in_memory(self) -> int:
        """How many cases are held in memory (the others are read per sample)."""
        return sum(not isinstance(s, Case) or s in self._cases for s in self.sources)

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        src = self.sources[i]
        if isinstance(src, Case):
            image, labels, _ = self._cases.get(src)
        else:
            image, labels = np.asarray(src[0], dtype=np.float32), np.asarray(src[1])
        if image.ndim != self.spatial_dims + 1 or labels.shape != image.shape[1:]:
            name = src.image_paths[0] if isinstance(src, Case) else f"array pair {i}"
            raise ConfigError(f"{name}: image {image.shape} / labels {labels.shape} do not fit a "
                              f"{self.spatial_dims}D patch size {list(self.patch_size)}")
        return image, labels

    def _foreground(self, i: int, labels: np.ndarray) -> dict[int, np.ndarray]:
        if i not in self._fg:
            self._fg[i] = foreground_index(labels, np.random.default_rng([self.seed, i]))
        return self._fg[i]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        i = int(rng.integers(len(self.sources)))
        image, labels = self._read(i)
        centre = None
        if rng.random() < self.foreground_fraction:
            fg = self._foreground(i, labels)
            if fg:
                classes = sorted(fg)
                pts = fg[classes[int(rng.integers(len(classes)))]]
                centre = pts[int(rng.integers(len(pts)))]
        origin = choose_origin(labels.shape, self.patch_size, rng, centre)
        img, lab = self.augmenter.extract(image, labels, origin, self.patch_size, rng)
        return torch.from_numpy(img), torch.from_numpy(lab.astype(np.int64))
