"""Intensity normalisation, per channel; the method and its statistics travel in the checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np

from unetseg.config import DataConfig
from unetseg.config.schema import NORMALIZATIONS
from unetseg.errors import ConfigError


class Normalizer:
    """Intensity normalisation, per channel of each image.

    ``zscore``: subtract the mean, divide by the standard deviation, per image (nnU-Net's default for
    non-CT data); ``percentile``: clip to the ``percentiles`` of the image, then z-score; ``window``: clip to
    a fixed ``[lo, hi]`` and map to [-1, 1]; ``ct``: clip to the dataset's foreground ``window`` and
    subtract/divide the dataset's foreground ``stats`` (mean, std): nnU-Net's CT scheme, one scale for all
    images so Hounsfield units keep their meaning; ``none``: as stored.
    """

    METHODS = NORMALIZATIONS

    def __init__(self, method: str = "zscore", percentiles: Any = (0.5, 99.5), window: Any = None,
                 stats: Any = None) -> None:
        if method not in self.METHODS:
            raise ConfigError(f"data.normalization: unknown {method!r}; choose {', '.join(self.METHODS)}")
        if method in ("window", "ct") and (window is None or len(window) != 2 or window[0] >= window[1]):
            raise ConfigError(f"data.window: normalization {method!r} needs [lo, hi] with lo < hi")
        if method == "ct" and (stats is None or len(stats) != 2 or not stats[1] > 0):
            raise ConfigError("data.intensity_stats: normalization 'ct' needs [mean, std] with std > 0")
        if method == "percentile" and not (len(percentiles) == 2
                                           and 0 <= percentiles[0] < percentiles[1] <= 100):
            raise ConfigError(f"data.percentiles: need [lo, hi] with 0 <= lo < hi <= 100, got {percentiles}")
        self.method = method
        self.percentiles = tuple(float(p) for p in percentiles)
        self.window = tuple(float(w) for w in window) if window is not None else None
        self.stats = tuple(float(s) for s in stats) if stats is not None else None

    @classmethod
    def from_config(cls, data_cfg: DataConfig) -> Normalizer:
        """The normaliser a :class:`DataConfig` describes (validated: ConfigError when inconsistent)."""
        return cls(data_cfg.normalization, data_cfg.percentiles, data_cfg.window, data_cfg.intensity_stats)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalise a ``(C, *spatial)`` image; returns a new float32 array."""
        img = np.asarray(image, dtype=np.float32)
        if self.method == "none":
            return img.copy()
        if self.method in ("window", "ct"):
            assert self.window is not None  # both methods need it (__init__)
            lo, hi = self.window
            if self.method == "ct":
                assert self.stats is not None  # as "ct" needs (__init__)
                mean, std = self.stats
                return ((np.clip(img, lo, hi) - np.float32(mean)) / np.float32(std)).astype(np.float32)
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
