"""Everything a semantic model learns from held-out predictions, in one pass over them: the temperature
(:mod:`.temperature`) and the post-processing (:mod:`.postprocessing`), with the calibration error and the
Dice before and after.

The predictions are any iterable of ``(probabilities, labels)`` pairs: float ``(C, *spatial)`` class
probabilities of an image predicted *without* temperature and post-processing, and its true class indices
``(*spatial)``. The end of training passes the validation images of the best checkpoint; a
cross-validation passes its out-of-fold predictions (every training image, predicted by the fold that did
not see it)::

    fit = fit_heldout(pairs, num_classes)       # one pass; nothing is kept but summaries and a pixel sample
    apply_fit(config, fit)                      # infer.temperature and infer.postprocess
    metrics["heldout"] = fit.to_dict()          # what it measured, for the checkpoint and the report
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from unetseg.calibration.postprocessing import choose_postprocessing, summarise
from unetseg.calibration.sampling import PixelSample
from unetseg.calibration.temperature import (
    T_RANGE,
    expected_calibration_error,
    fit_temperature,
    nll,
    scale,
)
from unetseg.config import Config
from unetseg.config.schema import PostprocessStep
from unetseg.errors import DataError


@dataclass
class HeldOutFit:
    """What :func:`fit_heldout` found (``to_dict`` is what the checkpoint's metrics keep)."""

    source: str
    images: int
    pixels: int  # in the calibration sample
    temperature: float = 1.0  # the one applied: the fit, or 1 when it was not kept (temperature_note)
    temperature_fitted: float = 1.0
    temperature_note: str = ""
    ece_before: float = math.nan
    ece_after: float = math.nan
    nll_before: float = math.nan
    nll_after: float = math.nan
    postprocess: list[dict[str, Any]] = field(default_factory=list)
    tried: list[dict[str, Any]] = field(default_factory=list)
    dice_before: list[float] = field(default_factory=list)  # per foreground class, held-out mean
    dice_after: list[float] = field(default_factory=list)

    @property
    def dice_gain(self) -> float:
        """The mean foreground Dice the post-processing added on the held-out images."""
        if not self.dice_before:
            return 0.0
        return float(np.mean(self.dice_after) - np.mean(self.dice_before))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dice_gain"] = self.dice_gain
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _check_pair(probs: np.ndarray, truth: np.ndarray, index: int, classes: int | None) -> int:
    if probs.ndim != truth.ndim + 1 or probs.shape[1:] != truth.shape:
        raise DataError(f"held-out prediction {index}: probabilities {probs.shape} do not fit labels "
                        f"{truth.shape} (expected (C, *spatial) and (*spatial))")
    if classes is not None and probs.shape[0] != classes:
        raise DataError(f"held-out prediction {index}: {probs.shape[0]} classes, expected {classes}")
    if truth.size and (truth.min() < 0 or truth.max() >= probs.shape[0]):
        raise DataError(f"held-out prediction {index}: labels {truth.min()}..{truth.max()} outside the "
                        f"{probs.shape[0]} classes")
    return int(probs.shape[0])


def fit_heldout(pairs: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int | None = None, *,
                temperature: bool = True, postprocess: bool = True, source: str = "validation",
                seed: int = 0) -> HeldOutFit:
    """Fit the temperature (``temperature``) and choose the post-processing (``postprocess``) on held-out
    ``(probabilities, labels)`` pairs (see the module doc); ``source`` names them in the record."""
    sample, images, classes, count = PixelSample(seed=seed), [], num_classes, 0
    for i, (p, t) in enumerate(pairs):
        probs, truth = np.asarray(p), np.asarray(t).astype(np.int64, copy=False)
        classes = _check_pair(probs, truth, i, classes)
        count += 1
        if temperature:
            sample.add(probs, truth)
        if postprocess:
            images.append(summarise(probs.argmax(axis=0), truth, classes))
    fit = HeldOutFit(source, count, len(sample))
    if temperature and len(sample):
        values, target = sample.values, sample.target
        fitted = fit_temperature(values, target)
        fit.temperature_fitted = fitted
        fit.ece_before = expected_calibration_error(values, target)
        ece = expected_calibration_error(scale(values, fitted), target)
        fit.temperature_note = _refusal(fitted, fit.ece_before, ece)
        fit.temperature = 1.0 if fit.temperature_note else fitted
        fit.ece_after = fit.ece_before if fit.temperature_note else ece
        fit.nll_before, fit.nll_after = nll(values, target), nll(values, target, fit.temperature)
    if postprocess and images and classes is not None:
        choice = choose_postprocessing(images, classes)
        fit.postprocess, fit.tried = choice.steps, choice.tried
        fit.dice_before, fit.dice_after = choice.dice_before, choice.dice_after
    return fit


BOUND_SLACK = 1.01  # a fit within 1% of a search bound sits on it


def _refusal(fitted: float, ece_before: float, ece_after: float) -> str:
    """Why a fitted temperature is not kept ("" when it is). One at a search bound means the NLL still fell
    there: the held-out pixels are too few or too easy (all right: T -> 0) to say how sure to be; one that
    raises the calibration error it is meant to lower does not help, as a post-processing that lowers the
    Dice is not kept."""
    lo, hi = T_RANGE
    if fitted <= lo * BOUND_SLACK or fitted >= hi / BOUND_SLACK:
        return (f"not kept: the fit reached the search bound ({fitted:.3g}; the held-out pixels cannot "
                "tell how sure to be)")
    if not ece_after < ece_before:
        return f"not kept: it did not lower the calibration error ({ece_before:.4f} -> {ece_after:.4f})"
    return ""


def apply_fit(config: Config, fit: HeldOutFit, *, temperature: bool = True, postprocess: bool = True) -> None:
    """Write the fitted temperature and the chosen post-processing into ``config.infer`` (in place)."""
    if temperature:
        config.infer.temperature = float(fit.temperature)
    if postprocess:
        config.infer.postprocess = [PostprocessStep(**s) for s in fit.postprocess]
