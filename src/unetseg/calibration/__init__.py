"""What a semantic model learns from held-out predictions (its validation images, or a cross-validation's
out-of-fold predictions): a temperature that calibrates its probabilities, the post-processing that raises
its Dice (nnU-Net's rule), and how far its uncertainty points at its errors."""

from __future__ import annotations

from unetseg.calibration.heldout import HeldOutFit, apply_fit, fit_heldout
from unetseg.calibration.postprocessing import choose_postprocessing, size_grid, summarise
from unetseg.calibration.sampling import PixelSample
from unetseg.calibration.temperature import (
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    scale,
)
from unetseg.calibration.uncertainty import TrustStats, errors_found, image_correlation

__all__ = [
    "HeldOutFit", "PixelSample", "TrustStats", "apply_fit", "choose_postprocessing", "errors_found",
    "expected_calibration_error", "fit_heldout", "fit_temperature", "image_correlation", "nll", "reliability",
    "scale", "size_grid", "summarise",
]
