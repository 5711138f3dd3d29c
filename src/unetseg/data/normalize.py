"""Intensity normalisation, per channel; the method and its statistics travel in the checkpoint.

``steps`` is the preprocessing of an imported BioImage Model Zoo package, one step per operation of the
model spec (the same formulas as its reference implementation, ``bioimageio.core``):
``zero_mean_unit_variance`` (``(x - mean) / (std + eps)`` of the image, ``per_channel`` or jointly),
``fixed_zero_mean_unit_variance`` (given ``mean``/``std``, a number or one per channel),
``scale_linear`` (``gain * x + offset``, likewise), ``scale_range`` (``(x - p_lo) / (p_hi - p_lo + eps)``
between the image's ``min_percentile`` and ``max_percentile``, linear interpolation) and ``clip`` (fixed
``min``/``max``, or the image's ``min_percentile``/``max_percentile``, inverted-CDF as ``bioimageio.core``).
As in ``bioimageio.core``, every statistic (mean, std, percentile) is of the image as it came in, not of
what the steps before made of it."""

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
                 stats: Any = None, steps: Any = None) -> None:
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
        self.steps = [_check_step(dict(s)) for s in steps or []]
        if method == "steps" and not self.steps:
            raise ConfigError("data.preprocessing: normalization 'steps' needs at least one step")

    @classmethod
    def from_config(cls, data_cfg: DataConfig) -> Normalizer:
        """The normaliser a :class:`DataConfig` describes (validated: ConfigError when inconsistent)."""
        return cls(data_cfg.normalization, data_cfg.percentiles, data_cfg.window, data_cfg.intensity_stats,
                   data_cfg.preprocessing)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalise a ``(C, *spatial)`` image; returns a new float32 array."""
        img = np.asarray(image, dtype=np.float32)
        if self.method == "none":
            return img.copy()
        if self.method == "steps":
            out = img.copy()
            for step in self.steps:
                out = _apply_step(step, out, img)
            return out
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


# op -> (required keys, optional keys with their defaults)
STEPS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "zero_mean_unit_variance": ((), {"per_channel": True, "eps": 1e-6}),
    "fixed_zero_mean_unit_variance": (("mean", "std"), {"eps": 1e-6}),
    "scale_linear": ((), {"gain": 1.0, "offset": 0.0}),
    "scale_range": ((), {"min_percentile": 0.0, "max_percentile": 100.0, "per_channel": True, "eps": 1e-6}),
    "clip": ((), {"min": None, "max": None, "min_percentile": None, "max_percentile": None,
                  "per_channel": True}),
}


def _check_step(step: dict[str, Any]) -> dict[str, Any]:
    """A step with its defaults filled in; ConfigError for an unknown op, a missing or unknown key."""
    op = step.pop("op", None)
    if op not in STEPS:
        raise ConfigError(f"data.preprocessing: unknown step {op!r}; choose {', '.join(STEPS)}")
    required, optional = STEPS[op]
    missing = [k for k in required if k not in step]
    unknown = sorted(set(step) - set(required) - set(optional))
    if missing or unknown:
        what = f"needs {', '.join(missing)}" if missing else f"takes no {', '.join(unknown)}"
        raise ConfigError(f"data.preprocessing: step {op!r} {what}")
    if op == "clip" and all(step.get(k) is None for k in optional if k != "per_channel"):
        raise ConfigError("data.preprocessing: step 'clip' needs min, max, min_percentile or max_percentile")
    return {"op": op, **optional, **step}


def _per_channel(values: Any, channels: int) -> np.ndarray:
    """A number or one per channel, shaped to broadcast over ``(C, *spatial)``."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size not in (1, channels):
        raise ConfigError(f"data.preprocessing: {arr.size} values for {channels} channel(s)")
    return arr


def _stats_axes(img: np.ndarray, per_channel: bool) -> tuple[int, ...]:
    return tuple(range(1, img.ndim)) if per_channel else tuple(range(img.ndim))


def _broadcast(values: np.ndarray, img: np.ndarray) -> np.ndarray:
    return values.reshape(-1, *([1] * (img.ndim - 1)))


def _apply_step(step: dict[str, Any], img: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """One step on ``img``; its statistics are of ``raw``, the image before any step."""
    op, c = step["op"], img.shape[0]
    if op in ("scale_linear", "fixed_zero_mean_unit_variance"):
        a, b = (("gain", "offset") if op == "scale_linear" else ("mean", "std"))
        first, second = _broadcast(_per_channel(step[a], c), img), _broadcast(_per_channel(step[b], c), img)
        out = img * first + second if op == "scale_linear" else (img - first) / (second + step["eps"])
        return out.astype(np.float32)
    axes = _stats_axes(raw, step["per_channel"])
    if op == "zero_mean_unit_variance":
        mean = raw.mean(axis=axes, keepdims=True, dtype=np.float64)
        std = raw.std(axis=axes, keepdims=True, dtype=np.float64)
        return ((img - mean) / (std + step["eps"])).astype(np.float32)
    if op == "scale_range":
        qs = [step["min_percentile"], step["max_percentile"]]
        lo, hi = np.percentile(raw, qs, axis=axes, keepdims=True)
        return ((img - lo) / (hi - lo + step["eps"])).astype(np.float32)
    return _clip(step, img, raw, axes)


def _clip(step: dict[str, Any], img: np.ndarray, raw: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    def bound(value: Any, percentile: Any) -> Any:
        if value is not None:
            return _broadcast(_per_channel(value, img.shape[0]), img)
        if percentile is None:
            return None
        return np.percentile(raw, percentile, axis=axes, keepdims=True, method="inverted_cdf")

    lo, hi = bound(step["min"], step["min_percentile"]), bound(step["max"], step["max_percentile"])
    return np.clip(img, lo, hi).astype(np.float32)


def needs_image_statistics(data_cfg: DataConfig) -> bool:
    """Whether the normalisation reads statistics of the whole image (not per pixel alone)."""
    if data_cfg.normalization in ("zscore", "percentile"):
        return True
    if data_cfg.normalization != "steps":
        return False
    return any(s.get("op") in ("zero_mean_unit_variance", "scale_range")
               or s.get("min_percentile") is not None or s.get("max_percentile") is not None
               for s in data_cfg.preprocessing or [])


def frozen_steps(steps: list[dict[str, Any]], mean: np.ndarray, std: np.ndarray,
                 sample: np.ndarray) -> list[dict[str, Any]]:
    """``steps`` with every statistic of the image replaced by its value, so that they apply pixel by pixel
    to any region of it (a streamed image): ``mean``/``std`` per channel (the joint ones follow, each
    channel having as many pixels), percentiles from ``sample`` ``(C, n)`` (the image's pixels, or a
    regular subsample of them)."""
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    joint_mean = float(mean.mean())
    joint_std = float(np.sqrt(np.mean(std**2 + (mean - joint_mean) ** 2)))

    def pct(q: float, per_channel: bool, method: str) -> list[float]:
        rows = sample if per_channel else sample.reshape(1, -1)
        return [float(np.percentile(r, q, method=method)) for r in rows]  # type: ignore[call-overload]

    out = []
    for step in (_check_step(dict(s)) for s in steps):
        op, per = step["op"], step.get("per_channel", True)
        if op == "zero_mean_unit_variance":
            m, sd = (mean.tolist(), std.tolist()) if per else (joint_mean, joint_std)
            step = {"op": "fixed_zero_mean_unit_variance", "mean": m, "std": sd, "eps": step["eps"]}
        elif op == "scale_range":
            lo, hi = (np.array(pct(step[k], per, "linear")) for k in ("min_percentile", "max_percentile"))
            gain = 1.0 / (hi - lo + step["eps"])
            step = {"op": "scale_linear", "gain": gain.tolist(), "offset": (-lo * gain).tolist()}
        elif op == "clip":
            for end in ("min", "max"):
                q = step.pop(f"{end}_percentile")
                if step[end] is None and q is not None:
                    step[end] = pct(q, per, "inverted_cdf")
        out.append(step)
    return out
