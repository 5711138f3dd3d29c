"""`unetseg evaluate` through the command line: table, JSON, overlays, report, and bad masks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from inference.helpers import make_checkpoint


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unetseg", "evaluate", *args], capture_output=True, text=True, timeout=300
    )


def test_evaluate_writes_json_overlays_and_report(cells_2d: Path, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "m.json"
    proc = _evaluate(
        "--checkpoint",
        str(ckpt),
        "--data",
        str(cells_2d),
        "--out",
        str(out),
        "--overlays",
        str(tmp_path / "ov"),
        "--report",
        str(tmp_path / "report.html"),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    n = len(list((cells_2d / "images").iterdir()))
    assert result["num_images"] == n and len(result["per_image"]) == n
    import unetseg
    from unetseg.data import ClassMap, find_cases, load_case
    from unetseg.metrics import dice

    model, cfg = unetseg.load_checkpoint(ckpt)
    for row, case in zip(result["per_image"], find_cases(cells_2d), strict=True):
        image, labels, _ = load_case(case, cfg.data, ClassMap(cfg.data.class_values))
        want = dice(unetseg.predict(model, image, config=cfg, overlap=None), labels, 2)
        np.testing.assert_allclose(row["dice"], want, atol=1e-6)  # the same numbers the API gives
    # the mean row is the mean of the rows
    assert abs(result["mean"]["dice"][1] - np.mean([r["dice"][1] for r in result["per_image"]])) < 1e-9
    assert "mean" in proc.stderr and "dice c1" in proc.stderr  # the printed table
    assert len(list((tmp_path / "ov").glob("*.png"))) == n
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") >= n


def test_mask_values_outside_the_class_map(cells_2d: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(cells_2d, data)
    bad = sorted((data / "masks").iterdir())[0]
    mask = np.asarray(Image.open(bad)).copy()
    mask[:4, :4] = 128  # a value the checkpoint's class map (0/255) does not know
    Image.fromarray(mask).save(bad)
    ckpt = make_checkpoint(tmp_path / "ckpt")
    proc = _evaluate("--checkpoint", str(ckpt), "--data", str(data))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and bad.name in proc.stderr and "128" in proc.stderr
    out = tmp_path / "m.json"
    proc = _evaluate("--checkpoint", str(ckpt), "--data", str(data), "--skip-bad", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 bad" in proc.stderr
    result = json.loads(out.read_text())
    assert result["num_images"] == len(list((data / "images").iterdir())) - 1
    assert len(result["skipped"]) == 1
