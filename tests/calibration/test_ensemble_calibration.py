"""``unetseg calibrate``: a K-fold ensemble's temperature, fitted on labelled images no fold saw."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import unetseg
from unetseg.checkpoint import CALIBRATION_FILE
from unetseg.data.synthetic import make_dataset
from unetseg.errors import CheckpointError, ConfigError, DataError
from unetseg.evaluation import evaluate
from unetseg.evaluation.calibrate import calibrate
from unetseg.export import load_model
from unetseg.inference.engines import load_engine
from unetseg.io.images import read_image

TINY = {"epochs": 2, "iters_per_epoch": 3, "batch_size": 2, "base_channels": 8, "depth": 2, "workers": 0,
        "precision": "fp32", "patch_size": [32, 32]}
SHARPER = 6.0  # the members' logits times this: an ensemble far surer than it is right


@pytest.fixture(scope="module")
def runs(cells_2d: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An over-confident 2-fold run and a labelled set whose cases it never saw (other names, other
    images)."""
    root = tmp_path_factory.mktemp("calibrate")
    run = root / "RUN"
    unetseg.train(data=cells_2d, out=run, plan=False, quiet=True, folds=2, **TINY)
    for fold in (0, 1):
        weights = run / f"fold_{fold}" / "best" / "model.safetensors"
        tensors = load_file(str(weights))
        tensors["head.weight"] *= SHARPER
        tensors["head.bias"] *= SHARPER
        save_file(tensors, str(weights))
    cal = make_dataset(root / "made", n=4, size=(64, 64), kind="cells", seed=11)
    named = root / "CAL"
    for sub in ("images", "masks"):
        (named / sub).mkdir(parents=True)
        for f in (cal / sub).iterdir():
            shutil.copy(f, named / sub / f"held_{f.name}")
    return run, named


def test_calibrate_makes_the_ensemble_less_sure_where_it_was_too_sure(runs: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    run, cal = runs
    image, _ = read_image(next((cal / "images").iterdir()))
    before = unetseg.load(run).predict_proba(image)
    ece_before = evaluate(run, cal, quiet=True).calibration["ece"]
    fit = calibrate(run, cal, quiet=True, overwrite=True)
    record = json.loads((run / CALIBRATION_FILE).read_text())
    assert fit.temperature > 1.5 and not fit.temperature_note and fit.ece_after < fit.ece_before
    assert record["temperature"] == fit.temperature and record["folds"] == [0, 1]
    assert record["fit"]["images"] == 4
    # predict and evaluate apply it: less sure, the same labels, a lower calibration error on the same images
    after = unetseg.load(run).predict_proba(image)
    assert after.max(axis=0).mean() < before.max(axis=0).mean() - 0.01
    assert (after.argmax(axis=0) == before.argmax(axis=0)).mean() > 0.99
    report = tmp_path / "report.html"
    assert evaluate(run, cal, quiet=True, report=report).calibration["ece"] < ece_before
    assert 'id="ensemble-calibration">folds 0,1, fitted on 4 image(s)' in report.read_text()
    # another ensemble (one fold: a single model) keeps its own temperature
    _, one = load_engine(run, "cpu", "fp32", folds=(0,))
    _, own = load_engine(run / "fold_0", "cpu", "fp32")
    assert one.infer.temperature == own.infer.temperature
    _, both = load_engine(run, "cpu", "fp32")
    assert both.infer.temperature == pytest.approx(fit.temperature)
    _, exported = load_model(run)  # an export's config (ONNX metadata, TorchScript's file) carries it too
    assert exported.infer.temperature == pytest.approx(fit.temperature)


def test_calibrate_refuses_what_would_mislead_in_one_line(runs: tuple[Path, Path], cells_2d: Path,
                                                         tmp_path: Path) -> None:
    run, cal = runs
    calibrate(run, cal, quiet=True, overwrite=True)
    with pytest.raises(ConfigError, match="calibrated already; pass --overwrite"):
        calibrate(run, cal, quiet=True)
    with pytest.raises(DataError, match="case 'case_000' is one the run trained on"):
        calibrate(run, cells_2d, quiet=True, overwrite=True)
    with pytest.raises(ConfigError, match="one fold is a single model"):
        calibrate(run, cal, folds=[1], quiet=True, overwrite=True)
    with pytest.raises(ConfigError, match="not a K-fold run"):
        calibrate(run / "fold_0", cal, quiet=True)
    # a damaged record is one line when the run is opened, not a wrong temperature
    damaged = tmp_path / "RUN"
    shutil.copytree(run, damaged)
    (damaged / CALIBRATION_FILE).write_text('{"temperature": -1, "folds": [0, 1]}')
    with pytest.raises(CheckpointError, match="damaged or unreadable calibration record"):
        unetseg.load(damaged)
    # the command line: one error line, status 2, nothing written
    shutil.rmtree(damaged)
    shutil.copytree(run, damaged)
    (damaged / CALIBRATION_FILE).unlink()
    cli = [sys.executable, "-m", "unetseg", "calibrate", "--checkpoint", str(damaged), "--data"]
    proc = subprocess.run([*cli, str(cells_2d)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "trained on" in proc.stderr
    assert not (damaged / CALIBRATION_FILE).exists()
    proc = subprocess.run([*cli, str(cal), "--no-tta"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ensemble of folds 0,1 on 4 image(s)" in proc.stderr and "calibration error" in proc.stderr
    assert json.loads((damaged / CALIBRATION_FILE).read_text())["tta"] is False


def test_the_fit_divides_the_ensembles_logits_the_log_of_its_mean_probabilities(runs: tuple[Path, Path]
                                                                                 ) -> None:
    run, cal = runs
    calibrate(run, cal, quiet=True, overwrite=True)
    engine, config = load_engine(run, "cpu", "fp32")
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32))
    with torch.no_grad():
        logits = engine(x)
    mean = torch.stack([torch.softmax(m(x), dim=1) for m in engine.members]).mean(0)  # type: ignore[attr-defined]
    torch.testing.assert_close(torch.softmax(logits, dim=1), mean, atol=1e-5, rtol=1e-4)
    t = config.infer.temperature
    assert t > 1.5
    scaled = torch.softmax(logits / t, dim=1)
    assert float(scaled.max(dim=1).values.mean()) < float(mean.max(dim=1).values.mean())


def test_the_benchmark_runs_on_a_cross_validation_work_folder(runs: tuple[Path, Path], tmp_path: Path
                                                              ) -> None:
    """``benchmarks/ensemble_calibration.py`` (imported by path) on the layout cross_validation.py leaves."""
    import importlib.util

    run, cal = runs
    (tmp_path / "isbi2012" / "10min").mkdir(parents=True)
    (tmp_path / "isbi2012" / "10min" / "cv").symlink_to(run)
    (tmp_path / "isbi2012" / "split").mkdir()
    (tmp_path / "isbi2012" / "split" / "test").symlink_to(cal)
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "ensemble_calibration.py"
    spec = importlib.util.spec_from_file_location("ensemble_calibration_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = run / CALIBRATION_FILE
    kept = record.read_bytes() if record.exists() else None
    rows = module.main(["isbi2012", "--minutes", "10", "--work", str(tmp_path), "--no-markdown"])
    assert [(r["calibrated_on"], r["measured_on"], r["cal_images"]) for r in rows] == [
        ("A", "B", 2), ("B", "A", 2)]
    for r in rows:  # the over-confident ensemble: better calibrated on the half it was not fitted on
        assert r["temperature"] > 1.5 and r["test_ece_after"] < r["test_ece_before"]
        assert abs(r["dice_after"] - r["dice_before"]) < 0.01
    assert json.loads((tmp_path / "ensemble_calibration.json").read_text()) == rows
    assert (record.read_bytes() if record.exists() else None) == kept  # it calibrates copies of the run
