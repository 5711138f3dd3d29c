"""Training at a coarser resolution (``data.downsample``): the training arrays on the model's grid, the
validation scored at the images' own grid, predictions back at the input's size, in 2D and 3D."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from unetseg.config import Config
from unetseg.training import train


def _config(data: Path, out: Path) -> Config:
    cfg = Config()
    cfg.data.data, cfg.data.num_workers = str(data), 0
    cfg.model.base_channels = 4
    cfg.train.out, cfg.train.precision, cfg.train.batch_size = str(out), "fp32", 2
    cfg.train.epochs, cfg.train.iters_per_epoch = 2, 5
    return cfg


def test_validation_of_a_coarser_model_scores_what_predict_writes(tmp_path: Path) -> None:
    """A model trained at a coarser resolution is validated at the images' own grid: the run's validation
    Dice is the Dice ``evaluate`` reports for the same checkpoint and images."""
    from unetseg.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "train", n=6, size=(80, 96), kind="lesions", seed=3)
    val = make_dataset(tmp_path / "val", n=3, size=(75, 90), kind="lesions", seed=4)
    cfg = _config(data, tmp_path / "RUN")
    cfg.data.val_data = str(val)
    cfg.data.downsample, cfg.data.patch_size, cfg.model.depth = [2.5, 2.5], [32, 48], 3
    run = train(cfg, quiet=True)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    proc = subprocess.run([sys.executable, "-m", "unetseg", "evaluate", "--checkpoint", str(run / "last"),
                           "--data", str(val), "--out", str(tmp_path / "m.json"), "--device", "cpu",
                           "--precision", "fp32"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["per_image"][0]["dice"] and float(rows[-1]["val_dice"]) == pytest.approx(
        result["mean"]["dice"][1], abs=2e-4)


def test_a_3d_low_resolution_model_trains_coarse_and_predicts_the_inputs_grid(cells_3d: Path,
                                                                            tmp_path: Path) -> None:
    """3D: the low-resolution stage is the target spacing times data.downsample (in-plane here); the
    store holds the coarse arrays, and a volume is predicted back on its own grid."""
    import unetseg
    from unetseg.data.prepare import prepare_data
    from unetseg.io.images import read_image

    cfg = _config(cells_3d, tmp_path / "RUN")
    cfg.model.spatial_dims = 3
    cfg.data.spacing, cfg.data.downsample = [2.0, 1.0, 1.0], [1.0, 2.0, 2.0]
    cfg.data.patch_size, cfg.model.depth = [16, 16, 16], 2
    data = prepare_data(cfg)
    case = data.train_cases[0]
    image, labels, meta = data.store.get(case)
    assert image.shape[1:] == labels.shape == (16, 16, 16)  # 16x32x32 at (2, 1, 1) -> (2, 2, 2) spacing
    assert meta["original_shape"] == (16, 32, 32) and meta["spacing"] == (2.0, 2.0, 2.0)
    run = train(cfg, quiet=True)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert rows and rows[-1]["val_dice"]
    volume, vmeta = read_image(case.image_paths[0])
    labels_out = unetseg.predict(str(run), volume, spacing=vmeta["spacing"], device="cpu", precision="fp32")
    assert labels_out.shape == volume.shape[1:] == (16, 32, 32)


def test_the_plan_fills_the_runs_config_not_the_callers(tmp_path: Path) -> None:
    """``train`` plans (resolution, patch, norm...) into its own copy: the caller's Config is unchanged and
    the run's config.json holds the planned values."""
    from unetseg.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "train", n=4, size=(64, 80), kind="lesions", seed=5)
    cfg = _config(data, tmp_path / "RUN")
    cfg.train.max_minutes = 0.05
    before = cfg.model_dump()
    run = train(cfg, quiet=True, given={"data.data", "train.out", "train.max_minutes"})
    assert cfg.model_dump() == before
    saved = json.loads((run / "last" / "config.json").read_text())
    planned = saved["data"]["patch_size"]
    assert planned is not None and planned != before["data"]["patch_size"]
