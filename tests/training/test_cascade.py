"""A cascade: a coarse first stage that sees the whole object, then a full-resolution second stage that also
sees the first stage's prediction; the better one on the validation images is the run's model, predicted
in memory (checkpoint and ONNX) as the two stages composed by hand, resumed in the stage it stopped in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import unetseg
from reliability.helpers import assert_refused, run_inprocess
from training.test_probe import _rings
from unetseg.config import Config
from unetseg.data.normalize import normalize
from unetseg.errors import CheckpointError
from unetseg.export import export_model
from unetseg.inference.predictor import Predictor
from unetseg.io.images import read_image, read_mask, write_image, write_mask
from unetseg.metrics import dice
from unetseg.postprocess.semantic import apply_postprocessing
from unetseg.training import train
from unetseg.training.cascade import CASCADE_MINUTES, CascadeState, keep, second_stage, skip_reason
from unetseg.training.distributed import DistInfo
from unetseg.training.interrupt import Termination
from unetseg.training.run import RunFolder
from unetseg.training.runlog import RunLogger


def _config(data: Path, out: Path, epochs: int = 15) -> Config:
    """Rings 4x coarser with a 16 px patch (the whole 64 px image) in the first stage; the second stage at
    full resolution keeps the 16 px patch, which alone cannot tell inside from outside: only the prior can."""
    cfg = Config()
    cfg.data.data, cfg.data.num_workers, cfg.data.val_fraction = str(data), 0, 0.25
    cfg.model.base_channels, cfg.model.depth = 8, 2
    cfg.data.downsample, cfg.data.patch_size = [4.0, 4.0], [16, 16]
    cfg.train.out, cfg.train.cascade = str(out), "on"
    cfg.train.batch_size, cfg.train.iters_per_epoch, cfg.train.epochs = 4, 20, epochs
    cfg.train.precision, cfg.train.lr = "fp32", 2e-3
    return cfg


@pytest.fixture(scope="module")
def rings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _rings(tmp_path_factory.mktemp("cascade") / "rings", 16)


@pytest.fixture(scope="module")
def cascade_run(rings: Path) -> Path:
    torch.manual_seed(0)
    return train(_config(rings, rings.parent / "RUN"), quiet=True)


def _state(run: Path) -> dict:
    return json.loads((run / "cascade.json").read_text())


def _saved(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_the_second_stage_uses_the_first_stages_prediction_and_replaces_it_when_better(cascade_run, rings):
    state = _state(cascade_run)
    assert state["stage"] == "done" and state["kept"] == "cascade"
    assert state["stage2_score"] > state["stage1_score"] and state["stage2_score"] > 0.9
    second, first = _saved(cascade_run / "best"), _saved(cascade_run / "best" / "stage1")
    assert second["data"]["prior_channels"] == 1 and second["model"]["in_channels"] == 2
    assert second["data"]["downsample"] is None and first["data"]["downsample"] == [4.0, 4.0]
    assert first["data"]["prior_channels"] == 0
    assert (cascade_run / "cascade" / "last" / "stage1" / "model.safetensors").is_file()  # each one whole
    assert "cascade: validation" in (cascade_run / "log.txt").read_text()
    # the second stage relies on the prior: without it (zeros) its 16 px view cannot find the discs' insides
    model, cfg = unetseg.load_checkpoint(cascade_run)
    first_stage = unetseg.load_checkpoint(cascade_run / "best" / "stage1")
    with_prior, without = [], []
    for name in sorted(p.name for p in (rings / "images").iterdir())[-4:]:
        image = read_image(rings / "images" / name)[0]
        truth = (read_mask(rings / "masks" / name)[0] > 0).astype(np.int64)
        prior = (unetseg.predict(first_stage[0], image, config=first_stage[1]) == 1).astype(np.float32)
        x = normalize(image.astype(np.float32), cfg.data)
        run = Predictor(model, tile=cfg.data.patch_size)
        with_prior.append(dice(run.predict(np.concatenate([x, prior[None]])), truth, 2)[1])
        without.append(dice(run.predict(np.concatenate([x, 0 * prior[None]])), truth, 2)[1])
    assert np.mean(with_prior) > np.mean(without) + 0.2


def test_predict_runs_both_stages_as_composed_by_hand_and_onnx_carries_both(cascade_run, rings, tmp_path):
    image = read_image(next((rings / "images").iterdir()))[0]
    labels = unetseg.predict(cascade_run, image)
    first, cfg1 = unetseg.load_checkpoint(cascade_run / "best" / "stage1")
    model, cfg = unetseg.load_checkpoint(cascade_run)
    prior = (unetseg.predict(first, image, config=cfg1) == 1).astype(np.float32)
    x = np.concatenate([normalize(image.astype(np.float32), cfg.data), prior[None]])
    # the second stage's own temperature and post-processing, chosen on the validation images (issue 24)
    second = Predictor(model, tile=cfg.data.patch_size, overlap=0.25, temperature=cfg.infer.temperature)
    raw = second.predict(x)
    by_hand = apply_postprocessing(raw, cfg.infer.postprocess)
    assert labels.shape == image.shape[-2:] and (labels == by_hand).mean() > 0.999
    assert (labels != prior).any()  # the second stage changed the first stage's answer somewhere
    out = tmp_path / "m.onnx"
    export_model(cascade_run, "onnx", out)
    assert (tmp_path / "m.stage1.onnx").is_file()
    assert (unetseg.predict(out, image) == labels).mean() > 0.99
    (tmp_path / "m.stage1.onnx").rename(tmp_path / "elsewhere.onnx")
    with pytest.raises(CheckpointError, match="m.stage1.onnx is missing"):
        unetseg.predict(out, image)


def test_a_second_stage_without_its_first_or_streamed_is_refused_in_one_line(cascade_run, rings, tmp_path,
                                                                             capsys):
    alone = tmp_path / "alone"
    shutil.copytree(cascade_run / "best", alone, ignore=shutil.ignore_patterns("stage1"))
    code, err = run_inprocess("predict", "--checkpoint", alone, "--input", rings / "images",
                              "--output", tmp_path / "p1", capsys=capsys)
    assert_refused(code, err, "first stage", str(alone / "stage1"))
    code, err = run_inprocess("predict", "--checkpoint", cascade_run, "--input", rings / "images",
                              "--output", tmp_path / "p2", "--output-format", "ome-zarr", capsys=capsys)
    assert_refused(code, err, "only in memory")
    assert not (tmp_path / "p2").exists() or not any((tmp_path / "p2").iterdir())  # before any work


def test_resume_goes_on_with_the_second_stage(cascade_run, tmp_path):
    run = tmp_path / "RUN"
    shutil.copytree(cascade_run, run)
    state = _state(run)
    state.update(stage="2", kept=None)
    (run / "cascade.json").write_text(json.dumps(state))
    stage1_rows = (run / "metrics.csv").read_text()
    rows = len((run / "cascade" / "metrics.csv").read_text().splitlines())
    cfg = _config(Path(_saved(run / "best" / "stage1")["data"]["data"]), run, epochs=17)
    train(cfg, resume=True, quiet=True)
    assert (run / "metrics.csv").read_text() == stage1_rows  # the first stage did not train again
    assert len((run / "cascade" / "metrics.csv").read_text().splitlines()) == rows + 2  # epochs 16, 17
    assert _state(run)["stage"] == "done"


def test_the_first_stage_stays_when_the_second_does_not_validate_better(cascade_run, tmp_path):
    run = tmp_path / "RUN"
    shutil.copytree(cascade_run, run, ignore=shutil.ignore_patterns("best"))
    shutil.copytree(cascade_run / "best" / "stage1", run / "best")
    log = RunLogger(run, enabled=True, quiet=True)
    state = CascadeState(stage="2", stage1_score=0.9)
    keep(state, 0.85, run, DistInfo(), log)
    assert state.kept == "first stage" and _saved(run / "best")["data"]["prior_channels"] == 0
    assert "the coarse first stage stays" in (run / "log.txt").read_text()
    keep(CascadeState(stage="2", stage1_score=0.9), 0.95, run, DistInfo(), log)
    assert _saved(run / "best")["data"]["prior_channels"] == 1 and (run / "best" / "stage1").is_dir()


def test_the_second_stage_starts_from_the_probes_full_resolution_trial(cascade_run, rings, tmp_path):
    run = tmp_path / "RUN"
    shutil.copytree(cascade_run, run, ignore=shutil.ignore_patterns("best", "cascade"))
    shutil.copytree(cascade_run / "best" / "stage1", run / "best")
    shutil.copytree(cascade_run / "best" / "stage1", run / "probe" / "full" / "last")  # same architecture
    state = CascadeState(stage="1", stage1_score=0.5)
    second_stage(_config(rings, run, epochs=1), state, RunFolder(run), torch.device("cpu"), DistInfo(), True,
                 Termination(), None)
    log = (run / "cascade" / "log.txt").read_text()
    assert f"weights from {run / 'probe' / 'full' / 'last'}" in log and "widened" in log
    assert state.stage == "done" and state.stage2_score is not None


def test_a_model_widened_for_a_prior_starts_as_the_model_it_came_from(tmp_path):
    from unetseg.checkpoint import load_widened, save_checkpoint
    from unetseg.models import build_model

    torch.manual_seed(0)
    source, target = build_model("unet", in_channels=1, base_channels=8, depth=2), build_model(
        "unet", in_channels=2, base_channels=8, depth=2)
    save_checkpoint(tmp_path / "ckpt", source, Config())
    widened = load_widened(target, tmp_path / "ckpt" / "model.safetensors")
    assert widened and all(target.state_dict()[n].shape[1] == 2 for n in widened)
    x = torch.randn(1, 1, 32, 32)
    source.eval(), target.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(torch.cat([x, torch.zeros_like(x)], 1)), source(x))
    other = build_model("unet", in_channels=2, base_channels=8, depth=3)
    assert load_widened(other, tmp_path / "ckpt" / "model.safetensors") is None


@pytest.mark.parametrize(("change", "reason"), [
    ({}, None),
    ({"train.cascade": "auto"}, "2D"),
    ({"train.cascade": "auto", "model.spatial_dims": 3, "train.max_minutes": 20.0}, "minutes left"),
    ({"train.cascade": "auto", "model.spatial_dims": 3, "train.max_minutes": 40.0}, None),
    ({"train.cascade": "auto", "model.spatial_dims": 3, "train.max_minutes": 40.0,
      "data.downsample": [1.41, 1.41, 1.41]}, "fewer voxels"),
    ({"data.task": "instances"}, "instance"),
    ({"data.val_fraction": 0.0}, "no validation images"),
])
def test_when_a_coarse_run_trains_a_second_stage(change, reason):
    cfg = Config()
    cfg.train.cascade, cfg.data.downsample = "on", [2.0, 2.0]
    for key, value in change.items():
        part, name = key.split(".")
        setattr(getattr(cfg, part), name, value)
    why = skip_reason(cfg, spent=6.0)  # minutes the probe took
    assert (why is None) if reason is None else (reason in why)
    assert CASCADE_MINUTES <= 40.0 - 6.0


def _blobs3d(root: Path, n: int, shape: tuple[int, int, int] = (64, 128, 128)) -> Path:
    """One large ellipsoid per volume (about 80% of each side): a coarser grid sees it whole."""
    rng = np.random.default_rng(0)
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    for i in range(n):
        c, r = np.array(shape) * rng.uniform(0.4, 0.6, 3), np.array(shape) * rng.uniform(0.3, 0.4, 3)
        inside = sum(((g - c[a]) / r[a]) ** 2 for a, g in enumerate((zz, yy, xx))) <= 1
        image = rng.normal(100, 20, shape) + 40 * inside
        meta = {"spacing": (1.0, 1.0, 1.0), "spatial_dims": 3}
        write_image(root / "images" / f"v{i:02d}.nii.gz", image.astype(np.float32), meta)
        write_mask(root / "masks" / f"v{i:02d}.nii.gz", inside.astype(np.uint8), meta)
    return root


def test_a_planned_3d_cascade_from_the_command_line(tmp_path, capsys):
    """The planner's coarse 3D plan brings its full-resolution twin; ``--cascade on`` trains it as the second
    stage after the coarse first, in one budget; predictions come back at each volume's own grid."""
    data, run = _blobs3d(tmp_path / "blobs", 4), tmp_path / "RUN"
    code, err = run_inprocess("train", "--data", data, "--out", run, "--max-minutes", "0.3", "--probe", "off",
                              "--cascade", "on", "--workers", "0", capsys=capsys)
    assert code == 0, err
    state = _state(run)
    assert state["stage"] == "done" and state["stage1_until"] == pytest.approx(0.15)
    first, second = _saved(run / "last"), _saved(run / "cascade" / "last")
    assert first["data"]["downsample"][0] > 1.5 and second["data"]["downsample"] is None
    assert second["data"]["patch_size"] == state["values"]["data.patch_size"]  # the planner's full twin
    assert second["data"]["prior_channels"] == 1 and second["model"]["in_channels"] == 2
    kept = "cascade" if state["kept"] == "cascade" else "first stage"
    assert _saved(run / "best")["data"]["prior_channels"] == (1 if kept == "cascade" else 0)
    out = tmp_path / "pred"
    code, err = run_inprocess("predict", "--checkpoint", run / "cascade", "--input", data / "images",
                              "--output", out, capsys=capsys)
    assert code == 0, err
    assert read_mask(out / "v00.nii.gz")[0].shape == (64, 128, 128)
