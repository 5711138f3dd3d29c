"""A shortened `unetseg demo`: every promised file is written and the held-out Dice is sane."""

from __future__ import annotations

import json
from pathlib import Path

from unetseg.demo import run_demo


def test_short_demo_writes_everything(tmp_path: Path) -> None:
    result = run_demo(tmp_path, minutes=0.5, n_train=8, n_test=2, size=(128, 128), quiet=True)
    run = tmp_path / "run"
    for f in (
        "best/model.safetensors",
        "best/config.json",
        "last/state.pt",
        "curves.png",
        "metrics.csv",
        "log.txt",
    ):
        assert (run / f).is_file(), f
    assert len(list((tmp_path / "predictions").glob("*.png"))) >= 2
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 2
    assert (tmp_path / "report.html").stat().st_size > 1000
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["num_images"] == 2
    assert abs(saved["mean_foreground_dice"] - result["mean_foreground_dice"]) < 1e-9
    # Half a minute on shared cores is far from converged, but must already beat chance clearly.
    assert 0.5 < result["mean_foreground_dice"] <= 1.0
