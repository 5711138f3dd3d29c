"""The trainer end to end on tiny synthetic data: run files, resume after SIGKILL, NaN stop, time budget."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import unetseg
from unetseg.config import Config
from unetseg.errors import TrainingError
from unetseg.training import train


def tiny_config(data: Path, out: Path, **train_opts) -> Config:
    cfg = Config()
    cfg.data.data = str(data)
    cfg.data.patch_size = [32, 32]
    cfg.data.num_workers = 0
    cfg.model.base_channels = 4
    cfg.model.depth = 2
    cfg.train.out = str(out)
    cfg.train.epochs = 2
    cfg.train.iters_per_epoch = 3
    cfg.train.batch_size = 2
    cfg.train.precision = "fp32"
    for k, v in train_opts.items():
        setattr(cfg.train, k, v)
    return cfg


def test_training_writes_the_run_folder(cells_2d: Path, tmp_path: Path) -> None:
    run = train(tiny_config(cells_2d, tmp_path / "run"), quiet=True)
    for sub in ("best", "last"):
        assert (run / sub / "model.safetensors").is_file()
        assert (run / sub / "config.json").is_file()
    assert (run / "last" / "state.pt").is_file()
    assert not (run / "best" / "state.pt").exists()
    for name in ("metrics.csv", "curves.png", "log.txt"):
        assert (run / name).stat().st_size > 0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    best = json.loads((run / "best" / "config.json").read_text())["metrics"]
    assert best["val_dice"] == pytest.approx(max(float(r["val_dice"]) for r in rows), abs=1e-5)
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["data"]["class_values"] == [0, 255]
    assert config["model"]["num_classes"] == 2
    assert config["data"]["patch_size"] == [32, 32]
    assert "torch" in config["versions"] and "val_dice" in config["metrics"]
    model, cfg = unetseg.load_checkpoint(run)
    labels = unetseg.predict(model, np.random.rand(40, 50).astype(np.float32), config=cfg)
    assert labels.shape == (40, 50) and labels.dtype.kind in "iu"


def _launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "unetseg", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _train_args(data: Path, run: Path) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--base-channels",
        "4",
        "--depth",
        "2",
        "--patch-size",
        "32",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "6",
        "--iters-per-epoch",
        "12",
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--seed",
        "3",
        "--no-plan",  # the same recipe for both runs (a plan follows the measured speed)
    ]


def _epochs_done(run: Path) -> int:
    try:
        return max(0, len((run / "metrics.csv").read_text().strip().splitlines()) - 1)
    except (FileNotFoundError, csv.Error):
        return 0


def test_resume_after_sigkill_matches_an_uninterrupted_run(cells_2d: Path, tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = _launch(_train_args(cells_2d, killed))
    deadline = time.monotonic() + 240
    while _epochs_done(killed) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.4)  # into the middle of the third epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_at_kill = _epochs_done(killed)
    assert 2 <= done_at_kill < 6

    resumed = _launch([*_train_args(cells_2d, killed), "--resume"])
    reference = _launch(_train_args(cells_2d, full))
    for p in (resumed, reference):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a = load_file(str(full / "last" / "model.safetensors"))
    b = load_file(str(killed / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"
    assert [int(r["epoch"]) for r in csv.DictReader((killed / "metrics.csv").open())] == [1, 2, 3, 4, 5, 6]
    assert "resumed from" in (killed / "log.txt").read_text()


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(cells_2d: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cells_2d, tmp_path / "run", epochs=1)
    train(cfg, quiet=True)
    good = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    cfg = tiny_config(cells_2d, tmp_path / "run", epochs=50, lr=1e30, optimizer="sgd", grad_clip=None)
    with pytest.raises(TrainingError, match=r"at step \d+"):
        train(cfg, quiet=True, overwrite=True)  # fails before its first checkpoint: the old run comes back
    assert not (tmp_path / ".run.previous").exists()
    kept = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert all(torch.equal(good[k], kept[k]) for k in good)


def _nan_gradients(trainer, steps: int) -> None:
    """The first ``steps`` backward passes give one weight a NaN gradient (as a faulty kernel did)."""
    left = [steps]

    def poison(grad: torch.Tensor) -> torch.Tensor:
        left[0] -= 1
        return grad * float("nan") if left[0] >= 0 else grad

    next(trainer.model.parameters()).register_hook(poison)


def _trainer(cfg: Config):
    from unetseg.training.distributed import DistInfo
    from unetseg.training.run import open_run
    from unetseg.training.trainer import Trainer

    folder = open_run(Path(cfg.train.out), resume=False, overwrite=False, inputs=[], main=True)
    return Trainer(cfg, torch.device("cpu"), DistInfo(), folder, resume=False, quiet=True)


@pytest.mark.parametrize("grad_clip", [12.0, None])
def test_a_step_with_nan_gradients_is_skipped_and_the_weights_stay_finite(cells_2d, tmp_path, grad_clip):
    """A finite loss with NaN gradients (clipping spreads one NaN into every gradient): the step is skipped,
    training goes on, and no NaN reaches the weights or the checkpoints; with and without clipping (whose
    norm the check reuses)."""
    trainer = _trainer(tiny_config(cells_2d, tmp_path / "run", epochs=2, grad_clip=grad_clip))
    _nan_gradients(trainer, 2)
    run = trainer.fit()
    assert trainer.step == 6
    for folder in ("last", "best"):
        weights = load_file(str(run / folder / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())
    log = (run / "log.txt").read_text()
    assert log.count("step skipped, weights unchanged") == 2 and "at step 2 " in log


def test_nan_gradients_step_after_step_stop_the_run(cells_2d: Path, tmp_path: Path) -> None:
    from unetseg.training.trainer import MAX_BAD_GRAD_STEPS

    trainer = _trainer(tiny_config(cells_2d, tmp_path / "run", epochs=4))
    _nan_gradients(trainer, 100)
    with pytest.raises(TrainingError, match=f"NaN/inf in {MAX_BAD_GRAD_STEPS} steps in a row up to step "
                                            f"{MAX_BAD_GRAD_STEPS} "):
        trainer.fit()


def test_max_minutes_stops_cleanly_with_a_final_checkpoint(cells_2d: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cells_2d, tmp_path / "run", epochs=10_000, max_minutes=0.05)
    run = train(cfg, quiet=True)
    assert (run / "last" / "model.safetensors").is_file()
    assert (run / "best" / "model.safetensors").is_file()
    assert "budget" in (run / "log.txt").read_text()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[-1]["minutes"]) >= 0.05  # stopped by the clock, not by the epochs
    assert float(rows[-1]["lr"]) < 0.1 * cfg.train.lr  # the schedule followed the clock down to the budget


def test_yaml_config_with_command_line_overrides(cells_2d: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model:\n  name: res_unet\n  base_channels: 4\n  depth: 2\n  options: {norm: instance}\n"
        "train: {epochs: 1, iters_per_epoch: 2, batch_size: 2, lr: 0.5}\n"
        "data: {patch_size: [32, 32], num_workers: 0}\n"
    )
    run = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unetseg",
            "train",
            "--config",
            str(recipe),
            "--data",
            str(cells_2d),
            "--out",
            str(run),
            "--lr",
            "0.002",
            "--option",
            "activation=gelu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["model"]["name"] == "res_unet"
    assert saved["model"]["options"] == {"norm": "instance", "activation": "gelu"}
    assert saved["train"]["lr"] == 0.002 and saved["train"]["batch_size"] == 2


def test_bad_option_is_one_line_and_exit_2(cells_2d: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unetseg",
            "train",
            "--data",
            str(cells_2d),
            "--out",
            str(tmp_path / "r"),
            "--model",
            "vnet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "vnet" in lines[0] and "unet" in lines[0]  # checked before any data is read


def test_a_3d_patch_without_the_planner_takes_the_dimensionality_from_the_data(cells_3d, tmp_path, capsys):
    """--no-plan with a 3D patch on 3D data: the model's dimensionality comes from the data, so the patch
    is not refused as "3 sizes but the model is 2D"; a 3D tile for 2D data still is, before training."""
    from reliability.helpers import assert_refused, run_inprocess

    base = ["--no-plan", "--epochs", "1", "--iters-per-epoch", "1", "--base-channels", "4", "--depth", "2",
            "--workers", "0", "--batch-size", "1"]
    code, err = run_inprocess("train", "--data", cells_3d, "--out", tmp_path / "A", "--patch-size", "8", "16",
                              "16", *base, capsys=capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "A" / "last" / "config.json").read_text())
    assert saved["model"]["spatial_dims"] == 3 and saved["data"]["patch_size"] == [8, 16, 16]
    code, err = run_inprocess("train", "--data", cells_3d, "--out", tmp_path / "B", "--patch-size", "8", "16",
                              *base, capsys=capsys)
    assert_refused(code, err, "--patch-size 8 16 has 2 sizes")
    assert not (tmp_path / "B" / "last").exists()


def test_a_row_lost_between_the_checkpoint_and_metrics_csv_comes_back_on_resume(cells_2d, tmp_path):
    """A kill after an epoch's checkpoint and before its metrics row: the checkpoint carries the row."""
    cfg = Config()
    cfg.data.data, cfg.data.num_workers, cfg.data.patch_size = str(cells_2d), 0, [32, 32]
    cfg.model.base_channels, cfg.model.depth = 4, 2
    cfg.train.out, cfg.train.epochs, cfg.train.iters_per_epoch, cfg.train.batch_size = str(tmp_path), 2, 2, 2
    train(cfg, quiet=True)
    lines = (tmp_path / "metrics.csv").read_text().splitlines(keepends=True)
    (tmp_path / "metrics.csv").write_text("".join(lines[:-1]))  # the kill: epoch 2's row never written
    cfg.train.epochs = 3
    train(cfg, resume=True, quiet=True)
    assert [int(r["epoch"]) for r in csv.DictReader((tmp_path / "metrics.csv").open())] == [1, 2, 3]
