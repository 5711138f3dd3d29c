"""Behaviour goldens: the same tiny fixed-seed training, predictions and evaluation give the outputs recorded
before the stages were reorganised (``tests/golden/record.py``): bit-identical labels, metrics within 1e-6."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))

from record import run_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_pipeline(tmp_path_factory.mktemp("golden"))


def test_predicted_labels_are_bit_identical(fresh: dict) -> None:
    want = np.load(GOLDEN / "labels.npz")
    assert sorted(fresh["labels"]) == sorted(k for k in want if k != "api")
    for name, labels in fresh["labels"].items():
        np.testing.assert_array_equal(labels, want[name], err_msg=name)
    np.testing.assert_array_equal(fresh["api_labels"], want["api"])


def test_evaluation_metrics_match_within_1e_6(fresh: dict) -> None:
    want = json.loads((GOLDEN / "evaluation.json").read_text())
    got = json.loads(json.dumps(fresh["evaluation"]))
    assert got["num_images"] == want["num_images"]
    assert [r["case"] for r in got["per_image"]] == [r["case"] for r in want["per_image"]]
    np.testing.assert_allclose(got["mean_foreground_dice"], want["mean_foreground_dice"], atol=1e-6)
    for key, per_class in want["mean"].items():
        np.testing.assert_allclose(got["mean"][key], per_class, atol=1e-6, err_msg=key)
    for g, w in zip(got["per_image"], want["per_image"], strict=True):
        for key in w:
            if key != "case":
                np.testing.assert_allclose(g[key], w[key], atol=1e-6, err_msg=f"{w['case']} {key}")


def test_training_curve_matches(fresh: dict) -> None:
    want = json.loads((GOLDEN / "metrics.json").read_text())
    got = fresh["metrics_csv"]
    assert got[0] == want[0]
    for g, w in zip(got[1:], want[1:], strict=True):
        assert g[:2] == w[:2]  # epoch, step
        np.testing.assert_allclose([float(x) for x in g[2:4] + g[5:]], [float(x) for x in w[2:4] + w[5:]],
                                   rtol=1e-6)
        assert g[4] == w[4]  # validation Dice per class, as printed
