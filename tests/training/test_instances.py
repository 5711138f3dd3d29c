"""The instance task end to end through the command line: train on instance masks (the 3-class target and
the distance target), predict object ids and their table, evaluate the object metrics (JSON and report)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetseg.config import build_config, config_from_dict
from unetseg.config.schema import DISTANCE_BINS
from unetseg.data.synthetic import make_dataset, make_image
from unetseg.errors import ConfigError
from unetseg.validate import check_config


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetseg", *args], capture_output=True, text=True,
                          timeout=300)


def test_the_synthetic_nuclei_masks_are_instance_ids() -> None:
    image, ids = make_image("nuclei", (96, 96), seed=3)
    cells_image, cells = make_image("cells", (96, 96), seed=3)
    np.testing.assert_array_equal(image, cells_image)  # the same picture, with one id per object
    np.testing.assert_array_equal(ids > 0, cells > 0)
    assert ids.dtype == np.uint16 and set(np.unique(ids)) == set(range(int(ids.max()) + 1))
    assert ids.max() >= 5


def _train_tiny(root: Path, *extra: str) -> tuple[Path, Path]:
    data = make_dataset(root / "data", n=5, size=(80, 80), kind="nuclei", seed=1)
    run = root / "run"
    proc = _cli("train", "--task", "instances", "--data", str(data), "--out", str(run), "--no-plan",
                "--patch-size", "48", "48", "--epochs", "2", "--iters-per-epoch", "3", "--batch-size", "2",
                "--base-channels", "4", "--depth", "2", "--precision", "fp32", "--workers", "0",
                "--val-fraction", "0.4", *extra)
    assert proc.returncode == 0, proc.stderr
    return data, run


@pytest.fixture(scope="module")
def instance_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _train_tiny(tmp_path_factory.mktemp("instances"))


@pytest.fixture(scope="module")
def distance_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("distance")
    recipe = root / "distance.yaml"
    # the weight map too, so its border term is computed beside the distance target
    recipe.write_text("data: {instance_target: distance}\ntrain: {loss_options: {weight_map: true}}\n")
    return _train_tiny(root, "--config", str(recipe))


def test_training_records_the_task_and_validates_objects(instance_run) -> None:
    _, run = instance_run
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["data"]["task"] == "instances" and config["model"]["num_classes"] == 3
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 and all(0.0 <= float(r["val_dsb"]) <= 1.0 for r in rows)


def _object_ids(out: Path, stem: str) -> tuple[np.ndarray, list[int]]:
    """The uint16 ids predict wrote for ``stem`` (80x80) and the ids present, checked to be 1..N."""
    ids = tifffile.imread(out / f"{stem}.tif")
    assert ids.shape == (80, 80) and ids.dtype == np.uint16
    present = sorted(int(v) for v in np.unique(ids) if v)
    assert present == list(range(1, len(present) + 1))  # ids 1..N, no gaps
    return ids, present


def test_predict_writes_object_ids_and_their_table(instance_run, tmp_path: Path) -> None:
    data, run = instance_run
    out = tmp_path / "pred"
    proc = _cli("predict", "--checkpoint", str(run), "--input", str(data / "images"), "--output", str(out),
                "--overlay", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    for image in sorted((data / "images").iterdir()):
        stem = image.name.split(".")[0]
        ids, present = _object_ids(out, stem)
        with (out / f"{stem}_objects.csv").open() as f:
            table = list(csv.DictReader(f))
        assert [int(r["id"]) for r in table] == present
        for r in table:
            assert int(r["area"]) == int((ids == int(r["id"])).sum())
        if table:
            assert {"centroid_0", "bbox_0_start", "bbox_1_stop", "mean_intensity_c0"} <= set(table[0])
        assert (out / f"{stem}_overlay.png").stat().st_size > 0
    assert not list(out.glob("*.png")) or all(p.name.endswith("_overlay.png") for p in out.glob("*.png"))


def test_the_distance_target_trains_and_predicts_object_ids(distance_run, tmp_path: Path) -> None:
    data, run = distance_run
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["data"]["instance_target"] == "distance"
    assert config["model"]["num_classes"] == 1 + DISTANCE_BINS
    assert config["data"]["class_values"] == list(range(1 + DISTANCE_BINS))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2 and all(0.0 <= float(r["val_dsb"]) <= 1.0 for r in rows)
    out = tmp_path / "pred"
    proc = _cli("predict", "--checkpoint", str(run), "--input", str(data / "images"), "--output", str(out),
                "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    for image in sorted((data / "images").iterdir()):
        stem = image.name.split(".")[0]
        _, present = _object_ids(out, stem)
        with (out / f"{stem}_objects.csv").open() as f:
            assert [int(r["id"]) for r in csv.DictReader(f)] == present


def test_a_bad_instance_target_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.instance_target") as err:
        build_config([({"data": {"instance_target": "watershed"}}, "recipe.yaml")])
    assert "\n" not in str(err.value) and "recipe.yaml" in str(err.value)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data: {task: instances, instance_target: watershed}\n")
    proc = _cli("train", "--config", str(recipe), "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "data.instance_target" in proc.stderr and "watershed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="needs 5 classes but model.num_classes is 3"):
        check_config(config_from_dict({"model": {"num_classes": 3}, "data": {
            "task": "instances", "instance_target": "distance", "class_values": [0, 1, 2],
            "patch_size": [32, 32]}}), "ckpt", trained=True)


def test_mask_values_do_not_apply_to_an_instance_model(instance_run, tmp_path: Path) -> None:
    data, run = instance_run
    proc = _cli("predict", "--checkpoint", str(run), "--input", str(data / "images"), "--output",
                str(tmp_path / "o"), "--mask-values", "original")
    assert proc.returncode == 2 and "--mask-values does not apply" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_evaluate_reports_the_object_metrics(instance_run, tmp_path: Path) -> None:
    data, run = instance_run
    out, report = tmp_path / "m.json", tmp_path / "report.html"
    proc = _cli("evaluate", "--checkpoint", str(run), "--data", str(data), "--out", str(out), "--report",
                str(report), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    means = result["mean_objects"]
    assert {"dsb", "ap50", "f1_50", "pq", "sq", "rq", "aji"} <= set(means)
    per_image = [r["objects"] for r in result["per_image"]]
    assert len(per_image) == 5
    assert means["dsb"] == pytest.approx(float(np.mean([r["dsb"] for r in per_image])), abs=1e-9)
    assert all(r["n_true"] >= 1 for r in per_image)
    html = report.read_text()
    assert "dsb" in html and "aji" in html
