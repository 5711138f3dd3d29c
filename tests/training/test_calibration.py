"""An instance model's validation chooses its watershed option (``training.validation.CALIBRATION``) by the
DSB score of the validation images, and the checkpoints keep the choice; an option the user set stays."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unetseg.checkpoint import load_checkpoint
from unetseg.data.prepare import prepare_data
from unetseg.data.synthetic import make_dataset
from unetseg.inference.api import predictor_for
from unetseg.inference.engines import TorchEngine
from unetseg.inference.instances import instances_of
from unetseg.metrics.instances import dsb_score
from unetseg.training.distributed import DistInfo
from unetseg.training.validation import CALIBRATION, Validator


def _train(root: Path, *extra: str) -> Path:
    data = make_dataset(root / "data", n=5, size=(80, 80), kind="nuclei", seed=1)
    run = root / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "unetseg", "train", "--task", "instances", "--data", str(data),
         "--out", str(run), "--patch-size", "48", "48", "--epochs", "2", "--iters-per-epoch", "3",
         "--batch-size", "2", "--base-channels", "4", "--depth", "2", "--precision", "fp32",
         "--workers", "0", "--val-fraction", "0.4", *extra],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tmp_path_factory.mktemp("calibrated"), "--no-plan")


def test_validation_picks_the_values_with_the_best_dsb_score(run: Path) -> None:
    model, cfg = load_checkpoint(run / "best")
    data = prepare_data(cfg)
    validator = Validator(data, cfg, torch.device("cpu"), DistInfo(), "fp32")
    row = validator.run(model)
    # the same search by hand: each option in turn over its values, the objects of predict's watershed
    predictor = predictor_for(TorchEngine(model, "cpu", "fp32"), cfg)
    cases = [data.store.get(c) for c in data.val_cases]
    probs = [predictor.predict_proba(image).astype(np.float16).astype(np.float32) for image, _, _ in cases]
    probe, best_score = cfg.copy_deep(), None
    for key, grid in CALIBRATION["three_class"]:
        scores = []
        for value in grid:
            setattr(probe.infer, key, value)
            scores.append(np.mean([dsb_score(instances_of(p, probe), labels)
                                   for p, (_, labels, _) in zip(probs, cases, strict=True)]))
        setattr(probe.infer, key, grid[int(np.argmax(scores))])
        best_score = max(scores)
    assert validator.chosen == {"foreground_threshold": probe.infer.foreground_threshold,
                                "interior_threshold": probe.infer.interior_threshold}
    assert row[1] == pytest.approx(best_score, abs=1e-9)
    # the checkpoint was saved with the values its validation chose
    metrics = json.loads((run / "best" / "config.json").read_text())["metrics"]
    for key, grid in CALIBRATION["three_class"]:
        assert metrics[f"infer.{key}"] == getattr(cfg.infer, key) and getattr(cfg.infer, key) in grid
    # past the memory budget for held probabilities, images are predicted again per option: the same
    tight = Validator(data, cfg, torch.device("cpu"), DistInfo(), "fp32")
    tight.held_bytes = 0
    np.testing.assert_array_equal(tight.run(model), row)
    assert tight.chosen == validator.chosen
    fixed = Validator(data, cfg, torch.device("cpu"), DistInfo(), "fp32",
                      fixed=frozenset({"infer.interior_threshold"}))
    assert [k for k, _ in fixed.search] == ["foreground_threshold"]


def test_a_threshold_the_user_set_is_not_calibrated(tmp_path: Path) -> None:
    recipe = tmp_path / "fixed.yaml"
    recipe.write_text("infer: {interior_threshold: 0.65}\n")
    run = _train(tmp_path, "--config", str(recipe))
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["infer"]["interior_threshold"] == 0.65
    assert config["metrics"]["infer.interior_threshold"] == 0.65  # validated with it
    assert config["metrics"]["infer.foreground_threshold"] in CALIBRATION["three_class"][0][1]
