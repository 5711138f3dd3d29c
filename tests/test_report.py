"""The HTML report, rendered in real headless Chromium: the table and every image must load."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetseg.data.overlay import save_overlay
from unetseg.evaluation.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=5000",
]

# Appended to a copy of the page: record what a person would see, where --dump-dom can read it.
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-probe', JSON.stringify({
    rows: document.querySelectorAll('#metrics tbody tr').length,
    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    first: document.querySelector('#metrics tbody tr td').textContent}));
});</script>"""


def _result(tmp: Path, n: int) -> dict:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        image = rng.random((1, 32, 32), dtype=np.float32)
        truth = (image[0] > 0.5).astype(np.int64)
        pred = (image[0] > 0.45).astype(np.int64)
        png = tmp / f"case{i}.png"
        save_overlay(png, image, pred, truth=truth)
        d = 0.5 + 0.1 * i
        rows.append(
            {
                "case": f"case{i}",
                "dice": [0.9, d],
                "iou": [0.8, d - 0.1],
                "precision": [1.0, 0.9],
                "recall": [1.0, 0.8],
                "hd95": [0.0, float(i)],
                "msd": [0.0, 0.5],
                "overlay": str(png),
            }
        )
    mean = {
        k: [float(np.mean([r[k][c] for r in rows])) for c in range(2)]
        for k in ("dice", "iou", "precision", "recall", "hd95", "msd")
    }
    return {
        "checkpoint": "RUN",
        "data": "DATA",
        "class_values": [0, 255],
        "num_images": n,
        "per_image": rows,
        "mean": mean,
        "mean_foreground_dice": mean["dice"][1],
    }


def test_report_is_self_contained_html(tmp_path: Path) -> None:
    page = write_report(tmp_path / "r" / "report.html", _result(tmp_path, 3))
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3
    assert text.count("<tr>") == 4  # header + 3 images (the mean row has a class)
    assert 'class="mean"' in text


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    n = 4
    page = write_report(tmp_path / "report.html", _result(tmp_path, n))
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, "the page did not finish loading"
    probe_data = json.loads(html.unescape(found.group(1)))
    assert probe_data["rows"] == n + 1  # every image and the mean
    assert probe_data["images"] == n and probe_data["loaded"] == n
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (900, 1200) and pixels.std() > 5  # a rendered page, not a blank one


TRUST_PROBE = """<script>window.addEventListener('load', () => {
  const box = s => { const r = s.getBoundingClientRect(); return [r.width, r.height]; };
  document.body.setAttribute('data-probe', JSON.stringify({
    plots: [...document.querySelectorAll('svg.plot')].map(box),
    least: [...document.querySelectorAll('#least-sure tbody tr td:first-child')].map(t => t.textContent),
    ece: document.querySelector('#ece').textContent,
    steps: document.querySelectorAll('#postprocess li').length}));
});</script>"""


def _trusted(tmp: Path, n: int) -> dict:
    """An evaluation result with the calibration and uncertainty measures (as ``evaluate --out`` writes)."""
    result = _result(tmp, n)
    for i, row in enumerate(result["per_image"]):
        row["uncertainty"] = {"entropy": 0.1 * (i + 1), "mutual_information": 0.01 * i}
    grid = [i / 50 for i in range(51)]
    result["calibration"] = {"temperature": 1.8, "pixels": 3000, "ece": 0.031,
                             "ece_without_temperature": 0.09,
                             "reliability": {"count": [0] * 10 + [5, 10, 20, 40, 100],
                                             "accuracy": [0] * 10 + [0.6, 0.7, 0.8, 0.85, 0.97],
                                             "confidence": [0] * 10 + [0.7, 0.75, 0.85, 0.9, 0.98]}}
    result["uncertainty"] = {"pixels": 3000, "error_rate": 0.1, "auc": 0.8, "auc_random": 0.5,
                             "auc_best": 0.95,
                             "found_at": {"0.05": 0.3, "0.1": 0.5, "0.2": 0.7}, "pixel_correlation": 0.4,
                             "curve": {"checked": grid, "found": [min(1.0, 3 * x) for x in grid]},
                             "image_correlation": 0.8, "least_sure": [f"case{i}" for i in reversed(range(n))]}
    result["heldout"] = {"source": "validation", "images": 3, "pixels": 9000, "temperature": 1.8,
                         "ece_before": 0.08, "ece_after": 0.02, "nll_before": 0.3, "nll_after": 0.25,
                         "dice_before": [0.7], "dice_after": [0.72]}
    result["postprocess"] = [{"classes": [1], "op": "largest", "gain": 0.02}]
    return result


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_calibration_and_uncertainty_sections_render(tmp_path: Path) -> None:
    n = 3
    page = write_report(tmp_path / "report.html", _trusted(tmp_path, n))
    text = page.read_text()
    assert "keep the largest component of class 1: +0.0200 held-out Dice" in text
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", TRUST_PROBE + "</body>"))
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', dom.stdout)
    assert found, "the page did not finish loading"
    seen = json.loads(html.unescape(found.group(1)))
    assert len(seen["plots"]) == 2 and all(w > 100 and h > 100 for w, h in seen["plots"])  # drawn, not empty
    assert seen["least"] == ["case2", "case1", "case0"]  # the least sure first
    assert seen["ece"] == "0.0310" and seen["steps"] == 1
