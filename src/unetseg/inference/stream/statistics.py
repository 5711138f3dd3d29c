"""What streamed prediction needs of a whole image before its tiles run: fixed normalisation statistics
(computed in one streaming pass, so every region is normalised as the whole image would be) and the
tissue test that lets ``--skip-background`` leave glass alone."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetseg.data.normalize import Normalizer, frozen_steps, needs_image_statistics
from unetseg.errors import ConfigError

Region = tuple[slice, ...]


@dataclass(frozen=True)
class ChannelStats:
    """Fixed per-channel statistics applied to any region: ``(clip(x, lo, hi) - mean) / max(std, 1e-8)``,
    with exactly :class:`~unetseg.data.normalize.Normalizer`'s arithmetic (so equal statistics give
    bit-identical inputs). ``clip``: per-channel ``(lo, hi)`` for ``percentile``, None for ``zscore``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    clip: tuple[tuple[float, float], ...] | None = None

    def __call__(self, region: np.ndarray) -> np.ndarray:
        x = np.asarray(region, dtype=np.float32)
        out = np.empty_like(x)
        for c in range(x.shape[0]):
            out[c] = (self._clip(x[c], c) - self.mean[c]) / max(self.std[c], 1e-8)
        return out

    def _clip(self, ch: np.ndarray, c: int) -> np.ndarray:
        if self.clip is None:
            return ch
        lo, hi = self.clip[c]
        return np.clip(ch, np.float64(lo), np.float64(hi))  # float64 bounds, as np.percentile gives


def image_statistics(source: Any, method: str = "zscore", *, percentiles: Sequence[float] = (0.5, 99.5),
                     level: int = 0, sample: int = 1 << 20, block: int = 1 << 22) -> ChannelStats:
    """Whole-image normalisation statistics of a lazy image, in flat memory.

    ``zscore``: the exact mean and (population) std per channel, from one pass over blocks of about
    ``block`` pixels, combined in float64 (Chan et al.); they equal the in-memory statistics up to
    summation order (~1e-12 relative). ``percentile``: the clip bounds are the percentiles of a regular
    subsample of at most ``sample`` pixels per channel (every k-th pixel along each axis; a stepped read,
    which :class:`~unetseg.io.lazy.LazyImage` supports), then mean and std of the clipped image in one
    full pass. Peak memory: one block (float64 per channel) and the subsample.
    """
    if method not in ("zscore", "percentile"):
        raise ConfigError(f"normalization {method!r} needs no image statistics (zscore, percentile do)")
    shape = tuple(int(s) for s in source.shape(level))
    clip = _sample_clip(source, shape, level, percentiles, sample) if method == "percentile" else None
    stats = ChannelStats((), (), clip)
    rows = max(1, block // max(1, math.prod(shape[1:])))
    count, mean, m2 = 0, np.zeros(0), np.zeros(0)
    for r in range(0, shape[0], rows):
        x = source.read((slice(r, min(shape[0], r + rows)), *(slice(0, s) for s in shape[1:])), level)
        if count == 0:
            mean, m2 = np.zeros(x.shape[0]), np.zeros(x.shape[0])
        n = x[0].size
        for c in range(x.shape[0]):
            ch = stats._clip(np.asarray(x[c], dtype=np.float32), c)
            mb = float(ch.mean(dtype=np.float64))
            dev = np.subtract(ch, mb, dtype=np.float64)
            mb2 = float(np.dot(dev.ravel(), dev.ravel()))
            delta, total = mb - mean[c], count + n
            mean[c] += delta * n / total
            m2[c] += mb2 + delta * delta * count * n / total
        count += n
    std = np.sqrt(m2 / max(count, 1))
    return ChannelStats(tuple(float(m) for m in mean), tuple(float(s) for s in std), clip)


def _subsample(source: Any, shape: tuple[int, ...], level: int, sample: int) -> np.ndarray:
    """``(C, n)``: every k-th pixel along each axis, at most about ``sample`` of them (all when fewer)."""
    step = max(1, math.ceil((math.prod(shape) / max(1, sample)) ** (1.0 / len(shape))))
    inner = tuple(slice(0, s, step) for s in shape[1:])
    rows = step * max(1, (1 << 22) // max(1, math.prod(-(-s // step) for s in shape[1:])))
    parts = [source.read((slice(r, min(shape[0], r + rows), step), *inner), level)
             for r in range(0, shape[0], rows)]
    return np.concatenate([p.reshape(p.shape[0], -1) for p in parts], axis=1)


def _sample_clip(source: Any, shape: tuple[int, ...], level: int, percentiles: Sequence[float],
                 sample: int) -> tuple[tuple[float, float], ...]:
    flat = _subsample(source, shape, level, sample)
    return tuple((float(lo), float(hi)) for lo, hi in (np.percentile(ch, percentiles) for ch in flat))


def stream_normalizer(source: Any, data_cfg: Any, *, level: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The region normaliser for ``data_cfg.normalization``: whole-image statistics from
    :func:`image_statistics` for ``zscore`` / ``percentile``; the config's fixed mapping otherwise
    (``window``, ``ct``, ``none`` are per pixel already). An imported package's ``steps`` that read the
    image's statistics get them the same way (exact mean and std; percentiles of the subsample) and become
    per-pixel steps (:func:`~unetseg.data.normalize.frozen_steps`)."""
    method = data_cfg.normalization
    if method in ("zscore", "percentile"):
        return image_statistics(source, method, percentiles=data_cfg.percentiles, level=level)
    if needs_image_statistics(data_cfg):
        stats = image_statistics(source, "zscore", level=level)
        sample = _subsample(source, tuple(int(s) for s in source.shape(level)), level, 1 << 20)
        return Normalizer("steps", steps=frozen_steps(data_cfg.preprocessing, np.array(stats.mean),
                                                      np.array(stats.std), sample))
    return Normalizer.from_config(data_cfg)


def tissue_skip(image: Any, level: int = 0, *, min_side: int = 512) -> Callable[[Region], bool]:
    """A ``skip`` for :meth:`StreamPredictor.predict_to`: True for tiles whose region (in ``level``
    pixels) touches no tissue in :func:`~unetseg.io.lazy.tissue_mask` of a low pyramid level."""
    from unetseg.io.lazy import mask_scale, region_has_tissue, tissue_mask

    mask, _ = tissue_mask(image, min_side=min_side)
    to_mask, to_level0 = mask_scale(image, mask), image.level_scale(level)

    def skip(region: Region) -> bool:
        level0 = tuple(slice(math.floor(s.start * f), math.ceil(s.stop * f))
                       for s, f in zip(region, to_level0, strict=True))
        return not region_has_tissue(mask, to_mask, level0)

    return skip
