"""Temperature scaling: fitted on held-out probabilities it lowers the calibration error of an
over-confident model (T > 1), and the predictor applying T reproduces what the fit measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unetseg.calibration import (
    PixelSample,
    expected_calibration_error,
    fit_heldout,
    fit_temperature,
    nll,
    scale,
)
from unetseg.inference import Predictor

SLOPE = 1.5


def logistic_model(factor: float = 1.0) -> nn.Module:
    """A 1x1 convolution whose class-1 probability is sigmoid(SLOPE * x): exactly calibrated for
    :func:`images`; ``factor`` scales its logits (5: deliberately over-confident)."""
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, 0, 0, 0] = SLOPE * factor
    return conv


def images(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Images of noise and labels drawn from the logistic model's own probabilities."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.normal(0, 1.5, (1, 48, 48)).astype(np.float32)
        truth = (rng.random((48, 48)) < 1 / (1 + np.exp(-SLOPE * x[0]))).astype(np.int64)
        out.append((x, truth))
    return out


def predictor(model: nn.Module, temperature: float = 1.0) -> Predictor:
    return Predictor(model, tile=None, device="cpu", precision="fp32", temperature=temperature)


def measured_ece(pred: Predictor, data: list[tuple[np.ndarray, np.ndarray]]) -> float:
    sample = PixelSample()
    for x, truth in data:
        sample.add(pred.predict_proba(x).astype(np.float16), truth)
    return expected_calibration_error(sample.values, sample.target)


def test_temperature_scaling_calibrates_an_over_confident_model() -> None:
    held_out, unseen = images(4, seed=0), images(4, seed=1)
    over = predictor(logistic_model(5.0))
    fit = fit_heldout(((over.predict_proba(x).astype(np.float16), t) for x, t in held_out), 2,
                      postprocess=False)
    assert fit.temperature == pytest.approx(5.0, rel=0.15)  # undoes the x5 (the noise of 9216 pixels)
    assert fit.ece_after < fit.ece_before / 3 and fit.nll_after < fit.nll_before
    # the predictor applying T gives what the fit measured (one pass: T divides the logits exactly)
    calibrated = predictor(logistic_model(5.0), fit.temperature)
    assert measured_ece(calibrated, held_out) == pytest.approx(fit.ece_after, abs=2e-3)
    # and it holds on images the fit never saw
    assert measured_ece(calibrated, unseen) < measured_ece(over, unseen) / 3
    # a calibrated model keeps T close to 1
    honest = predictor(logistic_model(1.0))
    t = fit_heldout(((honest.predict_proba(x), tr) for x, tr in held_out), 2, postprocess=False).temperature
    assert t == pytest.approx(1.0, abs=0.15)


def test_temperature_divides_the_logits_before_the_softmax() -> None:
    x = np.random.default_rng(3).normal(size=(1, 20, 20)).astype(np.float32)
    p = predictor(logistic_model(1.0), 2.0).predict_proba(x)
    np.testing.assert_allclose(p[1], 1 / (1 + np.exp(-SLOPE * x[0] / 2.0)), atol=1e-6)
    # the fit's own transform on probabilities is the same thing
    base = predictor(logistic_model(1.0)).predict_proba(x)
    np.testing.assert_allclose(scale(base.reshape(2, -1).T, 2.0).T.reshape(p.shape), p, atol=1e-5)


def test_ece_and_nll_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    truth = np.array([0, 1, 1, 0])
    # bins of the top probability: 0.9 (right), 0.8 (wrong), 0.7 (right), 0.55 (wrong); one pixel each
    want = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.55)) / 4
    assert expected_calibration_error(probs, truth) == pytest.approx(want)
    assert nll(probs, truth) == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.7, 0.45])))
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, np.int64)) == 1.0


def test_the_pixel_sample_is_deterministic_and_bounded() -> None:
    rng = np.random.default_rng(0)
    data = [(rng.random((2, 100, 100)), rng.integers(0, 2, (100, 100))) for _ in range(5)]
    a, b = PixelSample(per_image=1000, total=3000), PixelSample(per_image=1000, total=3000)
    for probs, truth in data:
        a.add(probs, truth)
        b.add(probs, truth)
    np.testing.assert_array_equal(a.values, b.values)
    assert len(a) <= 3000 and a.per_image == 500 and a.values.shape == (len(a), 2)
    # each sampled row is a real pixel of its image, with its own target
    first = data[0][0].reshape(2, -1).T
    rows = {tuple(r) for r in first.astype(np.float32)}
    assert all(tuple(r) in rows for r in a.values[:100])


def test_a_temperature_at_the_search_bound_is_not_kept() -> None:
    # every held-out pixel right: the NLL falls all the way to the sharpest temperature the search allows,
    # which says nothing about how sure the model should be on other images
    truth = np.zeros((32, 32), np.int64)
    truth[8:24, 8:24] = 1
    probs = np.stack([np.where(truth == 1, 0.3, 0.7), np.where(truth == 1, 0.7, 0.3)]).astype(np.float16)
    fit = fit_heldout([(probs, truth)], 2, postprocess=False)
    assert fit.temperature_fitted == pytest.approx(0.05, rel=0.02)
    assert fit.temperature == 1.0 and "search bound" in fit.temperature_note
    assert fit.ece_after == fit.ece_before and fit.nll_after == fit.nll_before
    assert fit.to_dict()["temperature_note"] == fit.temperature_note
