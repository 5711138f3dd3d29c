"""A streamed volume at another spacing than the training's is resampled as the in-memory path resamples
it (normalised, cubic spline to the training spacing, probabilities back linearly, then the argmax), region
by region: the labels equal the in-memory ones, written at the image's own grid and spacing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from scipy import ndimage

from unetseg.checkpoint import save_checkpoint
from unetseg.io.images import read_image

from .helpers import tiny_config, tiny_model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetseg", "predict", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config(spatial_dims=3)
    cfg.data.spacing = [2.0, 1.0, 1.0]  # trained at 2 x 1 x 1 mm (z, y, x)
    cfg.data.patch_size = [16, 16, 16]
    cfg.infer.tile = [16, 16, 16]
    return save_checkpoint(tmp_path_factory.mktemp("spacing-ckpt") / "ckpt", tiny_model(cfg), cfg)


def _volume(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """A float32 NIfTI of blobs, ``shape`` and ``spacing`` in (z, y, x); returns the (z, y, x) array."""
    rng = np.random.default_rng(3)
    vol = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 2) * 1000
    nib.save(nib.Nifti1Image(vol.transpose(2, 1, 0).copy(), np.diag([*spacing[::-1], 1.0])), str(path))
    return vol


@pytest.mark.parametrize("spacing", [(1.0, 0.7, 0.7), (2.0, 1.6, 1.0)])
def test_a_streamed_volume_at_another_spacing_equals_the_in_memory_prediction(checkpoint, tmp_path, spacing):
    vol = _volume(tmp_path / "vol.nii", (22, 46, 40), spacing)
    common = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "vol.nii"), "--device", "cpu",
              "--precision", "fp32"]
    proc = _cli(*common, "--output", str(tmp_path / "mem"))
    assert proc.returncode == 0, proc.stderr
    (mem_file,) = (tmp_path / "mem").glob("vol.*")
    want = read_image(mem_file)[0][0]
    proc = _cli(*common, "--output", str(tmp_path / "stream"), "--output-format", "ome-zarr")
    assert proc.returncode == 0, proc.stderr
    store = tmp_path / "stream" / "vol.ome.zarr"
    got = zarr.open_array(str(store / "0"), mode="r")[...]
    assert got.shape == vol.shape == want.shape  # the image's own grid, not the model's
    assert len(np.unique(want)) == 2  # both classes occur: the comparison means something
    assert (got == want).mean() > 0.9999
    assert not list((tmp_path / "stream").glob(".*model-grid*"))  # the model-grid store is gone


def test_resume_after_the_model_grid_pass_only_brings_it_back(checkpoint, tmp_path):
    """An interrupted last pass: with --resume the finished model-grid store is kept, not predicted again."""
    _volume(tmp_path / "vol.nii", (20, 40, 36), (1.0, 0.7, 0.7))
    common = ["--checkpoint", str(checkpoint), "--input", str(tmp_path / "vol.nii"), "--device", "cpu",
              "--precision", "fp32", "--output-format", "ome-zarr"]
    proc = _cli(*common, "--output", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    want = zarr.open_array(str(tmp_path / "a" / "vol.ome.zarr" / "0"), mode="r")[...]
    # the state a kill during the last pass leaves: a complete model-grid store whose probabilities are
    # marked (all 0.25: a prediction from them differs from a fresh one), no output store yet
    from unetseg.io.ngff import LabelZarrWriter

    grid = tmp_path / "b" / ".vol.ome.zarr.model-grid"
    grid.parent.mkdir()
    w = LabelZarrWriter(grid, (10, 28, 25), levels=1, probabilities=2, prob_dtype="float32")
    w.write((0, 0, 0), np.zeros((10, 28, 25), np.uint8), np.full((2, 10, 28, 25), 0.5, np.float32))
    w.finish()
    proc = _cli(*common, "--output", str(tmp_path / "b"), "--resume")
    assert proc.returncode == 0, proc.stderr
    got = zarr.open_array(str(tmp_path / "b" / "vol.ome.zarr" / "0"), mode="r")[...]
    assert got.shape == want.shape and not got.any()  # taken from the kept store: ties argmax to class 0
    assert not grid.exists()


def test_a_streamed_instance_volume_at_another_spacing_gives_the_in_memory_objects(tmp_path):
    from unetseg.config.schema import instance_classes

    cfg = tiny_config(spatial_dims=3, num_classes=instance_classes("three_class"))
    cfg.data.task, cfg.data.instance_target = "instances", "three_class"
    cfg.data.spacing, cfg.data.patch_size, cfg.infer.tile = [2.0, 1.0, 1.0], [16, 16, 16], [16, 16, 16]
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(cfg, seed=1), cfg)
    _volume(tmp_path / "vol.nii", (20, 40, 36), (1.0, 0.7, 0.7))
    common = ["--checkpoint", str(ckpt), "--input", str(tmp_path / "vol.nii"), "--device", "cpu",
              "--precision", "fp32"]
    proc = _cli(*common, "--output", str(tmp_path / "mem"))
    assert proc.returncode == 0, proc.stderr
    want = read_image(tmp_path / "mem" / "vol.tif")[0][0].astype(np.int64)
    proc = _cli(*common, "--output", str(tmp_path / "stream"), "--output-format", "ome-zarr")
    assert proc.returncode == 0, proc.stderr
    got = zarr.open_array(str(tmp_path / "stream" / "vol.ome.zarr" / "0"), mode="r")[...].astype(np.int64)
    assert got.shape == want.shape == (20, 40, 36)
    assert want.max() > 1  # objects to compare
    assert ((got > 0) == (want > 0)).mean() > 0.999 and got.max() == want.max()
    pairs = np.unique(np.stack([got[want > 0], want[want > 0]]), axis=1)
    assert pairs.shape[1] == want.max()  # one streamed id per in-memory object: the same partition
    names = sorted(p.name for p in (tmp_path / "stream").iterdir())
    assert names == [".unetseg-written", "vol.ome.zarr", "vol_objects.csv"]  # no intermediate store left


def test_on_a_dask_cluster_the_resampled_volume_is_the_single_process_one(checkpoint, tmp_path):
    pytest.importorskip("distributed")
    from unetseg.inference import predict_files
    from unetseg.inference.jobs.cohort import predict_cohort
    from unetseg.inference.jobs.file import Routing

    folder = tmp_path / "in"
    folder.mkdir()
    _volume(folder / "vol.nii", (20, 40, 36), (1.0, 0.7, 0.7))
    settings = {"device": "cpu", "precision": "fp32", "routing": Routing(output_format="ome-zarr")}
    predict_files(checkpoint, folder, tmp_path / "single", progress=False, **settings)
    result = predict_cohort(checkpoint, folder, tmp_path / "cluster", cluster="local:1", **settings)
    assert result.done == [str(folder / "vol.nii")] and result.failed == result.skipped == []
    a = zarr.open_array(str(tmp_path / "single" / "vol.ome.zarr" / "0"), mode="r")[...]
    b = zarr.open_array(str(tmp_path / "cluster" / "vol.ome.zarr" / "0"), mode="r")[...]
    assert a.shape == (20, 40, 36)
    np.testing.assert_array_equal(a, b)
    assert not list((tmp_path / "cluster").glob(".*model-grid*"))


def test_a_2d_model_at_a_coarser_resolution_writes_the_inputs_size_in_memory_and_streamed(tmp_path):
    """The planner's coarser resolution (data.downsample): the image goes to the model's grid, the
    probabilities come back linearly, and the labels are written at the input's own size; a streamed slide
    gets the in-memory labels, region by region."""
    import tifffile

    cfg = tiny_config(spatial_dims=2, in_channels=3)
    cfg.data.downsample = [2.0, 2.0]
    cfg.data.patch_size, cfg.infer.tile = [16, 16], [16, 16]
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(cfg, seed=2), cfg)
    rng = np.random.default_rng(5)
    image = (ndimage.gaussian_filter(rng.random((3, 83, 101)), (0, 3, 3)) * 4000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", np.moveaxis(image, 0, -1), photometric="rgb")
    common = ["--checkpoint", str(ckpt), "--input", str(tmp_path / "img.tif"), "--device", "cpu",
              "--precision", "fp32"]
    proc = _cli(*common, "--output", str(tmp_path / "mem"))
    assert proc.returncode == 0, proc.stderr
    want = read_image(tmp_path / "mem" / "img.png")[0][0]
    assert want.shape == (83, 101) and len(np.unique(want)) == 2  # the input's size, both classes
    proc = _cli(*common, "--output", str(tmp_path / "stream"), "--output-format", "ome-zarr")
    assert proc.returncode == 0, proc.stderr
    got = zarr.open_array(str(tmp_path / "stream" / "img.ome.zarr" / "0"), mode="r")[...]
    assert got.shape == want.shape
    assert (got == want).mean() > 0.9999
    # and the Python API gives the same labels
    import unetseg

    assert (unetseg.predict(str(ckpt), image, device="cpu", precision="fp32") == want).mean() > 0.9999
