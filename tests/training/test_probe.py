"""The timed probe of resolutions: it picks the better candidate where the answer is known, scores every
candidate at the images' own grid, and its winner goes on as the run (plan.yaml says what it tried)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from reliability.helpers import run_inprocess
from unetseg.config import Config
from unetseg.io.images import write_image, write_mask
from unetseg.training.distributed import DistInfo
from unetseg.training.interrupt import Termination
from unetseg.training.probe import Trial, choose, run_probe
from unetseg.training.run import RunFolder


def _rings(root: Path, n: int, size: int = 64, seed: int = 0) -> Path:
    """Discs marked only by their outline: inside and outside share one texture, so a pixel is inside only
    for a view that holds the whole outline (a small patch in the middle of a disc sees plain texture)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    for i in range(n):
        r = rng.uniform(0.3, 0.4) * size
        cy, cx = rng.uniform(0.42, 0.58, size=2) * size
        dist = np.hypot(yy - cy, xx - cx)
        texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.0)
        image = 120 + 40 * texture / texture.std() + 90 * (np.abs(dist - r) < 1.2)
        write_image(root / "images" / f"c{i:02d}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_mask(root / "masks" / f"c{i:02d}.png", np.where(dist <= r, 255, 0).astype(np.uint8))
    return root


def _config(data: Path, out: Path, minutes: float) -> Config:
    cfg = Config()
    cfg.data.data, cfg.data.num_workers, cfg.data.val_fraction = str(data), 0, 0.25
    cfg.model.base_channels = 8
    cfg.train.out, cfg.train.max_minutes, cfg.train.probe = str(out), minutes, "on"
    cfg.train.batch_size, cfg.train.iters_per_epoch, cfg.train.epochs = 4, 20, 1000
    cfg.train.precision, cfg.train.lr = "fp32", 2e-3
    return cfg


def test_the_probe_keeps_the_candidate_that_sees_the_whole_object(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = _rings(tmp_path / "rings", 16)
    small = {"data.downsample": None, "data.patch_size": [16, 16], "model.depth": 2, "infer.tile": [16, 16]}
    whole = {"data.downsample": [2.0, 2.0], "data.patch_size": [32, 32], "model.depth": 3,
             "infer.tile": [32, 32]}
    trials = [Trial("small", small, "full resolution, 16 px patches"),
              Trial("whole", whole, "2x coarser, the whole image")]
    cfg = _config(data, tmp_path / "RUN", minutes=1.2)  # 0.18 min per candidate
    start = run_probe(cfg, trials, torch.device("cpu"), DistInfo(), RunFolder(tmp_path / "RUN"), True,
                      Termination(), None, set())
    assert start is not None and start.name == "whole"
    assert trials[1].score > trials[0].score + 0.05  # scored on the images' own 64x64 grid
    assert cfg.data.downsample == [2.0, 2.0] and cfg.data.patch_size == [32, 32]  # the winner's values
    assert start.checkpoint == tmp_path / "RUN" / "probe" / "whole" / "last"
    assert start.minutes == pytest.approx(sum(t.minutes for t in trials))
    for t in trials:  # each trial kept as a run with its record
        record = json.loads((tmp_path / "RUN" / "probe" / t.name / "result.json").read_text())
        assert record["score"] == pytest.approx(t.score) and record["steps"] == t.steps > 0
    log = (tmp_path / "RUN" / "log.txt").read_text()
    assert "probe whole:" in log and "kept" in log and "probe small:" in log and "lost by" in log
    # a rerun reuses finished trials instead of training them again
    again = [Trial("small", small), Trial("whole", whole)]
    start2 = run_probe(_config(data, tmp_path / "RUN", 1.2), again, torch.device("cpu"), DistInfo(),
                       RunFolder(tmp_path / "RUN"), True, Termination(), None, set())
    assert start2 is not None and start2.name == "whole"
    assert [t.score for t in again] == [t.score for t in trials]


def test_a_tie_keeps_the_rules_choice() -> None:
    a, b = Trial("rules", {}, score=0.8), Trial("other", {}, score=0.8)
    assert choose([a, b]) is a
    assert choose([Trial("rules", {}), Trial("other", {}, score=0.1)]).name == "other"


def test_train_probes_then_continues_the_winner(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The planner's candidates for 288x384 images of large lesions (a patch sees most, not all of one):
    both are tried, the winner's trial goes on as the run, plan.yaml says what was tried."""
    from unetseg.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "lesions", n=6, size=(288, 384), kind="lesions", seed=1)
    recipe = tmp_path / "probe.yaml"
    recipe.write_text("train: {probe: 'on'}\n")
    run = tmp_path / "RUN"
    code, err = run_inprocess("train", "--data", data, "--out", run, "--config", recipe,
                              "--max-minutes", "0.4", "--workers", "0", "--precision", "fp32", capsys=capsys)
    assert code == 0, err
    results = {p.parent.name: json.loads(p.read_text()) for p in (run / "probe").glob("*/result.json")}
    assert set(results) == {"coarse", "full"}
    winner = max(results, key=lambda k: (results[k]["score"], k == "coarse"))
    saved = json.loads((run / "best" / "config.json").read_text())
    assert saved["data"]["downsample"] == results[winner]["values"]["data.downsample"]
    assert saved["data"]["patch_size"] == results[winner]["values"]["data.patch_size"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert int(rows[0]["step"]) > results[winner]["steps"]  # the winner's trial went on: no fresh start
    plan = (run / "plan.yaml").read_text()
    assert plan.startswith("# probe ") and f"probe {winner}:" in plan and "kept" in plan
