"""The end of a semantic run chooses the temperature and the post-processing on the validation images of
its best checkpoint and writes them into ``RUN/best``; ``evaluate`` applies them and says how far the
probabilities and the uncertainty can be trusted, in its JSON and its HTML report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import unetseg
from unetseg.calibration import fit_heldout
from unetseg.checkpoint import copy_checkpoint, read_config, rewrite_config
from unetseg.config import Config
from unetseg.config.schema import PostprocessStep
from unetseg.data import ClassMap, find_cases, load_case
from unetseg.data.prepare import prepare_data
from unetseg.inference.api import predict_full, predictor_for
from unetseg.inference.engines import load_engine
from unetseg.metrics import dice
from unetseg.training import train


def tiny_config(data: Path, out: Path) -> Config:
    cfg = Config()
    cfg.data.data, cfg.data.patch_size, cfg.data.num_workers = str(data), [32, 32], 0
    cfg.data.val_fraction = 0.4
    cfg.model.base_channels, cfg.model.depth = 4, 2
    cfg.train.out, cfg.train.epochs, cfg.train.iters_per_epoch = str(out), 2, 3
    cfg.train.batch_size, cfg.train.precision, cfg.train.lr = 2, "fp32", 5e-3
    return cfg


@pytest.fixture(scope="module")
def run(cells_2d: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_config(cells_2d, tmp_path_factory.mktemp("heldout") / "run"), quiet=True)


def test_the_best_checkpoint_carries_what_its_validation_images_chose(run: Path) -> None:
    best = json.loads((run / "best" / "config.json").read_text())
    fit = best["metrics"]["heldout"]
    assert best["infer"]["temperature"] == fit["temperature"]
    # the fit is kept, or it is refused with its reason and 1 is used (a 2-epoch model: often at a bound)
    assert fit["temperature"] == (1.0 if fit["temperature_note"] else fit["temperature_fitted"])
    assert fit["temperature_fitted"] != 1.0
    assert best["infer"]["postprocess"] == [{**s, "size": s.get("size")} for s in fit["postprocess"]]
    assert fit["nll_after"] <= fit["nll_before"]  # what the fit minimises (the ECE may move either way)
    assert fit["source"] == "validation" and fit["pixels"] > 0 and fit["tried"]
    last = json.loads((run / "last" / "config.json").read_text())
    assert last["infer"]["temperature"] == 1.0 and last["infer"]["postprocess"] == []  # resumes uncalibrated
    assert "held-out calibration on" in (run / "log.txt").read_text()
    # the same choice from the validation images predicted through the public path, at temperature 1
    engine, cfg = load_engine(run, "cpu", "fp32")
    raw = cfg.copy_deep()
    raw.infer.temperature, raw.infer.postprocess = 1.0, []
    predictor = predictor_for(engine, raw)
    data = prepare_data(cfg)
    assert fit["images"] == len(data.val_cases)

    def pairs():
        for case in data.val_cases:
            image, labels, meta = load_case(case, cfg.data, ClassMap(cfg.data.class_values))
            out = predict_full(predictor, image, meta.get("spacing"), raw, probabilities=True)
            yield out.probabilities.astype(np.float16), labels

    again = fit_heldout(pairs(), 2)
    assert again.temperature_fitted == pytest.approx(fit["temperature_fitted"], rel=1e-3)
    assert again.temperature == pytest.approx(fit["temperature"], rel=1e-3)
    assert again.postprocess == fit["postprocess"]


def test_calibrate_off_and_a_temperature_of_ones_own(cells_2d: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cells_2d, tmp_path / "off")
    cfg.train.calibrate, cfg.train.epochs = False, 1
    best = json.loads((train(cfg, quiet=True) / "best" / "config.json").read_text())
    assert "heldout" not in best["metrics"] and best["infer"]["temperature"] == 1.0
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("infer:\n  temperature: 1.7\n")
    proc = subprocess.run(
        [sys.executable, "-m", "unetseg", "train", "--data", str(cells_2d), "--out", str(tmp_path / "own"),
         "--no-plan", "--patch-size", "32", "32", "--epochs", "1", "--iters-per-epoch", "2", "--batch-size",
         "2", "--base-channels", "4", "--depth", "2", "--precision", "fp32", "--workers", "0",
         "--config", str(recipe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    best = json.loads((tmp_path / "own" / "best" / "config.json").read_text())
    assert best["infer"]["temperature"] == 1.7 and best["metrics"]["heldout"]["pixels"] == 0  # kept as given


def test_evaluate_applies_them_and_reports_calibration_and_uncertainty(run: Path, cells_2d: Path,
                                                                      tmp_path: Path) -> None:
    ckpt = copy_checkpoint(run / "best", tmp_path / "ckpt")
    cfg = read_config(ckpt)
    cfg.infer.postprocess = [PostprocessStep(classes=[1], op="min_size", size=30, gain=0.0)]
    cfg.infer.temperature = 1.5  # whatever the tiny run's fit gave: evaluate applies the config's
    rewrite_config(ckpt, cfg, json.loads((run / "best" / "config.json").read_text())["metrics"])
    out, report = tmp_path / "m.json", tmp_path / "r.html"
    proc = subprocess.run(
        [sys.executable, "-m", "unetseg", "evaluate", "--checkpoint", str(ckpt), "--data", str(cells_2d),
         "--out", str(out), "--report", str(report), "--tta", "--device", "cpu", "--precision", "fp32"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "calibration error (ECE" in proc.stderr and "most uncertain pixels hold" in proc.stderr
    result = json.loads(out.read_text())
    seg = unetseg.load(ckpt, device="cpu", precision="fp32", tta=True)
    for row, case in zip(result["per_image"], find_cases(cells_2d), strict=True):
        image, labels, _ = load_case(case, cfg.data, ClassMap(cfg.data.class_values))
        # the Dice of the post-processed labels, as predict writes them
        np.testing.assert_allclose(row["dice"], dice(seg.predict(image), labels, 2), atol=1e-6)
        assert 0 <= row["uncertainty"]["mutual_information"] <= row["uncertainty"]["entropy"] <= 1
    u, c = result["uncertainty"], result["calibration"]
    assert 0 <= u["auc"] <= u["auc_best"] <= 1 and u["pixels"] > 0
    found = [u["found_at"][k] for k in ("0.05", "0.1", "0.2")]
    assert found == sorted(found) and len(u["curve"]["checked"]) == 51
    assert sorted(u["least_sure"]) == sorted(r["case"] for r in result["per_image"])
    entropies = {r["case"]: r["uncertainty"]["entropy"] for r in result["per_image"]}
    assert [entropies[k] for k in u["least_sure"]] == sorted(entropies.values(), reverse=True)
    assert u["image_correlation"] is None or -1 <= u["image_correlation"] <= 1  # None: a constant Dice
    assert c["temperature"] == cfg.infer.temperature and 0 <= c["ece"] <= 1 and "ece_without_temperature" in c
    assert result["heldout"] == json.loads((run / "best" / "config.json").read_text())["metrics"]["heldout"]
    assert result["postprocess"] == [{"classes": [1], "op": "min_size", "size": 30, "gain": 0.0}]
    page = report.read_text()
    for anchor in ('id="ece"', 'id="uncertainty-auc"', 'id="least-sure"', 'id="postprocess"',
                   "remove components under 30 px of class 1", "Chosen on the validation images"):
        assert anchor in page
    assert page.index("least-sure") < page.index("<h2>Images</h2>")
