"""How an uncertainty map's ranking of pixels finds the errors: the curve's area against its references,
the shares found, and the image-level rank correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unetseg.calibration import errors_found, image_correlation


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """By brute force: P(score of an error > score of a correct pixel), ties count half."""
    pos, neg = score[positive], score[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    return float(greater + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_the_area_is_the_error_detectors_auroc_rescaled() -> None:
    rng = np.random.default_rng(0)
    wrong = rng.random(600) < 0.2
    u = np.where(wrong, rng.normal(1, 1, 600), rng.normal(0, 1, 600)).round(1)  # ties included
    out = errors_found(u, wrong)
    e = wrong.mean()
    assert out["auc"] == pytest.approx(e / 2 + (1 - e) * auroc(u, wrong), abs=1e-9)
    assert 0.5 < out["auc"] < out["auc_best"] == pytest.approx(1 - e / 2)
    assert out["pixel_correlation"] == pytest.approx(np.corrcoef(u, wrong)[0, 1])


def test_perfect_random_and_degenerate_orders() -> None:
    wrong = np.array([True] * 10 + [False] * 90)
    perfect = errors_found(-np.arange(100.0), wrong)  # errors are the most uncertain
    assert perfect["auc"] == pytest.approx(perfect["auc_best"]) and perfect["found_at"]["0.1"] == 1.0
    assert perfect["found_at"]["0.05"] == pytest.approx(0.5)
    flat = errors_found(np.zeros(100), wrong)  # no ranking at all: one block, crossed linearly
    assert flat["auc"] == pytest.approx(0.5) and flat["found_at"]["0.2"] == pytest.approx(0.2)
    assert math.isnan(flat["pixel_correlation"])
    assert math.isnan(errors_found(np.ones(5), np.zeros(5, bool))["auc"])  # no errors to find


def test_image_correlation() -> None:
    assert image_correlation([0.1, 0.2, 0.3, 0.4], [0.0, 0.1, 0.5, 0.9]) == pytest.approx(1.0)
    assert image_correlation([0.1, 0.2, 0.3, 0.4], [0.9, 0.5, 0.1, 0.0]) == pytest.approx(-1.0)
    assert math.isnan(image_correlation([0.1, 0.2], [0.3, 0.4]))
    assert math.isnan(image_correlation([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]))
