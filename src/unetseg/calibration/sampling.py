"""A deterministic sample of the pixels of held-out predictions, so that fitting a temperature and measuring
calibration and uncertainty cost the same on two images or two thousand.

Each image gives at most :data:`PER_IMAGE` pixels, drawn without replacement by a generator seeded with
``(seed, the image's position in the sequence)``: the same predictions in the same order give the same
sample, and every image weighs about the same whatever its size (pixel-level within an image,
image-balanced across images). When the sample passes :data:`TOTAL` pixels, every image's share is halved
(every other sampled pixel is dropped) and later images give half as many: memory stays bounded.
"""

from __future__ import annotations

import numpy as np

PER_IMAGE = 32768
TOTAL = 1 << 22


class PixelSample:
    """Pixels of a sequence of images: per pixel ``F`` values and one target (e.g. class probabilities and
    the true class; an uncertainty and whether the label was wrong)."""

    def __init__(self, per_image: int = PER_IMAGE, total: int = TOTAL, seed: int = 0) -> None:
        self.per_image, self.total, self.seed = int(per_image), int(total), int(seed)
        self.images = 0
        self._values: list[np.ndarray] = []
        self._target: list[np.ndarray] = []
        self._size = 0

    def add(self, values: np.ndarray, target: np.ndarray) -> None:
        """One image: ``values`` ``(F, *spatial)`` (or ``(*spatial)``: F = 1), ``target`` ``(*spatial)``."""
        target = np.asarray(target)
        values = np.asarray(values)
        if values.ndim == target.ndim:
            values = values[None]
        if values.shape[1:] != target.shape:
            raise ValueError(f"values {values.shape} do not fit the target {target.shape}")
        n = target.size
        k = min(n, self.per_image)
        if k < n:
            rng = np.random.default_rng([self.seed, self.images])
            idx = np.sort(rng.choice(n, size=k, replace=False))
        else:
            idx = np.arange(n)
        self._values.append(values.reshape(values.shape[0], -1)[:, idx].T.astype(np.float32))
        self._target.append(target.reshape(-1)[idx])
        self._size += k
        self.images += 1
        while self._size > self.total and self.per_image > 1:
            self._values = [v[::2] for v in self._values]
            self._target = [t[::2] for t in self._target]
            self._size = sum(len(t) for t in self._target)
            self.per_image //= 2

    def __len__(self) -> int:
        return self._size

    @property
    def values(self) -> np.ndarray:
        """``(pixels, F)`` float32."""
        if not self._values:
            return np.zeros((0, 0), np.float32)
        return np.concatenate(self._values)

    @property
    def target(self) -> np.ndarray:
        """``(pixels,)``."""
        if not self._target:
            return np.zeros(0, np.int64)
        return np.concatenate(self._target)
