"""Bad input: one DataError line naming the file for each case; --skip-bad reports, skips and counts;
fuzzed bytes never escape as anything but DataError."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from unetseg.config import Config
from unetseg.data import ClassMap, find_cases, load_case
from unetseg.data.prepare import prepare_data
from unetseg.errors import DataError
from unetseg.io.images import read_image, read_mask, write_image, write_mask


def _one_line(err: pytest.ExceptionInfo, path: Path | str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def _cfg(data: Path, **kw) -> Config:
    cfg = Config()
    cfg.data.data = str(data)
    for k, v in kw.items():
        setattr(cfg.data, k, v)
    return cfg


def test_missing_mask(cells2d):
    (cells2d / "masks" / "case_002.png").unlink()
    with pytest.raises(DataError) as e:
        find_cases(cells2d)
    assert "no mask found" in _one_line(e, cells2d / "images" / "case_002.png")


def test_mask_without_image(cells2d):
    (cells2d / "images" / "case_004.png").unlink()
    with pytest.raises(DataError) as e:
        find_cases(cells2d)
    assert "mask without an image" in _one_line(e, cells2d / "masks" / "case_004.png")


def test_size_mismatch(cells2d):
    write_mask(cells2d / "masks" / "case_001.png", np.zeros((64, 60), np.uint8))
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(cells2d))
    msg = _one_line(e, cells2d / "masks" / "case_001.png")
    assert "mask size (64, 60) does not match image case_001.png size (64, 64)" in msg


def test_3d_mask_for_2d_image(cells2d):
    mask = cells2d / "masks" / "case_000.png"
    mask.unlink()
    write_mask(cells2d / "masks" / "case_000.tif", np.zeros((3, 64, 64), np.uint8), {"spacing": (1, 1, 1)})
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(cells2d))
    msg = _one_line(e, cells2d / "masks" / "case_000.tif")
    assert "mask is 3D (3, 64, 64) but image case_000.png is 2D" in msg


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError) as e:
        read_image(p)
    assert "empty file (0 bytes)" in _one_line(e, p)


def test_truncated_png(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, "PNG")
    p = tmp_path / "cell_03.png"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError) as e:
        read_image(p)
    assert "truncated or corrupt PNG file (cannot decode" in _one_line(e, p)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("these are my notes, not an image\n")
    with pytest.raises(DataError) as e:
        read_mask(p)
    assert "not a PNG file" in _one_line(e, p)


def test_unsupported_extension(cells2d):
    (cells2d / "images" / "extra.bmp").write_bytes(b"BM....")
    with pytest.raises(DataError) as e:
        find_cases(cells2d)
    assert "unsupported file type .bmp" in _one_line(e, cells2d / "images" / "extra.bmp")


def test_empty_folder(tmp_path):
    (tmp_path / "d" / "images").mkdir(parents=True)
    (tmp_path / "d" / "masks").mkdir()
    with pytest.raises(DataError) as e:
        find_cases(tmp_path / "d")
    assert "no usable images found" in _one_line(e, tmp_path / "d" / "images")


def test_mask_values_outside_class_map_at_evaluation(cells2d):
    case = find_cases(cells2d)[0]
    write_mask(case.mask_path, np.where(read_mask(case.mask_path)[0] > 0, 7, 0).astype(np.uint8))
    with pytest.raises(DataError) as e:
        load_case(case, Config().data, ClassMap([0, 255]))
    assert "value(s) [7] not in the class map [0, 255]" in _one_line(e, case.mask_path)


def test_val_mask_values_outside_training_map(cells2d, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(cells2d, val)
    write_mask(val / "masks" / "case_005.png", np.full((64, 64), 128, np.uint8))
    with pytest.raises(DataError) as e:
        prepare_data(_cfg(cells2d, val_data=str(val)))
    assert "value(s) [128] not in the class map [0, 255]" in _one_line(e, val / "masks" / "case_005.png")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_pixels(tmp_path, bad):
    arr = np.ones((8, 8), np.float32)
    arr[2, 3] = bad
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, arr)
    with pytest.raises(DataError) as e:
        read_image(p)
    assert "1 NaN/inf pixel value(s)" in _one_line(e, p)


def test_skip_bad_reports_skips_and_counts(cells2d, capsys):
    (cells2d / "masks" / "case_002.png").write_bytes(b"")  # unreadable mask
    (cells2d / "images" / "case_003.png").write_text("not an image")  # text named .png
    write_image(cells2d / "images" / "orphan.png", np.zeros((64, 64), np.uint8))  # image without mask
    cfg = _cfg(cells2d, skip_bad=True, val_fraction=0.25)
    prep = prepare_data(cfg)
    err = capsys.readouterr().err
    assert prep.skipped == 3
    assert err.count("skipped: ") == 3 and "skipped 3 bad pair(s)" in err
    names = sorted(c.name for c in prep.train_cases + prep.val_cases)
    assert names == ["case_000", "case_001", "case_004", "case_005"]
    with pytest.raises(DataError):
        prepare_data(_cfg(cells2d))  # without --skip-bad the first bad pair stops


def _raise_only_data_error(path: Path, reader) -> None:
    try:
        reader(path)
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))


def _valid_bytes() -> dict[str, bytes]:
    arr = np.random.default_rng(1).integers(0, 255, (32, 32), dtype=np.uint8)
    out = {}
    for fmt, ext in (("PNG", ".png"), ("JPEG", ".jpg")):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        out[ext] = buf.getvalue()
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr[None].repeat(3, 0))
    out[".tif"] = buf.getvalue()
    img = nib.Nifti1Image(arr[:, :, None].astype(np.float32), np.eye(4))
    out[".nii"] = img.to_bytes()
    import gzip

    out[".nii.gz"] = gzip.compress(out[".nii"])
    return out


VALID = _valid_bytes()
FUZZ = settings(max_examples=50, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(ext=st.sampled_from(sorted(VALID)), data=st.binary(min_size=1, max_size=600))
def test_fuzz_random_bytes(tmp_path, ext, data):
    p = tmp_path / f"fuzz{ext}"
    p.write_bytes(VALID[ext][:8] + data if data[0] % 2 else data)  # half keep a valid signature
    _raise_only_data_error(p, read_image)
    _raise_only_data_error(p, read_mask)


@FUZZ
@given(ext=st.sampled_from(sorted(VALID)), cut=st.floats(0.0, 0.999), flip=st.integers(0, 10**6))
def test_fuzz_truncated_and_corrupted(tmp_path, ext, cut, flip):
    raw = bytearray(VALID[ext][: max(1, int(len(VALID[ext]) * cut))])
    if flip % 3 == 0:
        raw[flip % len(raw)] ^= 0xFF
    p = tmp_path / f"trunc{ext}"
    p.write_bytes(bytes(raw))
    _raise_only_data_error(p, read_image)
    _raise_only_data_error(p, read_mask)
