"""The uncertainty map: entropy of the mean probability and mutual information over the TTA flips (0 with
one sample, whatever the tiling), highest on ambiguous pixels, written by ``predict --uncertainty`` as a
float16 TIFF and, for streamed inputs, beside the labels in the OME-Zarr, the same map either way; and the
checkpoint's post-processing, applied in memory and skipped with a warning when streamed."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from torch import nn

import unetseg
from unetseg.checkpoint import copy_checkpoint, read_config, rewrite_config
from unetseg.config.schema import PostprocessStep
from unetseg.inference import Predictor
from unetseg.inference.tta import uncertainty_map
from unetseg.io.images import read_mask
from unetseg.postprocess.semantic import apply_postprocessing, label_components

from .helpers import make_checkpoint


def half_noise(seed: int = 0) -> np.ndarray:
    """Left half: noise around 0 (every class about as likely); right half: clear +-4 bands."""
    rng = np.random.default_rng(seed)
    x = np.empty((1, 48, 48), np.float32)
    x[0, :, :24] = rng.normal(0, 0.5, (48, 24))
    x[0, :, 24:] = np.where((np.arange(48)[:, None] // 16) % 2 == 0, 4.0, -4.0)
    return x


def lopsided_model() -> nn.Module:
    """A 3x3 convolution that is not flip-symmetric: flipped passes disagree where the image varies."""
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[1, 0, 1, 1], conv.weight[1, 0, 1, 2], conv.weight[1, 0, 0, 2] = 1.0, 0.8, 0.6
    return conv


def test_uncertainty_is_highest_on_ambiguous_pixels_and_disagreement_needs_samples() -> None:
    x = half_noise()
    for tile in (None, (16, 16)):  # one pass, and overlapping tiles blended
        plain = Predictor(lopsided_model(), tile=tile, overlap=0.5, device="cpu", precision="fp32")
        labels, probs, maps = plain.predict_uncertain(x)
        assert maps.shape == (2, 48, 48) and maps.dtype == np.float32
        np.testing.assert_array_equal(labels, plain.predict(x))
        np.testing.assert_array_equal(probs, plain.predict_proba(x))
        entropy = maps[0]
        assert entropy[:, :20].mean() > 0.8 > 0.2 > entropy[4:-4, 28:-4].mean()
        assert maps[1].max() == 0.0  # one sample (no TTA): nothing to disagree, overlapping tiles or not
        tta = Predictor(lopsided_model(), tile=tile, overlap=0.5, tta=True, device="cpu", precision="fp32")
        _, _, maps = tta.predict_uncertain(x)
        mutual = maps[1]
        assert (mutual <= maps[0] + 1e-6).all() and mutual.min() >= 0
        assert mutual[:, 2:20].mean() > 20 * mutual[:, 28:-4].mean() and mutual[:, 2:20].mean() > 1e-2
        # the 5% most uncertain pixels all lie in the noisy half
        top = np.argsort(maps[0].ravel())[-len(maps[0].ravel()) // 20:]
        assert (np.unravel_index(top, (48, 48))[1] < 24).all()


def test_uncertainty_map_by_hand() -> None:
    probs = np.array([[0.5, 1.0], [0.5, 0.0]], np.float32)[:, None, :]  # (2 classes, 1, 2 pixels)
    maps = uncertainty_map(probs, np.array([[math.log(2) / 2, 0.0]], np.float32))
    np.testing.assert_allclose(maps[:, 0], [[1.0, 0.0], [0.5, 0.0]], atol=1e-6)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("unc") / "best", "unet")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetseg", "predict", *args, "--device", "cpu",
                           "--precision", "fp32"], capture_output=True, text=True, timeout=300)


def test_predict_writes_the_uncertainty_map_in_memory_and_streamed(ckpt: Path, cells_2d: Path,
                                                                  tmp_path: Path) -> None:
    image = sorted((cells_2d / "images").iterdir())[0]
    stem = image.name.split(".")[0]
    for fmt, out in (("auto", tmp_path / "mem"), ("ome-zarr", tmp_path / "zarr")):
        proc = _cli("--checkpoint", str(ckpt), "--input", str(image), "--output", str(out), "--tta",
                    "--uncertainty", "--tile", "32", "32", "--output-format", fmt)
        assert proc.returncode == 0, proc.stderr
        assert "with uncertainty" in proc.stdout
    maps = tifffile.imread(tmp_path / "mem" / f"{stem}_uncertainty.tif")
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float16
    seg = unetseg.load(ckpt, device="cpu", precision="fp32", tta=True, tile=[32, 32])
    want = seg.predict_uncertainty(unetseg.io.images.read_image(image)[0])
    np.testing.assert_allclose(maps.astype(np.float32), want, atol=1e-3)
    assert maps[1].max() > 0  # flips of a random network disagree somewhere
    store = tmp_path / "zarr" / f"{stem}.ome.zarr"
    streamed = zarr.open_array(str(store / "uncertainty" / "0"), mode="r")[...]
    assert streamed.dtype == np.float16
    np.testing.assert_allclose(streamed.astype(np.float32), maps.astype(np.float32), atol=1e-3)
    assert zarr.open_group(str(store / "uncertainty"), mode="r").attrs["multiscales"][0]["name"] == \
        "uncertainty"
    # the napari readers show the maps as hidden image layers beside the labels
    from unetseg.viewer import readers

    kinds = {meta["name"]: kind for _, meta, kind in readers.read_predictions(tmp_path / "mem")}
    assert kinds == {stem: "labels", f"{stem}_uncertainty": "image"}
    kinds = {meta["name"]: kind for _, meta, kind in readers.read_ngff(store)}
    assert kinds[f"{stem} uncertainty"] == "image"
    # --output-format ome-tiff holds labels only: refused in one line before any work
    proc = _cli("--checkpoint", str(ckpt), "--input", str(image), "--output", str(tmp_path / "tif"),
                "--uncertainty", "--output-format", "ome-tiff")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--uncertainty" in proc.stderr
    assert not (tmp_path / "tif").exists() or not any((tmp_path / "tif").iterdir())


def test_postprocessing_applies_in_memory_and_is_skipped_with_a_warning_when_streamed(
        ckpt: Path, cells_2d: Path, tmp_path: Path) -> None:
    folder = copy_checkpoint(ckpt, tmp_path / "pp")
    cfg = read_config(ckpt)
    cfg.infer.postprocess = [PostprocessStep(classes=[1], op="largest", gain=0.01)]
    rewrite_config(folder, cfg, {})
    image = sorted((cells_2d / "images").iterdir())[0]
    stem = image.name.split(".")[0]
    assert _cli("--checkpoint", str(folder), "--input", str(image), "--output", str(tmp_path / "mem"),
                "--tile", "32", "32").returncode == 0
    proc = _cli("--checkpoint", str(folder), "--input", str(image), "--output", str(tmp_path / "zarr"),
                "--tile", "32", "32", "--output-format", "ome-zarr")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "keep the largest component of class 1" in warning[0]
    mem = read_mask(tmp_path / "mem" / f"{stem}.png")[0]
    raw = zarr.open_array(str(tmp_path / "zarr" / f"{stem}.ome.zarr" / "0"), mode="r")[...]
    assert len(label_components(raw == 1)[1]) > 1  # the raw prediction has several components
    np.testing.assert_array_equal(mem, apply_postprocessing(raw, cfg.infer.postprocess))
    sizes = label_components(mem == 1)[1]
    assert (sizes == sizes.max()).all()


def test_a_model_on_a_coarser_grid_brings_the_map_back_to_the_images_grid(ckpt: Path, cells_2d: Path,
                                                                          tmp_path: Path) -> None:
    """Predicted at half resolution (``data.downsample``), the map is resampled linearly to the image's
    grid, in memory and streamed alike (not renormalised as probabilities are)."""
    coarse = copy_checkpoint(ckpt, tmp_path / "coarse")
    cfg = read_config(ckpt)
    cfg.data.downsample = [2.0, 2.0]
    rewrite_config(coarse, cfg, {})
    image = sorted((cells_2d / "images").iterdir())[0]
    stem = image.name.split(".")[0]
    for fmt, out in (("auto", tmp_path / "mem"), ("ome-zarr", tmp_path / "zarr")):
        proc = _cli("--checkpoint", str(coarse), "--input", str(image), "--output", str(out), "--tta",
                    "--uncertainty", "--output-format", fmt)
        assert proc.returncode == 0, proc.stderr
    maps = tifffile.imread(tmp_path / "mem" / f"{stem}_uncertainty.tif").astype(np.float32)
    streamed = zarr.open_array(str(tmp_path / "zarr" / f"{stem}.ome.zarr" / "uncertainty" / "0"), mode="r")
    assert maps.shape == streamed.shape == (2, 64, 64)
    np.testing.assert_allclose(streamed[...].astype(np.float32), maps, atol=2e-3)
    assert maps[1].max() > 0 and np.ptp(maps.sum(axis=0)) > 0.01  # the two channels are not renormalised
