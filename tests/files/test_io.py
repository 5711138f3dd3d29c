"""Readers and writers round-trip every supported format, keep spacing, and follow the channel rules."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from unetseg.errors import DataError
from unetseg.io.images import (
    list_images,
    match_channels,
    read_image,
    read_mask,
    stem_of,
    write_image,
    write_mask,
    write_probabilities,
)

RNG = np.random.default_rng(0)


def _pil(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_grey_round_trip(tmp_path, dtype):
    arr = RNG.integers(0, np.iinfo(dtype).max, size=(13, 17)).astype(dtype)
    image, meta = read_image(write_image(tmp_path / "a.png", arr))
    assert image.shape == (1, 13, 17) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], arr.astype(np.float32))
    assert meta["spatial_dims"] == 2 and meta["spacing"] == (1.0, 1.0)
    assert meta["dtype"] == np.dtype(dtype).name


def test_png_rgb_and_rgba_drop_alpha(tmp_path):
    rgb = RNG.integers(0, 255, size=(9, 11, 3)).astype(np.uint8)
    image, _ = read_image(_pil(tmp_path / "rgb.png", rgb))
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0))
    rgba = np.concatenate([rgb, np.full((9, 11, 1), 255, np.uint8)], axis=-1)
    image, meta = read_image(_pil(tmp_path / "rgba.png", rgba))
    assert image.shape == (3, 9, 11) and meta["channels"] == 3
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0))


def test_palette_png_image_gets_colours_mask_keeps_indices(tmp_path):
    idx = RNG.integers(0, 3, size=(8, 8)).astype(np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    im.save(tmp_path / "p.png")
    mask, _ = read_mask(tmp_path / "p.png")
    np.testing.assert_array_equal(mask, idx)
    image, _ = read_image(tmp_path / "p.png")
    assert image.shape == (3, 8, 8)
    np.testing.assert_array_equal(image[0], np.where(idx == 1, 255, 0))


def test_jpeg_is_read_approximately(tmp_path):
    arr = np.full((16, 16), 120, np.uint8)
    image, meta = read_image(_pil(tmp_path / "a.jpg", arr))
    assert image.shape == (1, 16, 16) and np.abs(image - 120).max() <= 2 and meta["format"] == "jpeg"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_2d_round_trip(tmp_path, dtype):
    arr = (RNG.random((10, 12)) * 1000).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", arr)
    image, meta = read_image(tmp_path / "a.tif")
    assert image.shape == (1, 10, 12) and meta["spatial_dims"] == 2
    np.testing.assert_array_equal(image[0], arr.astype(np.float32))


def test_tiff_rgb_is_2d_colour(tmp_path):
    rgb = RNG.integers(0, 255, size=(10, 12, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image, meta = read_image(tmp_path / "rgb.tif")
    assert image.shape == (3, 10, 12) and meta["spatial_dims"] == 2
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0))


def test_tiff_stack_is_3d_with_spacing(tmp_path):
    vol = RNG.integers(0, 5, size=(6, 10, 12)).astype(np.uint8)
    write_mask(tmp_path / "m.tif", vol, {"spacing": (2.5, 0.5, 0.25)})
    mask, meta = read_mask(tmp_path / "m.tif")
    np.testing.assert_array_equal(mask, vol)
    assert meta["spatial_dims"] == 3
    np.testing.assert_allclose(meta["spacing"], (2.5, 0.5, 0.25), rtol=1e-6)
    tifffile.imwrite(tmp_path / "plain.tif", vol.astype(np.float32))  # no axes names: pages are depth
    image, meta = read_image(tmp_path / "plain.tif")
    assert image.shape == (1, 6, 10, 12) and meta.get("planes_unlabelled")


def test_tiff_channel_axis_from_metadata(tmp_path):
    arr = RNG.random((2, 5, 6, 7)).astype(np.float32)
    tifffile.imwrite(tmp_path / "c.tif", arr, metadata={"axes": "CZYX"})
    image, meta = read_image(tmp_path / "c.tif")
    assert image.shape == (2, 5, 6, 7) and meta["spatial_dims"] == 3
    np.testing.assert_array_equal(image, arr)


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_spacing_and_affine(tmp_path, ext):
    vol = (RNG.random((7, 8, 9)) * 100).astype(np.float32)  # (z, y, x)
    affine = np.diag([0.5, 0.75, 3.0, 1.0])
    affine[:3, 3] = (10, -20, 5)
    nib.save(nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), affine), str(tmp_path / f"v{ext}"))
    image, meta = read_image(tmp_path / f"v{ext}")
    assert image.shape == (1, 7, 8, 9) and meta["spatial_dims"] == 3
    np.testing.assert_array_equal(image[0], vol)
    np.testing.assert_allclose(meta["spacing"], (3.0, 0.75, 0.5))
    labels = (vol > 50).astype(np.uint8)
    out = write_mask(tmp_path / f"pred{ext}", labels, meta)
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, affine)
    assert back.get_data_dtype() == np.uint8
    mask, mmeta = read_mask(out)
    np.testing.assert_array_equal(mask, labels)
    np.testing.assert_allclose(mmeta["spacing"], meta["spacing"])


def test_nifti_4d_channels_last_become_channels_first(tmp_path):
    arr = RNG.random((4, 5, 6, 2)).astype(np.float32)  # (x, y, z, C)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(tmp_path / "c.nii.gz"))
    image, _ = read_image(tmp_path / "c.nii.gz")
    assert image.shape == (2, 6, 5, 4)
    np.testing.assert_array_equal(image[1], arr[..., 1].transpose(2, 1, 0))


def test_float_stored_integer_nifti_mask_becomes_integers(tmp_path):
    m = RNG.integers(0, 5, size=(3, 4, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(m, np.eye(4)), str(tmp_path / "m.nii.gz"))
    mask, _ = read_mask(tmp_path / "m.nii.gz")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, m.transpose(2, 1, 0))


@pytest.mark.parametrize("ext", [".png", ".tif", ".nii.gz"])
def test_write_mask_round_trip(tmp_path, ext):
    labels = RNG.integers(0, 3, size=(11, 13))
    out = write_mask(tmp_path / "sub" / f"m{ext}", labels)
    mask, _ = read_mask(out)
    np.testing.assert_array_equal(mask, labels)
    assert mask.dtype == np.uint8


def test_write_mask_refuses_3d_png_and_jpeg(tmp_path):
    with pytest.raises(DataError, match="PNG holds 2D"):
        write_mask(tmp_path / "m.png", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(DataError, match="lossy"):
        write_mask(tmp_path / "m.jpg", np.zeros((3, 4), np.uint8))


@pytest.mark.parametrize("shape", [(3, 10, 12), (2, 4, 5, 6)])
def test_probabilities_round_trip(tmp_path, shape):
    probs = RNG.random(shape).astype(np.float32)
    image, meta = read_image(write_probabilities(tmp_path / "p.tif", probs))
    np.testing.assert_array_equal(image, probs.astype(np.float16))  # stored as float16 (issue 24)
    assert meta["spatial_dims"] == len(shape) - 1


def test_rgb_mask_with_equal_channels_is_accepted_else_error(tmp_path):
    m = RNG.integers(0, 2, size=(6, 6)).astype(np.uint8) * 255
    mask, _ = read_mask(_pil(tmp_path / "grey_rgb.png", np.stack([m] * 3, -1)))
    np.testing.assert_array_equal(mask, m)
    colour = np.stack([m, 255 - m, m], -1)
    with pytest.raises(DataError, match="different channels"):
        read_mask(_pil(tmp_path / "colour.png", colour))


def test_stem_and_list_images_group_nnunet_channels(tmp_path):
    assert stem_of("a/b/case.nii.gz") == "case" and stem_of("x/scan_2019.png") == "scan_2019"
    ts = tmp_path / "imagesTs"
    for case in ("a", "b"):
        for k in range(2):
            write_image(ts / f"{case}_{k:04d}.png", np.full((4, 5), 10 * k + 1, np.uint8))
    (ts / ".hidden.png").write_bytes(b"junk")
    files = list_images(tmp_path)
    assert [f.name for f in files] == ["a_0000.png", "b_0000.png"]
    assert stem_of(files[0]) == "a"
    image, _ = read_image(files[1])
    assert image.shape == (2, 4, 5) and image[1, 0, 0] == 11
    single, _ = read_image(files[1], group_channels=False)
    assert single.shape == (1, 4, 5)


def test_list_images_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images found"):
        list_images(tmp_path / "empty")
    (tmp_path / "notes.bmp").write_bytes(b"BM")
    with pytest.raises(DataError, match=r"notes\.bmp: unsupported file type \.bmp"):
        list_images(tmp_path / "notes.bmp")


def test_match_channels(tmp_path):
    grey = np.ones((1, 4, 4), np.float32)
    assert match_channels(grey, 3).shape == (3, 4, 4)
    assert match_channels(np.ones((3, 4, 4), np.float32), 1).shape == (1, 4, 4)
    with pytest.raises(DataError, match="x.png: image has 2 channel"):
        match_channels(np.ones((2, 4, 4), np.float32), 3, source="x.png")
