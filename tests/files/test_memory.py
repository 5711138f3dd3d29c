"""Files held in memory (an HTTP upload, a response): the same readers and writers as files on disk."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from unetseg.errors import DataError, TooLargeError
from unetseg.io.images import (
    decode_image,
    encode_instances,
    encode_mask,
    read_image,
    read_mask,
    write_image,
    write_instances,
    write_mask,
)


def _files(tmp_path):
    rng = np.random.default_rng(0)
    grey = (rng.random((20, 30)) * 255).astype(np.uint8)
    rgb = (rng.random((3, 20, 30)) * 255).astype(np.uint8)
    write_image(tmp_path / "grey.png", grey)
    write_image(tmp_path / "rgb.png", rgb)
    write_image(tmp_path / "photo.jpg", rgb)
    rgba = (rng.random((20, 30, 4)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb")
    stack = rng.random((5, 20, 30)).astype(np.float32)
    write_image(tmp_path / "stack.tif", stack, {"spatial_dims": 3, "spacing": (2.0, 0.5, 0.5)})
    cyx = rng.random((2, 20, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "cyx.tif", cyx, metadata={"axes": "CYX"})
    volume = (rng.random((6, 20, 30)) * 1000).astype(np.int16)
    write_image(tmp_path / "volume.nii.gz", volume, {"spatial_dims": 3, "spacing": (3.0, 0.7, 0.7)})
    write_image(tmp_path / "volume.nii", volume, {"spatial_dims": 3, "spacing": (3.0, 0.7, 0.7)})
    return sorted(p for p in tmp_path.iterdir())


def test_bytes_decode_as_their_file_reads(tmp_path):
    for path in _files(tmp_path):
        want, want_meta = read_image(path)
        got, meta = decode_image(path.read_bytes(), "upload")
        assert got.dtype == np.float32 and np.array_equal(got, want), path.name
        for key in ("spacing", "spatial_dims", "channels", "format", "dtype"):
            assert meta.get(key) == want_meta.get(key), (path.name, key)
        if "affine" in want_meta:
            np.testing.assert_array_equal(meta["affine"], want_meta["affine"])


def test_bad_bytes_are_one_line_naming_the_upload(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((64, 64), np.uint8))
    data = (tmp_path / "a.png").read_bytes()
    for bad, needle in [(b"", "empty file"), (b"GIF89a....", "not a PNG, JPEG, TIFF or NIfTI"),
                        (data[:40], "truncated or corrupt PNG")]:
        with pytest.raises(DataError, match=needle) as e:
            decode_image(bad, "upload")
        assert str(e.value).startswith("upload: ")
    with pytest.raises(TooLargeError, match="declares 1x64x64 pixels"):
        decode_image(data, "upload", max_bytes=1000)
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint8), compression="zlib")
    with pytest.raises(TooLargeError, match="over the"):
        decode_image((tmp_path / "a.tif").read_bytes(), "upload", max_bytes=1000)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".nii.gz", ".nii"])
def test_encoded_masks_are_the_files_the_writers_write(tmp_path, suffix):
    labels = np.random.default_rng(1).integers(0, 3, (20, 30)).astype(np.uint8)
    meta = {"spacing": (0.5, 0.25)}
    write_mask(tmp_path / f"file{suffix}", labels, meta)
    (tmp_path / f"memory{suffix}").write_bytes(encode_mask(labels, suffix, meta))
    file, file_meta = read_mask(tmp_path / f"file{suffix}")
    memory, memory_meta = read_mask(tmp_path / f"memory{suffix}")
    assert np.array_equal(memory, labels) and np.array_equal(file, memory)
    assert memory_meta["spacing"] == file_meta["spacing"]


def test_encoded_ids_are_the_files_write_instances_writes(tmp_path):
    ids = np.zeros((10, 12), np.int64)
    ids[2:4, 3:9] = 70000  # past uint16
    write_instances(tmp_path / "file.tif", ids)
    memory = tifffile.imread(io.BytesIO(encode_instances(ids)))
    assert memory.dtype == np.uint32 and np.array_equal(memory, tifffile.imread(tmp_path / "file.tif"))
