"""Can a user trust "check these pixels first"? How well an uncertainty map points at the errors.

* **Errors found against pixels checked.** Pixels are checked from the most uncertain down (ties as one
  block, crossed linearly); the curve is the share of all wrong pixels found against the share of pixels
  checked. Its area is 0.5 for a random order and ``1 - e / 2`` for a perfect one (``e``: the share of
  pixels that are wrong); ``found_at`` gives the share found after checking the most uncertain 5% / 10% /
  20%. (The area equals ``e / 2 + (1 - e) * AUROC`` of the uncertainty as a detector of errors.)
* **Correlation.** Pixel level: Pearson's r between the uncertainty and the error indicator (the
  point-biserial correlation). Image level (:func:`image_correlation`): Spearman's rank correlation between
  an image's mean uncertainty and its error (1 - mean foreground Dice): do the least sure images score
  worst?

All on a :class:`~unetseg.calibration.sampling.PixelSample` of (uncertainty, wrong) pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

CHECKED = (0.05, 0.1, 0.2)


def errors_found(uncertainty: np.ndarray, wrong: np.ndarray) -> dict[str, Any]:
    """The curve's area and reference values, the share found at :data:`CHECKED`, and the pixel-level
    correlation (NaN where there are no errors, or nothing but errors)."""
    u = np.asarray(uncertainty, np.float64).ravel()
    w = np.asarray(wrong, bool).ravel()
    n, errors = len(u), int(w.sum())
    rate = errors / n if n else float("nan")
    out: dict[str, Any] = {"pixels": n, "error_rate": rate, "auc": math.nan, "auc_random": 0.5,
                           "auc_best": 1.0 - rate / 2 if n else math.nan,
                           "found_at": {f"{c:g}": math.nan for c in CHECKED}, "pixel_correlation": math.nan}
    if n == 0 or errors in (0, n):
        return out
    x, y = _points(u, w)
    out["auc"] = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))  # trapezoids: linear within ties
    out["found_at"] = {f"{c:g}": float(np.interp(c, x, y)) for c in CHECKED}
    if u.std() > 0:
        out["pixel_correlation"] = float(np.corrcoef(u, w.astype(np.float64))[0, 1])
    return out


def _points(u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The curve's corners: most uncertain first, equal values as one block."""
    values, inverse = np.unique(-u, return_inverse=True)
    x = np.concatenate([[0.0], np.cumsum(np.bincount(inverse, minlength=len(values))) / len(u)])
    y = np.concatenate([[0.0], np.cumsum(np.bincount(inverse, weights=w, minlength=len(values))) / w.sum()])
    return x, y


def image_correlation(mean_uncertainty: list[float], error: list[float]) -> float:
    """Spearman's rank correlation between images' mean uncertainty and their error (NaN for fewer than 3
    images or constant values)."""
    from scipy.stats import spearmanr

    u, e = np.asarray(mean_uncertainty, np.float64), np.asarray(error, np.float64)
    ok = np.isfinite(u) & np.isfinite(e)
    if ok.sum() < 3 or np.ptp(u[ok]) == 0 or np.ptp(e[ok]) == 0:
        return math.nan
    return float(spearmanr(u[ok], e[ok]).statistic)


CURVE_POINTS = 51


class TrustStats:
    """What ``evaluate`` measures of a model's probabilities and uncertainty over labelled images: the
    calibration error of the probabilities as predicted (and, with ``temperature`` != 1, with the
    temperature undone: ``softmax(T log p)``, exact for one pass), and how the uncertainty (the entropy of
    the mean probability) finds the errors of the labels written (:func:`errors_found`)."""

    def __init__(self, temperature: float = 1.0) -> None:
        from unetseg.calibration.sampling import PixelSample

        self.temperature = float(temperature)
        self.calibration = PixelSample(seed=0)
        self.errors = PixelSample(seed=1)

    def add(self, probs: np.ndarray, truth: np.ndarray, labels: np.ndarray, entropy: np.ndarray) -> None:
        """One image: its probabilities ``(C, *spatial)``, true classes, written labels and entropy map."""
        self.calibration.add(probs, truth)
        self.errors.add(entropy, np.asarray(labels) != np.asarray(truth))

    def result(self) -> dict[str, Any]:
        from unetseg.calibration.temperature import expected_calibration_error, reliability, scale

        values, truth = self.calibration.values, self.calibration.target.astype(np.int64)
        calib: dict[str, Any] = {"temperature": self.temperature, "pixels": len(truth),
                                 "ece": expected_calibration_error(values, truth),
                                 "reliability": reliability(values, truth) if len(truth) else None}
        if self.temperature != 1.0 and len(truth):
            calib["ece_without_temperature"] = expected_calibration_error(
                scale(values, 1.0 / self.temperature), truth)
        u, wrong = self.errors.values[:, 0] if len(self.errors) else np.zeros(0), self.errors.target
        found = errors_found(u, wrong)
        found["curve"] = _curve(u, wrong)
        return {"calibration": calib, "uncertainty": found}


def _curve(uncertainty: np.ndarray, wrong: np.ndarray) -> dict[str, list[float]] | None:
    """The errors-found curve at :data:`CURVE_POINTS` evenly spaced shares of pixels checked."""
    u, w = np.asarray(uncertainty, np.float64), np.asarray(wrong, bool)
    errors = int(w.sum())
    if not len(u) or errors in (0, len(u)):
        return None
    x, y = _points(u, w)
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    return {"checked": grid.tolist(), "found": np.interp(grid, x, y).tolist()}
