"""``train.log``: TensorBoard event files and an MLflow run (SQLite in the run folder) hold the same numbers
as the run's own metrics.csv, and an overlay of a validation image per validation."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from unetseg.config import Config
from unetseg.data.synthetic import make_dataset
from unetseg.training import train


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trackers")
    cfg = Config()
    cfg.data.data = str(make_dataset(root / "cells", n=4, size=(32, 32), kind="cells", seed=1))
    cfg.data.num_workers, cfg.data.val_fraction, cfg.data.patch_size = 0, 0.25, [32, 32]
    cfg.model.base_channels, cfg.model.depth = 4, 2
    cfg.train.out, cfg.train.precision, cfg.train.log = str(root / "RUN"), "fp32", ["tensorboard", "mlflow"]
    cfg.train.batch_size, cfg.train.iters_per_epoch, cfg.train.epochs = 2, 3, 3
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.manual_seed(0)
    try:
        return train(cfg, quiet=True)
    finally:
        mp.undo()


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tensorboard_holds_the_runs_scalars_and_validation_overlays(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    rows = _rows(run)
    loss = acc.Scalars("train_loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows]
    assert [round(e.value, 4) for e in loss] == [round(float(r["train_loss"]), 4) for r in rows]
    assert len(acc.Scalars("val_dice")) == len(rows)
    images = acc.Images("validation")
    assert len(images) == len(rows) and images[0].width == 4 * 32 + 3 * 4  # image | truth | pred | errors


def test_mlflow_holds_the_runs_params_metrics_and_images(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("unetseg")
    [found] = client.search_runs([exp.experiment_id])
    assert found.info.status == "FINISHED" and found.data.params["model.depth"] == "2"
    history = client.get_metric_history(found.info.run_id, "val_dice")
    rows = _rows(run)
    assert [round(m.value, 4) for m in history] == [round(float(r["val_dice"]), 4) for r in rows]
    artifacts = [a.path for a in client.list_artifacts(found.info.run_id)]
    assert any("images" in a for a in artifacts), artifacts
