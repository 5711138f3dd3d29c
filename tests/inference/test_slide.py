"""``unetseg predict`` on whole slides through the command line: OME inputs become NGFF label pyramids (or
pyramidal OME-TIFFs) at the training pixel size's level, equal to the in-memory prediction; an
interrupted slide resumes; glass is skipped; small inputs keep their outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from unetseg.checkpoint import save_checkpoint
from unetseg.data.normalize import Normalizer
from unetseg.inference import Predictor, load_engine
from unetseg.io.ngff import MANIFEST

from .helpers import tiny_config, tiny_model


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetseg", "predict", *args], capture_output=True,
                          text=True, timeout=timeout)


def _slide(path: Path, shape: tuple[int, int], px: float, levels: int = 3, seed: int = 0) -> list[np.ndarray]:
    """A tiled pyramidal OME-TIFF of cell-like blobs (uint8) at ``px`` µm; returns the stored levels."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 4)
    data = np.clip((blobs - blobs.mean()) * 3000 + 120, 0, 255).astype(np.uint8)
    pyr = [data[:: 2**i, :: 2**i] for i in range(levels)]
    with tifffile.TiffWriter(path, ome=True) as tw:
        meta = {"axes": "YX", "PhysicalSizeX": px, "PhysicalSizeY": px}
        tw.write(pyr[0], subifds=levels - 1, metadata=meta, tile=(128, 128), compression="zlib")
        for lvl in pyr[1:]:
            tw.write(lvl, subfiletype=1, tile=(128, 128), compression="zlib")
    return pyr


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config()
    cfg.data.pixel_size = [0.5, 0.5]  # trained at 0.5 µm: level 1 of a 0.25 µm slide
    cfg.data.patch_size = [64, 64]
    return save_checkpoint(tmp_path_factory.mktemp("slide-ckpt") / "ckpt", tiny_model(cfg), cfg)


def _in_memory(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    engine, cfg = load_engine(checkpoint, "cpu", "fp32")
    x = Normalizer("zscore")(image[None].astype(np.float32))
    return Predictor(engine, tile=(64, 64), overlap=0.25, batch_size=4).predict(x)


def test_an_ome_tiff_gives_an_ngff_label_pyramid_at_the_training_level(checkpoint, tmp_path):
    pyr = _slide(tmp_path / "slide.ome.tif", (1100, 700), px=0.25)
    out = tmp_path / "out"
    proc = _cli("--checkpoint", str(checkpoint), "--input", str(tmp_path / "slide.ome.tif"), "--output",
                str(out), "--device", "cpu", "--precision", "fp32", "--tile", "64", "64")
    assert proc.returncode == 0, proc.stderr
    store = out / "slide.ome.zarr"
    labels = zarr.open_array(str(store / "0"), mode="r")[...]
    assert labels.shape == pyr[1].shape  # level 1 (0.5 µm) was predicted
    want = _in_memory(checkpoint, pyr[1])
    assert (labels == want).mean() > 0.9999  # streamed statistics equal the in-memory ones to ~1e-12
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(store)))()))
    assert len(node.data) >= 1 and tuple(node.data[0].shape) == pyr[1].shape
    attrs = json.loads((store / ".zattrs").read_text())
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.5, 0.5]) and "image-label" in attrs
    assert not list(out.glob(".*tmp"))  # the temporary store was moved into place

    # --level 0 predicts at full resolution; --output-format ome-tiff writes a pyramidal OME-TIFF
    proc = _cli("--checkpoint", str(checkpoint), "--input", str(tmp_path / "slide.ome.tif"), "--output",
                str(tmp_path / "tif"), "--device", "cpu", "--precision", "fp32", "--tile", "64", "64",
                "--level", "0", "--output-format", "ome-tiff")
    assert proc.returncode == 0, proc.stderr
    with tifffile.TiffFile(tmp_path / "tif" / "slide.ome.tif") as tif:
        series = tif.series[0]
        assert series.shape == pyr[0].shape and len(series.levels) >= 2
        assert (series.asarray() == _in_memory(checkpoint, pyr[0])).mean() > 0.9999
    assert sorted(p.name for p in (tmp_path / "tif").iterdir() if not p.name.startswith(".")) == [
        "slide.ome.tif"]


def test_small_inputs_keep_their_outputs_unless_an_ome_format_is_asked(checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image = _slide(tmp_path / "s.ome.tif", (96, 80), px=0.5, levels=1)[0]
    tifffile.imwrite(folder / "plain.tif", image)
    proc = _cli("--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(tmp_path / "a"),
                "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")] == ["plain.png"]
    proc = _cli("--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(tmp_path / "b"),
                "--device", "cpu", "--output-format", "ome-zarr")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "plain.ome.zarr" / "0").is_dir()
    proc = _cli("--checkpoint", str(checkpoint), "--input", str(folder), "--output", str(tmp_path / "b"),
                "--device", "cpu", "--output-format", "tiles")
    assert proc.returncode == 2 and "--output-format 'tiles'" in proc.stderr


def test_an_interrupted_slide_resumes_where_it_stopped(checkpoint, tmp_path):
    _slide(tmp_path / "big.ome.tif", (6144, 512), px=0.5, levels=1, seed=3)
    args = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "big.ome.tif"), "--device", "cpu",
            "--precision", "fp32", "--tile", "64", "64"]
    clean = _cli(*args, "--output", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "unetseg", "predict", *args, "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    manifest = out / ".big.ome.zarr.tmp" / MANIFEST
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads(manifest.read_text())["rows_done"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    done = json.loads(manifest.read_text())["rows_done"]
    assert 2 <= len(done) < 12 and not (out / "big.ome.zarr").exists()
    chunk = out / ".big.ome.zarr.tmp" / "0" / "0" / "0"
    stamp = chunk.stat().st_mtime_ns
    resumed = _cli(*args, "--output", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not (out / ".big.ome.zarr.tmp").exists()
    got = zarr.open_array(str(out / "big.ome.zarr" / "0"), mode="r")[...]
    np.testing.assert_array_equal(got, zarr.open_array(str(tmp_path / "clean" / "big.ome.zarr" / "0"),
                                                       mode="r")[...])
    assert (out / "big.ome.zarr" / "0" / "0" / "0").stat().st_mtime_ns == stamp  # row 0 was not redone
    again = _cli(*args, "--output", str(out), "--resume")
    assert again.returncode == 0 and "1 complete already" in again.stdout


def test_skip_background_leaves_glass_alone(checkpoint, tmp_path):
    rng = np.random.default_rng(4)
    image = np.clip(rng.normal(235, 2, (1024, 1024)), 0, 255).astype(np.uint8)  # bright glass
    image[100:300, 150:400] = rng.integers(20, 120, (200, 250), dtype=np.uint8)  # dark tissue
    with tifffile.TiffWriter(tmp_path / "glass.ome.tif", ome=True) as tw:
        tw.write(image, metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
                 tile=(128, 128))
    args = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "glass.ome.tif"), "--device", "cpu",
            "--precision", "fp32", "--tile", "64", "64"]
    proc = _cli(*args, "--output", str(tmp_path / "skip"), "--skip-background")
    assert proc.returncode == 0, proc.stderr
    full = _cli(*args, "--output", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    skipped = zarr.open_array(str(tmp_path / "skip" / "glass.ome.zarr" / "0"), mode="r")[...]
    every = zarr.open_array(str(tmp_path / "full" / "glass.ome.zarr" / "0"), mode="r")[...]
    assert (skipped[600:, :] == 0).all() and (skipped[:, 600:] == 0).all()  # far from tissue: background
    np.testing.assert_array_equal(skipped[150:250, 200:350], every[150:250, 200:350])  # inside the tissue
