"""Temperature scaling (Guo et al. 2017) and the expected calibration error, on a pixel sample of held-out
predictions (:class:`~unetseg.calibration.sampling.PixelSample`).

The held-out predictions are class probabilities (a single model's validation images, or the out-of-fold
predictions of a cross-validation, stored as float16), so the temperature is fitted on their logarithms
taken as logits: ``softmax(log p / T)``. For one forward pass that is exactly ``softmax(z / T)`` of the
network's logits ``z``, which is where prediction applies it (:func:`unetseg.inference.tta.logits_to_probs`);
with flip TTA or overlapping tiles prediction scales each pass before averaging, which the fit on the
averaged probabilities approximates.

The negative log-likelihood is convex in ``1/T``, so a bounded 1-D search (Brent) over
:data:`T_RANGE` finds its minimum. ECE: :data:`ECE_BINS` equal-width bins of the top-class probability,
``sum_b n_b / n * |accuracy_b - confidence_b|``.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15
T_RANGE = (0.05, 20.0)
FLOOR = 1e-7  # probabilities stored as float16 may be 0: their log is taken from here


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """``log p`` of a ``(pixels, C)`` sample, floored at :data:`FLOOR`."""
    return np.log(np.maximum(np.asarray(probs, np.float64), FLOOR))


def scale(probs: np.ndarray, temperature: float, axis: int = -1) -> np.ndarray:
    """``softmax(log p / T)`` along ``axis`` (float64)."""
    z = log_probabilities(probs) / float(temperature)
    z -= z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def nll(probs: np.ndarray, truth: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes after scaling by ``temperature``."""
    if len(truth) == 0:
        return float("nan")
    z = log_probabilities(probs)
    return _nll(z, z[np.arange(len(truth)), truth], 1.0 / float(temperature))


def _nll(z: np.ndarray, z_true: np.ndarray, beta: float) -> float:
    """``mean(logsumexp(beta z) - beta z_true)``: the NLL at temperature ``1 / beta``."""
    zb = z * beta
    top = zb.max(axis=1)
    lse = top + np.log(np.exp(zb - top[:, None]).sum(axis=1))
    return float(np.mean(lse - beta * z_true))


def reliability(probs: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Per confidence bin: pixel count, accuracy and mean confidence (the reliability diagram's points)."""
    conf = np.asarray(probs).max(axis=1).astype(np.float64)
    correct = (np.asarray(probs).argmax(axis=1) == truth).astype(np.float64)
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    hits = np.bincount(which, weights=correct, minlength=bins)
    sure = np.bincount(which, weights=conf, minlength=bins)
    safe = np.maximum(count, 1.0)
    return {"count": count.tolist(), "accuracy": (hits / safe).tolist(), "confidence": (sure / safe).tolist()}


def expected_calibration_error(probs: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of a ``(pixels, C)`` probability sample against the true classes (NaN for no pixels)."""
    if len(truth) == 0:
        return float("nan")
    r = reliability(probs, truth, bins)
    count = np.asarray(r["count"])
    gap = np.abs(np.asarray(r["accuracy"]) - np.asarray(r["confidence"]))
    return float((count * gap).sum() / count.sum())


def fit_temperature(probs: np.ndarray, truth: np.ndarray) -> float:
    """The temperature in :data:`T_RANGE` that minimises the NLL of ``softmax(log p / T)`` (1.0 for an empty
    sample)."""
    from scipy.optimize import minimize_scalar

    if len(truth) == 0:
        return 1.0
    lo, hi = T_RANGE
    z = log_probabilities(probs)
    z_true = z[np.arange(len(truth)), truth]
    res = minimize_scalar(lambda beta: _nll(z, z_true, beta), bounds=(1.0 / hi, 1.0 / lo),
                          method="bounded", options={"xatol": 1e-5})
    return float(1.0 / res.x)
