"""``train --folds K``: K models on folds of whole groups, out-of-fold predictions of every case, one report
whose means are the folds' numbers, the run predicting as the ensemble of its folds, ``--resume`` at the fold
it stopped in, what a K-fold run refuses, and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import unetseg
from reliability.helpers import assert_refused, run_inprocess
from unetseg.calibration import fit_heldout
from unetseg.config import Config
from unetseg.data.synthetic import make_dataset
from unetseg.evaluation.crossval import oof_pairs
from unetseg.inference.engines import EnsembleEngine, load_engine
from unetseg.inference.segmenter import Segmenter
from unetseg.io.images import read_image, read_mask
from unetseg.metrics import dice
from unetseg.training import TrainingInterrupted, train
from unetseg.training.interrupt import Termination

TINY = {"epochs": 2, "iters_per_epoch": 3, "batch_size": 2, "base_channels": 8, "depth": 2, "workers": 0,
        "precision": "fp32", "patch_size": [32, 32]}


def _groups(data: Path, folder: Path) -> Path:
    """Pairs of images as one patient each: case_000 and case_001 are P0, ..."""
    table = folder / "groups.csv"
    stems = sorted(p.stem for p in (data / "images").iterdir())
    table.write_text("stem,patient\n" + "".join(f"{s},P{i // 2}\n" for i, s in enumerate(stems)))
    return table


@pytest.fixture(scope="module")
def cv_run(cells_2d: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cv")
    table = _groups(cells_2d, root)
    unetseg.train(data=cells_2d, out=root / "RUN", plan=False, quiet=True, folds=2, groups=table, **TINY)
    return root / "RUN", table


def _record(run: Path) -> dict:
    return json.loads((run / "folds.json").read_text())


def test_folds_partition_whole_groups_and_every_case_has_its_out_of_fold_prediction(cv_run, cells_2d):
    run, _ = cv_run
    record = _record(run)
    folds = [f["cases"] for f in record["folds"]]
    stems = sorted(p.stem for p in (cells_2d / "images").iterdir())
    assert sorted(s for f in folds for s in f) == stems and all(f["state"] == "done" for f in record["folds"])
    patients = [{f"P{stems.index(s) // 2}" for s in f} for f in folds]
    assert patients[0].isdisjoint(patients[1])  # no patient on both sides
    assert [f["groups"] for f in record["folds"]] == [[f"P{stems.index(s) // 2}" for s in f] for f in folds]
    assert sorted(p.name for p in run.iterdir()) == ["cv.html", "cv.json", "fold_0", "fold_1", "folds.json",
                                                     "log.txt", "oof"]
    log = (run / "log.txt").read_text()
    assert "4 groups (--groups" in log and log.count("4 held-out cases (2 groups)") == 2
    for k, fold in enumerate(folds):
        model = unetseg.load(run / f"fold_{k}", precision="fp32")  # as the run scored it
        held = json.loads((run / f"fold_{k}" / "held_out.json").read_text())
        assert model.config.train.folds == 1 and held["num_images"] == len(fold)
        for stem in fold:
            oof = np.load(run / "oof" / f"{stem}.npz")
            probs, labels = oof["probabilities"], oof["labels"]
            assert probs.dtype == np.float16 and probs.shape == (2, 64, 64) and int(oof["fold"]) == k
            np.testing.assert_allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
            np.testing.assert_array_equal(labels, read_mask(cells_2d / "masks" / f"{stem}.png")[0] // 255)
            assert oof["spacing"].shape == (2,)
            image = read_image(cells_2d / "images" / f"{stem}.png")[0][0]
            # predicted by the fold that held it out, uncalibrated (the pooled fit's input)
            np.testing.assert_allclose(probs, at_temperature(run / f"fold_{k}", 1.0).predict_proba(image),
                                       atol=2e-3)


def test_the_cv_report_means_are_the_folds_numbers(cv_run):
    run, _ = cv_run
    cv = json.loads((run / "cv.json").read_text())
    assert cv["folds"] == 2 and "2 groups" not in cv["grouping"] and "4 groups" in cv["grouping"]
    held = [json.loads((run / f"fold_{k}" / "held_out.json").read_text()) for k in range(2)]
    record = _record(run)
    for k, fold in enumerate(cv["per_fold"]):
        assert fold["mean"] == held[k]["mean"] and fold["images"] == 4
        assert fold["validation_score"] == record["folds"][k]["validation_score"]
        # the fold's mean foreground Dice is that of its out-of-fold predictions (up to float16 rounding of
        # the stored probabilities near 0.5)
        scores = []
        for stem in record["folds"][k]["cases"]:
            oof = np.load(run / "oof" / f"{stem}.npz")
            scores.append(dice(oof["probabilities"].argmax(axis=0), oof["labels"], 2)[1])
        assert fold["mean_foreground_dice"] == pytest.approx(np.mean(scores), abs=5e-3)
    for metric, per_class in cv["across_folds"].items():
        for c, spread in enumerate(per_class):
            values = [f["mean"][metric][c] for f in cv["per_fold"]]
            assert spread["mean"] == pytest.approx(np.mean(values))
            assert spread["sd"] == pytest.approx(np.std(values, ddof=1))
    fg = [f["mean_foreground_dice"] for f in cv["per_fold"]]
    assert cv["mean_foreground_dice"] == {"mean": pytest.approx(np.mean(fg)),
                                          "sd": pytest.approx(np.std(fg, ddof=1))}
    page = (run / "cv.html").read_text()
    assert 'id="cv"' in page and "fold 0" in page and "fold 1" in page and "mean &plusmn; sd" in page
    from unetseg.training.api import TrainedRun

    read = TrainedRun.read(run)
    assert read.cv == cv and read.best == pytest.approx(np.mean(fg)) and len(read.metrics) == 2


def at_temperature(folder: Path, temperature: float) -> Segmenter:
    engine, cfg = load_engine(folder, "cpu", "fp32")
    cfg.infer.temperature = temperature
    return Segmenter(folder, engine, cfg)


def test_the_ensemble_s_temperature_and_post_processing_are_chosen_on_all_out_of_fold_predictions(cv_run):
    run, _ = cv_run
    pooled = _record(run)["pooled"]
    # nnU-Net's way: one choice on every training case, each predicted by the fold that did not see it
    again = fit_heldout(oof_pairs(run), source="out-of-fold", seed=0)
    fit = dict(pooled["fit"])
    assert fit.pop("ensemble_temperature") == 1.0
    assert "under-confident" in fit.pop("ensemble_temperature_note")
    assert fit == json.loads(json.dumps(again.to_dict()))
    assert fit["images"] == 8 and fit["source"] == "out-of-fold"
    # the fitted temperature is one fold's calibration (measured); in the ensemble the members stay at 1
    assert pooled["temperature"] == 1.0 and pooled["postprocess"] == again.postprocess
    assert json.loads((run / "cv.json").read_text())["pooled_fit"] == pooled["fit"]
    assert "Chosen on the out-of-fold predictions" in (run / "cv.html").read_text()
    assert "held-out calibration on 8 out-of-fold predictions" in (run / "log.txt").read_text()
    assert 'id="ensemble-temperature"' in (run / "cv.html").read_text()
    ensemble = unetseg.load(run)
    assert ensemble.engine.temperatures == [pooled["temperature"]] * 2
    assert [s.model_dump() for s in ensemble.config.infer.postprocess] == pooled["postprocess"]


def test_the_run_predicts_and_evaluates_as_the_ensemble_of_its_folds(cv_run, cells_2d, tmp_path, capsys):
    run, _ = cv_run
    seg = unetseg.load(run, precision="fp32")
    assert isinstance(seg.engine, EnsembleEngine) and seg.engine.folds == [0, 1]
    image = read_image(cells_2d / "images" / "case_000.png")[0][0]
    t = _record(run)["pooled"]["temperature"]  # every member at the ensemble's temperature (1)
    want = np.mean([at_temperature(run / f"fold_{k}", t).predict_proba(image) for k in range(2)], axis=0)
    np.testing.assert_allclose(seg.predict_proba(image), want, atol=1e-5)
    code, err = run_inprocess("evaluate", "--checkpoint", run, "--data", cells_2d, "--out",
                              tmp_path / "m.json", "--report", tmp_path / "r.html", capsys=capsys)
    assert code == 0, err
    assert 'id="cv"' in (tmp_path / "r.html").read_text()  # the report shows the cross-validation
    code, err = run_inprocess("predict", "--checkpoint", run, "--input", cells_2d / "images", "--output",
                              tmp_path / "one", "--folds", "1", capsys=capsys)
    assert code == 0, err
    np.testing.assert_array_equal(read_mask(tmp_path / "one" / "case_000.png")[0],
                                  unetseg.load(run / "fold_1").predict(image))


def test_resume_after_an_interrupt_goes_on_at_the_fold_it_stopped_in(cells_2d, tmp_path):
    run, cancel = tmp_path / "RUN", Termination()

    def stop_in_fold_1() -> None:  # as SIGTERM would, once the second fold has begun
        while not (run / "fold_1" / "log.txt").exists():
            time.sleep(0.002)
        cancel.request(0)

    watcher = threading.Thread(target=stop_in_fold_1, daemon=True)
    watcher.start()
    with pytest.raises(TrainingInterrupted, match=r"fold_1/last; resume with"):
        unetseg.train(data=cells_2d, out=run, plan=False, quiet=True, folds=2, cancel=cancel, **TINY)
    watcher.join(5)
    states = [f["state"] for f in _record(run)["folds"]]
    assert states == ["done", "training"] and not (run / "cv.json").exists()
    fold_0 = {p: p.stat().st_mtime_ns for p in (run / "fold_0").rglob("*") if p.is_file()}
    oof_0 = {p: p.stat().st_mtime_ns for p in (run / "oof").iterdir()}
    stopped = json.loads((run / "fold_1" / "last" / "config.json").read_text())["metrics"]
    unetseg.train(data=cells_2d, out=run, plan=False, quiet=True, resume=True, **TINY)  # no --folds needed
    assert [f["state"] for f in _record(run)["folds"]] == ["done", "done"]
    assert {p: p.stat().st_mtime_ns for p in (run / "fold_0").rglob("*") if p.is_file()} == fold_0
    assert all(p.stat().st_mtime_ns == t for p, t in oof_0.items())  # fold 0's scores were not redone
    log = (run / "fold_1" / "log.txt").read_text()
    where = f"resumed from {run / 'fold_1' / 'last'} at epoch {stopped['epoch']}, step {stopped['step']}"
    assert where in log
    assert "folds 0 done, 1 training" in (run / "log.txt").read_text()
    assert len(list((run / "oof").iterdir())) == 8 and (run / "cv.json").is_file()


def test_a_planned_run_plans_once_for_a_fold_s_share_of_the_whole_budget(cells_2d, tmp_path):
    run = tmp_path / "RUN"
    unetseg.train(data=cells_2d, out=run, quiet=True, folds=2, max_minutes=4, epochs=1, iters_per_epoch=2,
                  base_channels=8, workers=0, precision="fp32")
    recipe = (run / "plan.yaml").read_text()
    assert "max_minutes: 4.0" in recipe and "folds: 2" in recipe  # the recipe of the whole run
    assert "4 min given for the whole run, shared by 2 folds: 2 min each" in recipe
    record = _record(run)
    assert record["whole_minutes"] == 4.0 and record["per_fold_minutes"] == 2.0
    assert all(f["minutes_budget"] <= 2.0 for f in record["folds"])
    for k in range(2):
        fold = unetseg.load(run / f"fold_{k}").config
        assert fold.train.max_minutes == record["folds"][k]["minutes_budget"]


def test_an_instance_model_s_cross_validation_reports_its_object_metrics(tmp_path):
    data = make_dataset(tmp_path / "nuclei", n=4, size=(48, 48), kind="nuclei", seed=0)
    run = tmp_path / "RUN"
    unetseg.train(data=data, out=run, plan=False, quiet=True, folds=2, task="instances",
                  **{**TINY, "epochs": 1})
    cv = json.loads((run / "cv.json").read_text())
    assert {"dsb", "ap50", "aji", "pq"} <= set(cv["objects"]) and "mean_objects" in cv["per_fold"][0]
    dsb = [f["mean_objects"]["dsb"] for f in cv["per_fold"]]
    assert cv["objects"]["dsb"]["mean"] == pytest.approx(np.mean(dsb))
    oof = np.load(next((run / "oof").iterdir()))
    assert oof["probabilities"].shape[0] == 3 and oof["labels"].max() >= 1  # 3-class map; object ids


@pytest.mark.parametrize(("extra", "needles"), [
    (["--folds", "3", "--val-data", "{data}"], ["--val-data has no place in a K-fold run"]),
    (["--folds", "3", "--probe", "on"], ["runs no resolution probe"]),
    (["--folds", "3", "--cascade", "on"], ["never a cascade"]),
    (["--folds", "3", "--max-minutes", "4"],
     ["--folds 3 with --max-minutes 4: 1.3 min per fold", "--max-minutes 6 or more, or --folds 2"]),
    (["--folds", "9", "--no-plan"], ["--folds 9:", "holds 8 images", "2 <= K <= 8"]),
    (["--folds", "5", "--no-plan", "--groups", "{groups}"], ["--folds 5:", "holds 4 groups"]),
    (["--groups-pattern", "^(x"], ["--groups-pattern '^(x': not a regular expression"]),
])
def test_what_a_k_fold_run_refuses_is_one_line_before_any_work(cv_run, cells_2d, tmp_path, capsys, extra,
                                                               needles):
    _, groups = cv_run
    args = [a.format(data=cells_2d, groups=groups) for a in extra]
    code, err = run_inprocess("train", "--data", cells_2d, "--out", tmp_path / "R", *args, capsys=capsys)
    assert_refused(code, err, *needles)
    assert not (tmp_path / "R").exists()


def test_an_image_without_a_group_is_one_line_naming_it_and_the_file(cells_2d, tmp_path, capsys):
    table = tmp_path / "g.csv"
    table.write_text("case_000,a\ncase_001,a\n")
    code, err = run_inprocess("train", "--data", cells_2d, "--out", tmp_path / "R", "--groups", table,
                              "--folds", "2", capsys=capsys)
    assert_refused(code, err, f"{table}: no group for 'case_002'", "case_002.png")
    code, err = run_inprocess("train", "--data", cells_2d, "--out", tmp_path / "R", "--groups", table,
                              capsys=capsys)  # a single model's validation split too
    assert_refused(code, err, f"{table}: no group for 'case_002'")


def test_resume_cannot_change_the_kind_of_run(cv_run, cells_2d, tmp_path, capsys):
    run, _ = cv_run
    code, err = run_inprocess("train", "--data", cells_2d, "--out", run, "--resume", "--folds", "3",
                              "--no-plan", capsys=capsys)
    assert_refused(code, err, "a 2-fold run; --folds 3 cannot resume it")
    single = tmp_path / "single"
    cfg = Config()
    cfg.data.data, cfg.train.out, cfg.data.num_workers = str(cells_2d), str(single), 0
    cfg.model.base_channels, cfg.model.depth, cfg.data.patch_size = 4, 2, [32, 32]
    cfg.train.epochs, cfg.train.iters_per_epoch, cfg.train.precision = 1, 1, "fp32"
    train(cfg, quiet=True)
    code, err = run_inprocess("train", "--data", cells_2d, "--out", single, "--resume", "--folds", "2",
                              "--no-plan", capsys=capsys)
    assert_refused(code, err, "a single-model run; --folds 2 cannot continue it")


def test_torchrun_runs_the_same_folds_on_every_rank(cells_2d, tmp_path):
    run = tmp_path / "RUN"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(Path(__file__).with_name("ddp_folds_job.py")), str(cells_2d), str(run)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [f["state"] for f in _record(run)["folds"]] == ["done", "done"]
    assert len(list((run / "oof").iterdir())) == 8  # each rank scored its share of every fold's cases
    cv = json.loads((run / "cv.json").read_text())
    assert [f["images"] for f in cv["per_fold"]] == [4, 4]
    assert (run / "log.txt").read_text().count("cross-validation over 2 folds") == 1
    for k in range(2):
        assert "world size 2" in (run / f"fold_{k}" / "log.txt").read_text()


def test_the_benchmark_runs_end_to_end_in_its_smoke_mode(tmp_path, capsys):
    """``benchmarks/cross_validation.py --smoke`` (benchmarks/ is scripts: imported by path)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "cross_validation.py"
    spec = importlib.util.spec_from_file_location("cross_validation_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--smoke", "--work", str(tmp_path)])
    assert len(rows) == 1 and len(rows[0]["test_each_fold"]) == 2 and rows[0]["test"] >= 2
    assert 0 <= rows[0]["test_ensemble"] <= 1 and rows[0]["cv_dice"]["sd"] is not None
    assert json.loads((tmp_path / "cross_validation.json").read_text()) == rows
    for model in ("ensemble_trust", "single_trust"):  # with and without the held-out choices, on the test set
        t = rows[0][model]
        assert 0 <= t["ece_raw"] <= 1 and 0 <= t["ece"] <= 1 and 0 <= t["dice_raw"] <= 1
        assert 0 <= t["errors_found_auc"] <= t["errors_found_auc_best"] <= 1
    assert rows[0]["pooled_oof_fit"]["images"] == 12 - rows[0]["test"]
    out = capsys.readouterr().out
    assert "| smoke | 0 |" in out and "| smoke | 0 | ensemble | pooled OOF" in out


def test_a_fine_tune_is_cross_validated_from_the_same_model_in_every_fold(cv_run, cells_2d, tmp_path):
    source, _ = cv_run
    run = tmp_path / "FT"
    unetseg.train(data=cells_2d, out=run, plan=False, quiet=True, folds=2, init_from=source / "fold_0",
                  **{**TINY, "epochs": 1})
    for k in range(2):
        init = json.loads((run / f"fold_{k}" / "init.json").read_text())
        assert init["source"] == str((source / "fold_0" / "best").resolve()) and init["copied"] > 0
    assert json.loads((run / "cv.json").read_text())["folds"] == 2


def test_plan_shows_what_each_fold_gets(cells_2d, tmp_path, capsys):
    code, err = run_inprocess("plan", "--data", cells_2d, "--max-minutes", "6", "--folds", "3", "--out",
                              tmp_path / "plan.yaml", capsys=capsys)
    assert code == 0, err
    assert "6 min given for the whole run, shared by 3 folds: 2 min each" in " ".join(err.split())
    recipe = (tmp_path / "plan.yaml").read_text()
    assert "max_minutes: 6.0" in recipe and "folds: 3" in recipe


def test_a_fold_that_ran_over_shortens_the_later_ones_and_unused_minutes_are_not_handed_on():
    from unetseg.training.crossval import Fold, FoldRun, _share

    def record(spent: list[float]) -> FoldRun:
        folds = [Fold([], [], 2.0, "done", m) for m in spent] + [Fold([], []) for _ in range(5 - len(spent))]
        return FoldRun(folds, 0, "", "", 10.0, 2.0, "")

    assert _share(record([]), 0) == 2.0
    assert _share(record([3.0, 2.5]), 2) == pytest.approx(1.5)  # 4.5 minutes left for 3 folds
    assert _share(record([1.0]), 1) == 2.0  # a fold that stopped early: the next gets its own share only
    assert _share(record([6.0, 3.0]), 2) == 1.0  # at least half the planned share
