"""Lazy whole-slide / volume readers: region reads equal the full array, pixel sizes, levels, tissue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from unetseg.errors import DataError
from unetseg.io.lazy import (
    choose_level,
    header_nbytes,
    mask_scale,
    open_lazy,
    region_has_tissue,
    tissue_mask,
)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pyramid_ome(path: Path, data: np.ndarray, px: float, levels: int = 3, **kw) -> list[np.ndarray]:
    """Tiled, deflate-compressed, pyramidal OME-TIFF with SubIFDs; returns the stored levels."""
    pyr = [data[:: 2**i, :: 2**i] for i in range(levels)]
    rgb = data.ndim == 3
    opts = dict(tile=(128, 128), compression="zlib", photometric="rgb" if rgb else "minisblack", **kw)
    with tifffile.TiffWriter(path, ome=True) as tw:
        meta = {"axes": "YXS" if rgb else "YX", "PhysicalSizeX": px, "PhysicalSizeY": px}
        tw.write(pyr[0], subifds=levels - 1, metadata=meta, **opts)
        for lvl in pyr[1:]:
            tw.write(lvl, subfiletype=1, **opts)
    return pyr


@pytest.fixture
def ome_rgb(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path / "slide.ome.tif"
    return path, _pyramid_ome(path, _rgb(600, 520), px=0.25)


def test_pyramidal_ome_tiff_regions_levels_and_pixel_sizes(ome_rgb):
    path, pyr = ome_rgb
    with open_lazy(path) as im:
        assert (im.spatial_dims, im.channels, im.dtype) == (2, 3, np.uint8)
        assert len(im.levels) == 3 and im.meta["tiled"]
        assert [im.shape(i) for i in range(3)] == [p.shape[:2] for p in pyr]
        region = (slice(130, 257), slice(61, 300))
        got = im.read(region)
        assert got.dtype == np.float32 and got.shape == (3, 127, 239)
        np.testing.assert_array_equal(got, np.moveaxis(pyr[0][region], -1, 0))
        np.testing.assert_array_equal(im.read((slice(10, 40), slice(5, 90)), level=2),
                                      np.moveaxis(pyr[2][10:40, 5:90], -1, 0))
        assert im.pixel_size(0) == pytest.approx((0.25, 0.25))
        assert im.pixel_size(2) == pytest.approx((1.0, 1.0))
        assert choose_level(im, 0.25) == 0
        assert choose_level(im, 0.5) == 1
        assert choose_level(im, 0.9) == 2
        assert choose_level(im, 100.0) == 2
        assert choose_level(im, 0.7) == 1  # 0.7 is nearer 0.5 than 1.0 in log ratio
        assert choose_level(im, None) == 0
    assert header_nbytes(path) == 4 * 3 * 600 * 520


def test_bigtiff_stripped_with_inch_resolution(tmp_path: Path):
    data = np.random.default_rng(1).integers(0, 60000, (300, 211), dtype=np.uint16)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, bigtiff=True, rowsperstrip=16, compression="zlib",
                     resolution=(2540.0, 1270.0), resolutionunit="INCH")
    with open_lazy(path) as im:
        assert im.meta["bigtiff"] and not im.meta["tiled"]
        np.testing.assert_array_equal(im.read((slice(17, 250), slice(3, 200)))[0], data[17:250, 3:200])
        assert im.pixel_size() == pytest.approx((20.0, 10.0))  # 25400 µm per inch / px per inch
    assert header_nbytes(path) == 4 * 300 * 211


def test_rgba_channels_last_is_channel_first_without_alpha(tmp_path: Path):
    data = np.random.default_rng(2).integers(0, 256, (40, 30, 4), dtype=np.uint8)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, data, photometric="rgb", extrasamples=["unassalpha"])
    with open_lazy(path) as im:
        assert im.channels == 3 and im.pixel_size() is None  # resolution tags without a unit
        np.testing.assert_array_equal(im.read((slice(5, 9),)), np.moveaxis(data[5:9, :, :3], -1, 0))


def test_imagej_stack_spacing(tmp_path: Path):
    vol = np.random.default_rng(3).integers(0, 4000, (6, 50, 40), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "um"})
    with open_lazy(path) as im:
        assert (im.spatial_dims, im.channels, im.shape()) == (3, 1, (6, 50, 40))
        assert im.pixel_size() == pytest.approx((2.0, 0.25, 0.25))
        np.testing.assert_array_equal(im.read((slice(1, 4), slice(10, 30), slice(0, 7)))[0],
                                      vol[1:4, 10:30, 0:7])


def test_ome_zarr_04_written_by_ome_zarr(tmp_path: Path):
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    data = np.random.default_rng(4).integers(0, 255, (2, 128, 96), dtype=np.uint8)
    path = tmp_path / "img.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    write_image(data, root, scale_factors=[2], fmt=FormatV04(), axes="cyx", method="nearest",
                scale={"c": 1.0, "y": 0.5, "x": 0.4}, axes_units={"y": "micrometer", "x": "nanometer"},
                storage_options={"chunks": (1, 32, 32)})
    with open_lazy(path) as im:
        assert im.meta["ngff_version"] == "0.4" and len(im.levels) == 2
        assert (im.channels, im.shape(0), im.shape(1)) == (2, (128, 96), (64, 48))
        np.testing.assert_array_equal(im.read((slice(20, 70), slice(33, 90))), data[:, 20:70, 33:90])
        assert im.pixel_size(0) == pytest.approx((0.5, 0.0004))
        assert im.pixel_size(1) == pytest.approx((1.0, 0.0008))
    assert header_nbytes(path) == 4 * 2 * 128 * 96


def test_ome_zarr_05_hand_built_v3(tmp_path: Path):
    import zarr

    vol = np.random.default_rng(5).random((1, 3, 8, 30, 20)).astype(np.float32)
    path = tmp_path / "vol.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("s0", data=vol, chunks=(1, 3, 4, 16, 16))
    root.create_array("s1", data=vol[..., ::2, ::2], chunks=(1, 3, 4, 16, 16))
    um = {"type": "space", "unit": "micrometer"}
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            {"name": "z", **um}, {"name": "y", **um}, {"name": "x", **um}]
    datasets = [{"path": f"s{i}", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0, 1.0, 3.0, 0.5 * 2**i, 0.5 * 2**i]}]} for i in range(2)]
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}
    with open_lazy(path) as im:
        assert (im.spatial_dims, im.channels, im.shape(1)) == (3, 3, (8, 15, 10))
        np.testing.assert_array_equal(im.read((slice(2, 7), slice(4, 29), slice(1, 20))),
                                      vol[0, :, 2:7, 4:29, 1:20])
        assert im.pixel_size(1) == pytest.approx((3.0, 1.0, 1.0))
        assert im.meta["ngff_version"] == "0.5"
        assert choose_level(im, (3.0, 1.0, 1.0)) == 1


def test_nifti_lazy_transposed_with_zooms(tmp_path: Path):
    import nibabel as nib

    xyz = np.random.default_rng(6).random((20, 16, 9)).astype(np.float32)
    affine = np.diag([0.8, 0.7, 2.0, 1.0])
    img = nib.Nifti1Image(xyz, affine)
    img.header.set_xyzt_units("mm")
    path = tmp_path / "ct.nii"
    nib.save(img, str(path))
    with open_lazy(path) as im:
        assert im.shape() == (9, 16, 20) and im.channels == 1
        zyx = np.transpose(xyz, (2, 1, 0))
        np.testing.assert_array_equal(im.read((slice(2, 5), slice(3, 11), slice(0, 13)))[0],
                                      zyx[2:5, 3:11, 0:13])
        assert im.pixel_size() == pytest.approx((2000.0, 700.0, 800.0))
        assert im.meta["spacing"] == pytest.approx((2.0, 0.7, 0.8))
        np.testing.assert_allclose(im.meta["affine"], affine)
    assert header_nbytes(path) == 4 * 20 * 16 * 9


def test_png_jpeg_in_memory_and_headers(tmp_path: Path):
    from PIL import Image

    rgb = _rgb(33, 47, seed=7)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.jpg")
    with open_lazy(tmp_path / "a.png") as im:
        assert len(im.levels) == 1 and im.pixel_size() is None
        np.testing.assert_array_equal(im.read((slice(3, 9), slice(2, 40))),
                                      np.moveaxis(rgb[3:9, 2:40], -1, 0))
    assert header_nbytes(tmp_path / "a.png") == 4 * 3 * 33 * 47
    assert header_nbytes(tmp_path / "g.jpg") == 4 * 33 * 47


def test_header_nbytes_of_a_bomb_reads_no_pixels(tmp_path: Path):
    from PIL import Image

    # 20000 x 12000 grey PNG of zeros: ~ a few hundred kB on disk, 960 MB as float32.
    path = tmp_path / "bomb.png"
    Image.new("L", (20000, 12000)).save(path, optimize=False)
    assert header_nbytes(path) == 4 * 20000 * 12000


def _one_line_error(call, path: Path) -> str:
    with pytest.raises(DataError) as e:
        call()
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    return msg


def test_corrupt_and_truncated_files_are_one_line(tmp_path: Path, ome_rgb):
    path, _ = ome_rgb
    raw = path.read_bytes()
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(raw[: len(raw) // 2])  # IFDs intact, tiles missing: fails when decoded
    def read_all():
        with open_lazy(cut) as im:
            im.read()
    assert "cannot decode" in _one_line_error(read_all, cut)
    head = tmp_path / "head.tif"
    head.write_bytes(raw[:12])
    _one_line_error(lambda: open_lazy(head), head)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not an image at all")
    assert "unrecognised" in _one_line_error(lambda: open_lazy(junk), junk)
    png = tmp_path / "bad.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    _one_line_error(lambda: header_nbytes(png), png)
    _one_line_error(lambda: open_lazy(tmp_path / "missing.tif"), tmp_path / "missing.tif")


def _slide(h: int, w: int, bright_field: bool) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    blob = ((yy - h * 0.45) / (h * 0.25)) ** 2 + ((xx - w * 0.55) / (w * 0.3)) ** 2 < 1
    noise = np.random.default_rng(8).normal(0, 6, (h, w, 1))
    if bright_field:  # white glass, pink tissue
        img = np.where(blob[..., None], [170, 90, 150], [238, 236, 240]) + noise
    else:  # dark background, bright nuclei stain
        img = np.where(blob[..., None], [40, 200, 60], [8, 6, 10]) + noise
    return np.clip(img, 0, 255).astype(np.uint8), blob


@pytest.mark.parametrize("bright_field", [True, False])
def test_tissue_mask_polarity_and_region_query(tmp_path: Path, bright_field: bool):
    data, blob = _slide(1200, 1100, bright_field)
    path = tmp_path / "wsi.ome.tif"
    _pyramid_ome(path, data, px=0.5, levels=3)
    with open_lazy(path) as im:
        mask, level = tissue_mask(im)
        assert level == 1 and mask.shape == im.shape(1)  # 600 x 550: the smallest level >= 512 px
        scale = mask_scale(im, mask)
        assert scale == pytest.approx((2.0, 2.0))
        truth = blob[::2, ::2]
        assert (mask == truth).mean() > 0.98
        assert region_has_tissue(mask, scale, (slice(500, 756), slice(550, 806)))
        assert not region_has_tissue(mask, scale, (slice(0, 128), slice(0, 128)))
        assert not region_has_tissue(mask, scale, (slice(1072, 1200), slice(972, 1100)))


def test_tissue_mask_strides_a_level_without_pyramid(tmp_path: Path):
    data, blob = _slide(1200, 1100, bright_field=True)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, data, photometric="rgb", tile=(256, 256), compression="zlib")
    with open_lazy(path) as im:
        mask, level = tissue_mask(im, min_side=256)
        assert level == 0 and mask.shape == (300, 275)
        assert mask_scale(im, mask) == pytest.approx((4.0, 4.0))
        assert (mask == blob[::4, ::4]).mean() > 0.97
