"""One reader per format: a file read whole (``read_image``, training and in-memory prediction) and opened
lazily (``open_lazy``, streamed prediction) is the same array, channels, spacing and pixel size."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from unetseg.io.images import read_image, read_mask
from unetseg.io.lazy import open_lazy
from unetseg.io.readers import READERS, Reader

RNG = np.random.default_rng(0)


def _png_grey(p: Path) -> None:
    Image.fromarray(RNG.integers(0, 255, (20, 30), dtype=np.uint8)).save(p)


def _png_rgba(p: Path) -> None:
    Image.fromarray(RNG.integers(0, 255, (20, 30, 4), dtype=np.uint8), mode="RGBA").save(p)


def _tif_grey(p: Path) -> None:
    tifffile.imwrite(p, RNG.integers(0, 4000, (20, 30), dtype=np.uint16), resolution=(2.0, 4.0))


def _tif_rgb(p: Path) -> None:
    tifffile.imwrite(p, RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8), photometric="rgb")


def _tif_stack(p: Path) -> None:
    tifffile.imwrite(p, RNG.random((5, 20, 30), dtype=np.float32), imagej=True,
                     metadata={"axes": "ZYX", "spacing": 2.5, "unit": "um"}, resolution=(2.0, 2.0))


def _tif_singletons(p: Path) -> None:  # an ImageJ hyperstack with singleton time and z: a 2D image
    tifffile.imwrite(p, RNG.integers(0, 255, (1, 1, 2, 20, 30), dtype=np.uint8), imagej=True,
                     metadata={"axes": "TZCYX"})


def _tif_pages(p: Path) -> None:  # a plain multi-page TIFF without axes metadata: unnamed planes
    tifffile.imwrite(p, RNG.integers(0, 255, (5, 20, 30), dtype=np.uint8), metadata=None)


def _ome_tif(p: Path) -> None:
    tifffile.imwrite(p, RNG.integers(0, 255, (2, 20, 30), dtype=np.uint8), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25})


def _nifti(shape: tuple[int, ...], zooms: tuple[float, ...]):
    def write(p: Path) -> None:
        affine = np.eye(4)
        affine[range(min(3, len(zooms))), range(min(3, len(zooms)))] = zooms[:3]
        img = nib.Nifti1Image(RNG.random(shape).astype(np.float32), affine)
        img.header.set_zooms(zooms)
        img.header.set_xyzt_units("mm")
        nib.save(img, str(p))
    return write


CASES = {
    "grey.png": _png_grey,
    "rgba.png": _png_rgba,
    "grey.tif": _tif_grey,
    "rgb.tif": _tif_rgb,
    "stack.tif": _tif_stack,
    "singletons.tif": _tif_singletons,
    "pages.tif": _tif_pages,
    "image.ome.tif": _ome_tif,
    "volume.nii.gz": _nifti((30, 20, 5), (0.5, 0.7, 2.0)),
    "slice.nii.gz": _nifti((30, 20), (0.5, 0.7)),
    "channels.nii.gz": _nifti((30, 20, 5, 2), (0.5, 0.7, 2.0, 1.0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_read_whole_and_opened_lazily_are_the_same_image(name, tmp_path):
    path = tmp_path / name
    CASES[name](path)
    image, meta = read_image(path)
    with open_lazy(path) as lazy:
        np.testing.assert_array_equal(lazy.read(), image)
        assert lazy.channels == image.shape[0] and lazy.spatial_dims == meta["spatial_dims"]
        assert tuple(lazy.meta["spacing"]) == tuple(meta["spacing"])
        if meta["spatial_dims"] == 2 and lazy.pixel_size(0) is not None:
            assert meta["pixel_size"] == lazy.pixel_size(0)
    assert image.dtype == np.float32 and image.ndim == meta["spatial_dims"] + 1
    assert image.shape[-2:] == (20, 30)


def test_what_each_reader_makes_of_its_axes(tmp_path):
    shapes = {}
    for name, write in CASES.items():
        write(tmp_path / name)
        image, meta = read_image(tmp_path / name)
        shapes[name] = (image.shape, meta.get("planes_unlabelled", False))
    assert shapes["rgba.png"][0] == (3, 20, 30)  # alpha dropped
    assert shapes["singletons.tif"][0] == (2, 20, 30)  # singleton time and z dropped, channels kept
    assert shapes["pages.tif"] == ((1, 5, 20, 30), True)  # unnamed planes: depth, marked
    assert shapes["stack.tif"][0] == (1, 5, 20, 30)
    assert shapes["volume.nii.gz"][0] == (1, 5, 20, 30)  # (x, y, z) on disk -> (z, y, x)
    assert shapes["channels.nii.gz"][0] == (2, 5, 20, 30)
    assert read_image(tmp_path / "volume.nii.gz")[1]["spacing"] == pytest.approx((2.0, 0.7, 0.5))  # float32
    assert read_image(tmp_path / "stack.tif")[1]["spacing"] == (2.5, 0.5, 0.5)
    assert read_image(tmp_path / "image.ome.tif")[1]["pixel_size"] == (0.25, 0.5)  # micrometres


def test_every_format_has_one_reader_and_masks_keep_their_values(tmp_path):
    assert all(isinstance(r, Reader) for r in READERS.values())
    assert set(READERS) == {"tiff", "nifti", "png", "jpeg", "zarr"}
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:20] = 7
    tifffile.imwrite(tmp_path / "m.tif", mask)
    got, _ = read_mask(tmp_path / "m.tif")
    np.testing.assert_array_equal(got, mask)
    with open_lazy(tmp_path / "m.tif") as lazy:
        assert lazy.read_stored().dtype == np.uint8
