"""Post-processing is chosen on held-out predictions exactly when it raises the held-out Dice (nnU-Net v2's
rule), and applying the chosen steps gives the Dice the choice promised."""

from __future__ import annotations

import numpy as np
import pytest

from unetseg.calibration import fit_heldout, size_grid
from unetseg.config.schema import PostprocessStep
from unetseg.metrics import dice
from unetseg.postprocess.semantic import apply_postprocessing, apply_step, label_components


def one_hot(labels: np.ndarray, classes: int, sure: float = 0.9) -> np.ndarray:
    """Probabilities whose argmax is ``labels`` (float16, as a held-out store keeps them)."""
    p = np.full((classes, *labels.shape), (1 - sure) / (classes - 1), np.float32)
    for c in range(classes):
        p[c][labels == c] = sure
    return p.astype(np.float16)


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def specks_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One true disc; the prediction finds it (a little off) and adds spurious specks far from it."""
    rng = np.random.default_rng(seed)
    truth = disc((64, 64), (24, 24), 10).astype(np.int64)
    pred = disc((64, 64), (25, 24), 10).astype(np.int64)
    for _ in range(4):
        y, x = rng.integers(42, 62, size=2)
        pred[y : y + 2, x : x + 2] = 1
    return pred, truth


def mean_dice(preds: list[np.ndarray], truths: list[np.ndarray], c: int, classes: int) -> float:
    return float(np.mean([dice(p, t, classes)[c] for p, t in zip(preds, truths, strict=True)]))


def test_spurious_specks_are_removed_and_the_gain_is_the_measured_one() -> None:
    cases = [specks_case(s) for s in range(5)]
    fit = fit_heldout(((one_hot(p, 2), t) for p, t in cases), 2, temperature=False)
    assert len(fit.postprocess) == 1
    step = PostprocessStep(**fit.postprocess[0])
    assert step.classes == [1] and step.op == "largest"  # the first of equal candidates: largest
    preds, truths = [p for p, _ in cases], [t for _, t in cases]
    before = mean_dice(preds, truths, 1, 2)
    after = mean_dice([apply_postprocessing(p, [step]) for p in preds], truths, 1, 2)
    assert fit.dice_before == [pytest.approx(before)] and fit.dice_after == [pytest.approx(after)]
    assert step.gain == pytest.approx(after - before) and after > before + 0.01
    # every candidate tried is recorded with the Dice it would give
    for tried in fit.tried:
        got = [apply_step(p, tried["classes"], tried["op"], tried.get("size")) for p in preds]
        assert tried["dice"] == pytest.approx(mean_dice(got, truths, 1, 2))


def test_two_real_objects_of_one_class_are_left_alone() -> None:
    """Keeping the largest would drop a real object; removing small ones removes nothing: no step."""
    cases = []
    for shift in range(4):
        truth = (disc((64, 64), (16, 16), 8) | disc((64, 64), (44, 44), 6 + shift)).astype(np.int64)
        pred = (disc((64, 64), (16, 17), 8) | disc((64, 64), (45, 44), 6 + shift)).astype(np.int64)
        cases.append((pred, truth))
    fit = fit_heldout(((one_hot(p, 2), t) for p, t in cases), 2, temperature=False)
    assert fit.postprocess == [] and fit.dice_after == fit.dice_before
    largest = next(t for t in fit.tried if t["op"] == "largest")
    assert largest["dice"] < fit.dice_before[0]  # it was tried and would have hurt
    # sizes below the smallest real object change nothing (a tie is not a gain), larger ones hurt
    smallest = min(label_components(p == 1)[1].min() for p, _ in cases)
    sizes = [t for t in fit.tried if t["op"] == "min_size"]
    assert any(t["size"] <= smallest for t in sizes)
    for t in sizes:
        assert t["dice"] == fit.dice_before[0] if t["size"] <= smallest else t["dice"] < fit.dice_before[0]


def test_small_components_are_removed_where_keeping_the_largest_would_hurt() -> None:
    """Two real objects and specks: only min_size helps (and the largest is no use)."""
    cases = []
    for seed in range(4):
        truth = (disc((64, 64), (16, 16), 8) | disc((64, 64), (44, 44), 7)).astype(np.int64)
        pred = truth.copy()
        rng = np.random.default_rng(seed)
        for _ in range(3):
            y, x = rng.integers(0, 62, size=2)
            if not truth[max(0, y - 3) : y + 5, max(0, x - 3) : x + 5].any():
                pred[y, x] = 1
        pred[60, 2] = 1
        cases.append((pred, truth))
    fit = fit_heldout(((one_hot(p, 2), t) for p, t in cases), 2, temperature=False)
    assert [s["op"] for s in fit.postprocess] == ["min_size"]
    step = PostprocessStep(**fit.postprocess[0])
    assert step.size in size_grid(np.concatenate([label_components(t == 1)[1] for _, t in cases]))
    after = mean_dice([apply_postprocessing(p, [step]) for p, _ in cases], [t for _, t in cases], 1, 2)
    assert after == pytest.approx(1.0) and fit.dice_after == [pytest.approx(after)]


def test_the_whole_foreground_step_needs_every_class_to_hold_its_dice() -> None:
    """Three classes: an object made of classes 1 and 2 plus a speck of class 1 elsewhere: keeping the
    largest foreground component helps class 1 and leaves class 2 alone (chosen as one step over both
    classes); with a real class-2 object of its own elsewhere it would hurt class 2 (not chosen, the speck
    goes by the per-class step instead)."""
    truth = np.zeros((64, 64), np.int64)
    truth[10:30, 10:20], truth[10:30, 20:30] = 1, 2
    pred = truth.copy()
    pred[50:52, 50:52] = 1
    fit = fit_heldout([(one_hot(pred, 3), truth)] * 3, 3, temperature=False)
    assert [(s["classes"], s["op"]) for s in fit.postprocess] == [([1, 2], "largest")]
    truth2, pred2 = truth.copy(), pred.copy()
    truth2[40:44, 5:9] = pred2[40:44, 5:9] = 2  # a real, separate class-2 object
    fit = fit_heldout([(one_hot(pred2, 3), truth2)] * 3, 3, temperature=False)
    assert [(s["classes"], s["op"]) for s in fit.postprocess] == [([1], "largest")]
    steps = [PostprocessStep(**s) for s in fit.postprocess]
    np.testing.assert_array_equal(apply_postprocessing(pred2, steps), truth2)


def test_size_grid_follows_the_true_objects() -> None:
    assert size_grid(np.array([], np.int64)) == []
    sizes = np.array([400] * 19 + [100])
    q = np.percentile(sizes, 5)
    assert size_grid(sizes) == sorted({max(2, round(q * f)) for f in (0.125, 0.25, 0.5, 1.0)})
    assert size_grid(np.array([3, 3, 3])) == [2, 3]


def test_fit_refuses_pairs_that_do_not_fit() -> None:
    from unetseg.errors import DataError

    with pytest.raises(DataError, match="held-out prediction 0"):
        fit_heldout([(np.zeros((2, 4, 4), np.float16), np.zeros((4, 5), np.int64))])
    with pytest.raises(DataError, match="outside the 2 classes"):
        fit_heldout([(np.zeros((2, 4, 4), np.float16), np.full((4, 4), 2))])
