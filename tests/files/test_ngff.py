"""Streamed OME-Zarr label writer (pyramid, metadata, atomic rename, resume) and the OME-TIFF export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from unetseg.errors import DataError
from unetseg.io.ngff import (
    MANIFEST,
    LabelZarrWriter,
    downsample_mode,
    pyramid_factors,
)
from unetseg.io.ometiff import write_ome_tiff_from_zarr


def _labels(shape: tuple[int, ...], classes: int = 4, seed: int = 0) -> np.ndarray:
    """Blocky labels (runs of equal values, like a segmentation) with a few random pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, tuple(-(-s // 7) for s in shape))
    lab = coarse
    for ax in range(len(shape)):
        lab = np.repeat(lab, 7, axis=ax)
    lab = lab[tuple(slice(0, s) for s in shape)].copy()
    lab[rng.random(shape) < 0.05] = classes - 1
    return lab


def _write_rows(w: LabelZarrWriter, lab: np.ndarray, rows, probs: np.ndarray | None = None,
                col_split: int | None = None) -> None:
    for r in rows:
        region = w.row_region(r)
        cuts = [0, col_split, lab.shape[1]] if col_split else [0, lab.shape[1]]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            reg = (region[0], slice(a, b), *region[2:])
            w.write((region[0].start, a, *([0] * (lab.ndim - 2))), lab[reg],
                    None if probs is None else probs[(slice(None), *reg)])


def _mode_reference(lab: np.ndarray) -> np.ndarray:
    out = np.zeros((-(-lab.shape[0] // 2), -(-lab.shape[1] // 2)), dtype=lab.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            vals, counts = np.unique(lab[2 * i: 2 * i + 2, 2 * j: 2 * j + 2], return_counts=True)
            out[i, j] = vals[counts == counts.max()].max()
    return out


def test_mode_downsampling_and_pyramid_rule():
    lab = np.array([[1, 1, 2, 3], [1, 0, 3, 2], [5, 5, 0, 0], [4, 4, 0, 7]], dtype=np.uint16)
    np.testing.assert_array_equal(downsample_mode(lab, (2, 2)), [[1, 3], [5, 0]])  # 2/3 tie -> 3
    odd = _labels((37, 29), seed=2)
    np.testing.assert_array_equal(downsample_mode(odd, (2, 2)), _mode_reference(odd))
    assert pyramid_factors((2000, 1500)) == [(2, 2)]
    assert pyramid_factors((5000, 300)) == [(2, 2)] * 3
    assert pyramid_factors((800, 800)) == []
    # z at 4x the in-plane size: y/x first until z is no longer much coarser, then all three
    assert pyramid_factors((40, 300, 260), (2.0, 0.5, 0.5), levels=4) == [(1, 2, 2), (1, 2, 2), (2, 2, 2)]


def test_2d_labels_in_bands_with_probabilities(tmp_path: Path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    lab = _labels((2000, 1500), classes=300).astype(np.uint16)
    probs = np.random.default_rng(1).random((2, 2000, 1500), dtype=np.float32)
    out = tmp_path / "slide.ome.zarr"
    w = LabelZarrWriter(out, lab.shape, "uint16", pixel_size=(0.5, 0.5), probabilities=2)
    assert w.chunks == (512, 512) and w.n_rows == 4
    _write_rows(w, lab, range(w.n_rows), probs)
    assert w.completed_rows() == [0, 1, 2, 3] and not out.exists()
    assert w.finish() == out
    assert out.is_dir() and not (tmp_path / ".slide.ome.zarr.tmp").exists()
    assert not (out / MANIFEST).exists()

    root = zarr.open_group(str(out), mode="r")
    assert root["0"].dtype == np.uint16 and root["0"].chunks == (512, 512)
    np.testing.assert_array_equal(root["0"][:], lab)
    assert root["1"].shape == (1000, 750)
    np.testing.assert_array_equal(root["1"][:200, :150], _mode_reference(lab[:400, :300]))
    assert "2" not in root  # 1000 <= 1024: the pyramid stops
    assert root["0"].metadata.compressor.get_config()["cname"] == "zstd"
    np.testing.assert_array_equal(root["probabilities/0"][:], np.rint(probs * 255).astype(np.uint8))
    assert root["probabilities/1"].shape == (2, 1000, 750)

    nodes = list(Reader(parse_url(str(out)))())
    node = nodes[0]
    assert any(isinstance(s, Label) for s in node.specs)
    assert [d.shape for d in node.data] == [(2000, 1500), (1000, 750)]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[0.5, 0.5], [1.0, 1.0]]
    assert [a["unit"] for a in node.metadata["axes"]] == ["micrometer"] * 2
    np.testing.assert_array_equal(np.asarray(node.data[0][:64, :64]), lab[:64, :64])


def test_3d_volume_pyramid_scales(tmp_path: Path):
    vol = _labels((40, 150, 130), classes=3, seed=4).astype(np.uint8)
    out = tmp_path / "vol.ome.zarr"
    w = LabelZarrWriter(out, vol.shape, "uint8", pixel_size=(2.0, 0.5, 0.5), chunks=(16, 64, 64), levels=4)
    for r in range(w.n_rows):
        w.write((r * 16, 0, 0), vol[w.row_region(r)])
    w.finish()
    root = zarr.open_group(str(out), mode="r")
    shapes = [root[str(i)].shape for i in range(4)]
    assert shapes == [(40, 150, 130), (40, 75, 65), (40, 38, 33), (20, 19, 17)]
    np.testing.assert_array_equal(root["0"][:], vol)
    ms = root.attrs["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0], [4.0, 4.0, 4.0]]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]


def test_resume_after_kill_equals_clean_run(tmp_path: Path):
    lab = _labels((1100, 900), classes=5, seed=7).astype(np.uint8)
    kw = dict(pixel_size=(0.25, 0.25), chunks=(256, 256), levels=3)
    out = tmp_path / "part.ome.zarr"
    w = LabelZarrWriter(out, lab.shape, "uint8", **kw)
    _write_rows(w, lab, [0, 1, 2], col_split=512)
    reg = w.row_region(3)
    w.write((reg[0].start, 0), lab[reg[0], :512])  # half a row: not complete
    assert w.completed_rows() == [0, 1, 2]
    del w  # killed: finish never ran

    again = LabelZarrWriter(out, lab.shape, "uint8", resume=True, **kw)
    assert again.completed_rows() == [0, 1, 2] and again.pending_rows() == [3, 4]
    _write_rows(again, lab, again.pending_rows())
    again.finish()

    clean = tmp_path / "clean.ome.zarr"
    c = LabelZarrWriter(clean, lab.shape, "uint8", **kw)
    _write_rows(c, lab, range(c.n_rows))
    c.finish()
    a, b = zarr.open_group(str(out), mode="r"), zarr.open_group(str(clean), mode="r")
    for level in ("0", "1", "2"):
        np.testing.assert_array_equal(a[level][:], b[level][:])
    assert a.attrs["multiscales"][0]["datasets"] == b.attrs["multiscales"][0]["datasets"]


def test_resume_distrusts_rows_with_missing_chunks_and_other_settings(tmp_path: Path):
    lab = _labels((600, 300), seed=9).astype(np.uint8)
    out = tmp_path / "x.ome.zarr"
    w = LabelZarrWriter(out, lab.shape, "uint8", chunks=(128, 128))
    _write_rows(w, lab, range(3))
    background = np.zeros_like(lab[w.row_region(3)])
    w.write((384, 0), background)  # all-background chunks are stored too, so they can be checked
    assert w.completed_rows() == [0, 1, 2, 3]
    (tmp_path / ".x.ome.zarr.tmp" / "0" / "1" / "2").unlink()  # row 1, last column chunk lost
    again = LabelZarrWriter(out, lab.shape, "uint8", chunks=(128, 128), resume=True)
    assert again.completed_rows() == [0, 2, 3]
    with pytest.raises(DataError, match="other settings"):
        LabelZarrWriter(out, (600, 301), "uint8", chunks=(128, 128), resume=True)
    fresh = LabelZarrWriter(tmp_path / "new.ome.zarr", lab.shape, "uint8", resume=True)
    assert fresh.completed_rows() == [] and fresh.pending_rows() == [0, 1]


def test_write_alignment_and_incomplete_finish(tmp_path: Path):
    w = LabelZarrWriter(tmp_path / "y.ome.zarr", (300, 200), "uint8", chunks=(128, 128))
    with pytest.raises(ValueError, match="chunk boundary"):
        w.write((64, 0), np.zeros((64, 200), np.uint8))
    with pytest.raises(ValueError, match="chunk boundary"):
        w.write((0, 0), np.zeros((128, 100), np.uint8))
    with pytest.raises(ValueError, match="do not fit"):
        w.write((0, 0), np.full((128, 200), 300))
    w.write((256, 0), np.ones((44, 200), np.uint8))  # ends at the image edge: allowed
    with pytest.raises(DataError, match="2 of 3 chunk row"):
        w.finish()
    assert not (tmp_path / "y.ome.zarr").exists()


def test_ngff_05_store_round_trips_through_the_lazy_reader(tmp_path: Path):
    from unetseg.io.lazy import open_lazy

    lab = _labels((300, 260), seed=3).astype(np.uint32)
    w = LabelZarrWriter(tmp_path / "v5.ome.zarr", lab.shape, "uint32", pixel_size=(0.3, 0.3),
                        chunks=(128, 128), levels=2, version="0.5")
    _write_rows(w, lab, range(w.n_rows))
    with open_lazy(w.finish()) as im:
        assert im.meta["ngff_version"] == "0.5" and im.meta["image_label"]
        assert im.pixel_size(1) == pytest.approx((0.6, 0.6))
        np.testing.assert_array_equal(im.levels[0][0, 10:200, 5:77], lab[10:200, 5:77])


def test_ome_tiff_export_from_store_and_from_array(tmp_path: Path):
    import tifffile

    from unetseg.io.lazy import open_lazy

    lab = _labels((1300, 1100), classes=6, seed=5).astype(np.uint8)
    store = tmp_path / "s.ome.zarr"
    w = LabelZarrWriter(store, lab.shape, "uint8", pixel_size=(0.5, 0.5), levels=3)
    _write_rows(w, lab, range(w.n_rows))
    w.finish()
    tif = write_ome_tiff_from_zarr(store, tmp_path / "s.ome.tif", levels=3)
    root = zarr.open_group(str(store), mode="r")
    with tifffile.TiffFile(tif) as t:
        s = t.series[0]
        assert t.is_ome and s.is_pyramidal and len(s.levels) == 3 and t.pages[0].is_tiled
        assert t.pages[0].tilewidth == 512 and t.pages[0].compression == 8  # deflate
        for k in range(3):
            np.testing.assert_array_equal(s.levels[k].asarray(), root[str(k)][:])
    with open_lazy(tif) as im:
        assert im.pixel_size(0) == pytest.approx((0.5, 0.5))
        assert im.pixel_size(2) == pytest.approx((2.0, 2.0), rel=0.01)
    assert not (tmp_path / ".s.ome.tif.tmp").exists()

    vol = _labels((3, 700, 520), seed=6).astype(np.uint16)
    tif3 = write_ome_tiff_from_zarr(vol, tmp_path / "v.ome.tif", (2.0, 0.4, 0.4), tile=256, levels=2)
    with tifffile.TiffFile(tif3) as t:
        s = t.series[0]
        assert s.axes == "ZYX" and [lv.shape for lv in s.levels] == [(3, 700, 520), (3, 350, 260)]
        np.testing.assert_array_equal(s.levels[1].asarray(), vol[:, ::2, ::2])
    with open_lazy(tif3) as im:
        assert im.pixel_size(0) == pytest.approx((2.0, 0.4, 0.4))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_metadata_is_what_the_ome_zarr_writer_writes(tmp_path: Path, version: str):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    w = LabelZarrWriter(tmp_path / "m.ome.zarr", (40, 2100, 3000), pixel_size=(2.0, 0.5, 0.5),
                        probabilities=2, version=version, colors={1: (255, 0, 0, 255), 2: (0, 9, 0, 255)})
    fmt = FormatV04() if version == "0.4" else FormatV05()
    for lead in (0, 1):
        ours = w.attributes(lead)
        multiscale = (ours["multiscales"] if version == "0.4" else ours["ome"]["multiscales"])[0]
        group = zarr.open_group(str(tmp_path / f"ref{lead}"), mode="w",
                                zarr_format=2 if version == "0.4" else 3)
        write_multiscales_metadata(group, multiscale["datasets"], fmt=fmt, axes=multiscale["axes"],
                                   name=multiscale["name"])
        if not lead:
            add_metadata(group, {"image-label": {"version": fmt.version, "colors": [
                {"label-value": 1, "rgba": [255, 0, 0, 255]}, {"label-value": 2, "rgba": [0, 9, 0, 255]}]}},
                fmt=fmt)
        assert ours == dict(group.attrs)
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales[0] == [1.0, 2.0, 0.5, 0.5] and scales[1] == [1.0, 2.0, 1.0, 1.0]  # z kept until isotropic


def test_pyramid_is_built_while_chunks_arrive(tmp_path: Path):
    lab = _labels((2100, 2200))
    w = LabelZarrWriter(tmp_path / "p.ome.zarr", lab.shape, chunks=(128, 128), probabilities=1)
    probs = (lab[None] % 7 / 7.0).astype(np.float32)
    for c in range(0, 2200, 512):  # strip by strip, as a strip-wise prediction writes
        for r in range(0, 2100, 128):
            block = (slice(r, r + 128), slice(c, c + 512))
            w.write((r, c), lab[block], probs[(slice(None), *block)])
        if c == 0:  # the first strip's level-1 and level-2 chunks exist already, no others
            level1, level2 = w._pyramid.built[1], w._pyramid.built[2]
            assert level1[:, :2].all() and not level1[:, 2:].any() and level2[:, 0].all()
    assert all(b.all() for b in w._pyramid.built)  # the whole pyramid before finish
    root = zarr.open_group(str(w.finish()), mode="r")
    assert len(root.attrs["multiscales"][0]["datasets"]) == 3
    want = lab
    for level in (1, 2):
        want = downsample_mode(want, (2, 2))
        np.testing.assert_array_equal(root[str(level)][...], want)
        np.testing.assert_array_equal(root["probabilities"][str(level)][...].shape, (1, *want.shape))
