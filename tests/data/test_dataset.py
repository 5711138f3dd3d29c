"""Class map, normalisation, split, dataset layouts (contract and nnU-Net), load_case and prepare_data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from unetseg.config import Config, DataConfig
from unetseg.data import (
    CaseStore,
    ClassMap,
    Normalizer,
    find_cases,
    load_case,
    normalize,
    split_cases,
)
from unetseg.data.prepare import default_patch_size, prepare_data
from unetseg.errors import ConfigError, DataError
from unetseg.io.images import read_mask, write_image, write_mask


@pytest.mark.parametrize(
    "values, mask, expected",
    [
        ([0, 255], [0, 255, 255, 0], [0, 1, 1, 0]),
        ([0, 1, 2], [2, 0, 1, 2], [2, 0, 1, 2]),
        ([0, 128, 255], [128, 255, 0, 0], [1, 2, 0, 0]),
        ([255, 0], [0, 255, 255, 0], [1, 0, 0, 1]),  # user's order: 255 becomes the background
    ],
)
def test_class_map_encode_decode(values, mask, expected):
    cm = ClassMap(values)
    for dtype in (np.uint8, np.uint16, np.int32, np.float32):
        idx = cm.encode(np.asarray(mask, dtype=dtype))
        np.testing.assert_array_equal(idx, expected)
        assert idx.dtype == np.int64
    decoded = cm.decode(np.asarray(expected))
    np.testing.assert_array_equal(decoded, mask)
    assert decoded.dtype == np.uint8


def test_class_map_merges_values_into_one_class():
    cm = ClassMap([0, [1, 2, 4], 3])  # BraTS-style: several labels become one class
    assert cm.num_classes == 3 and cm.values == [0.0, [1.0, 2.0, 4.0], 3.0]
    assert repr(cm) == "ClassMap([0, 1+2+4, 3])"
    mask = [0, 1, 2, 3, 4, 4]
    for dtype in (np.uint8, np.uint16, np.float32):
        np.testing.assert_array_equal(cm.encode(np.asarray(mask, dtype=dtype)), [0, 1, 1, 2, 1, 1])
    # a merged class decodes to its first value
    np.testing.assert_array_equal(cm.decode(np.array([0, 1, 2])), [0, 1, 3])
    with pytest.raises(DataError, match=r"value\(s\) \[5\] not in the class map \[0, 1\+2\+4, 3\]"):
        cm.encode(np.array([5], np.uint8))
    assert cm != ClassMap([0, 1, 2, 4, 3])
    for bad in ([0, [1, 0]], [0, []], [0, ["x"]]):
        with pytest.raises(ConfigError, match="class map"):
            ClassMap(bad)


def test_inferred_class_values_and_their_mistake_checks():
    from pathlib import Path

    from unetseg.data.labels import infer_class_values

    a, b = Path("a.png"), Path("b.tif")
    u8 = "uint8"
    assert infer_class_values([(a, u8, np.array([0, 255])), (b, u8, np.array([0]))], "D") == [0, 255]
    # one class per image is fine when the values are class codes, not full-scale encodings
    assert infer_class_values([(a, u8, np.array([0, 1])), (b, u8, np.array([0, 2]))], "D") == [0, 1, 2]
    with pytest.raises(DataError, match=r"D: binary masks mark the foreground with different values: "
                                        r"\{0, 255\} in a.png \(uint8\); \{0, 65535\} in b.tif"):
        infer_class_values([(a, "uint8", np.array([0, 255])), (b, "uint16", np.array([0, 65535]))], "D")
    with pytest.raises(DataError, match="--classes 0,1\\+255"):
        infer_class_values([(a, "uint8", np.array([0, 255])), (b, "uint8", np.array([0, 1]))], "D")
    with pytest.raises(DataError, match="instance image"):
        infer_class_values([(a, "uint16", np.arange(100))], "D")
    with pytest.raises(DataError, match=r"^lab\.png: value\(s\) \[3\] not in the class map \[0, 1\]"):
        ClassMap([0, 1]).encode(np.array([0, 3], np.uint8), source="lab.png")
    with pytest.raises(ConfigError):
        ClassMap([0, 0])


def test_normalizers():
    rng = np.random.default_rng(0)
    img = rng.normal(50, 7, size=(2, 32, 32)).astype(np.float32)
    img[1] *= 3
    z = normalize(img, DataConfig())
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1, atol=1e-3)
    spiky = img.copy()
    spiky[0, 0, 0] = 1e6  # an outlier the percentile clip removes
    p = Normalizer("percentile", (1, 99))(spiky)
    assert abs(p[0].max()) < 5
    ct = np.array([[[-2000, -1000, 0, 1000, 3000]]], np.float32)
    w = Normalizer("window", window=(-1000, 1000))(ct)
    np.testing.assert_allclose(w[0, 0], [-1, -1, 0, 1, 1])
    const = Normalizer()(np.full((1, 4, 4), 7, np.float32))
    assert np.isfinite(const).all() and np.all(const == 0)
    with pytest.raises(ValueError, match="window"):
        DataConfig(normalization="window")  # the schema refuses a window method without its window
    with pytest.raises(ConfigError, match="window"):
        Normalizer("window")
    with pytest.raises(ConfigError, match="unknown"):
        Normalizer("minmax")


def test_split_is_seeded_and_complete(cells2d):
    cases = find_cases(cells2d)
    train, val = split_cases(cases, 0.34, seed=5)
    assert len(val) == 2 and len(train) == 4
    assert {c.name for c in train} | {c.name for c in val} == {c.name for c in cases}
    assert [c.name for c in split_cases(cases, 0.34, seed=5)[1]] == [c.name for c in val]
    assert split_cases(cases[:1], 0.2, 0) == (cases[:1], [])
    with pytest.raises(ConfigError):
        split_cases(cases, 1.0, 0)


def _nnunet(root, n=3, channels=2):
    (root / "imagesTr").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        for k in range(channels):
            vol = rng.random((4, 6, 8)).astype(np.float32) + k
            write_image(root / "imagesTr" / f"c{i}_{k:04d}.nii.gz", vol, {"spatial_dims": 3})
        write_mask(root / "labelsTr" / f"c{i}.nii.gz", rng.integers(0, 3, (4, 6, 8)))
    info = {"channel_names": {str(k): f"ch{k}" for k in range(channels)},
            "labels": {"background": 0, "a": 1, "b": 2, "c": 3}, "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def test_nnunet_layout(tmp_path):
    root = _nnunet(tmp_path / "Dataset001_Toy")
    cases = find_cases(root)
    assert [c.name for c in cases] == ["c0", "c1", "c2"]
    assert [p.name for p in cases[0].image_paths] == ["c0_0000.nii.gz", "c0_0001.nii.gz"]
    image, labels, meta = load_case(cases[0], DataConfig(normalization="none"), ClassMap([0, 1, 2, 3]))
    assert image.shape == (2, 4, 6, 8) and labels.shape == (4, 6, 8) and meta["spatial_dims"] == 3
    assert image[1].min() >= 1.0  # channel 1 is the _0001 file
    cfg = Config()
    cfg.data.data = str(root)
    prep = prepare_data(cfg)
    assert prep.class_map.values == [0, 1, 2, 3] and prep.in_channels == 2  # labels from dataset.json
    (root / "imagesTr" / "c1_0001.nii.gz").unlink()
    with pytest.raises(DataError, match=r"c1_0000\.nii\.gz: case c1 has 1 channel file\(s\), dataset.json"):
        find_cases(root)


def test_load_case_normalises_and_encodes_and_the_store_keeps_it(cells2d):
    case = find_cases(cells2d)[0]
    cfg = DataConfig()
    image, labels, meta = load_case(case, cfg, ClassMap([0, 255]))
    assert image.dtype == np.float32 and abs(float(image.mean())) < 1e-4
    assert labels.dtype == np.int64 and set(np.unique(labels)) == {0, 1}
    assert meta["spacing"] == (1.0, 1.0)
    assert load_case(case, cfg, None)[1] is None
    store = CaseStore(cfg, ClassMap([0, 255]))
    first = store.get(case)[0]
    assert case in store and store.get(case)[0] is first  # decoded once, then served from memory
    np.testing.assert_array_equal(first, image)
    assert store.get(case)[1].dtype == np.uint8  # the compact form it keeps
    lazy = CaseStore(DataConfig(cache="lazy"), ClassMap([0, 255]))
    assert lazy.get(case)[0] is not lazy.get(case)[0] and case not in lazy  # read per use, nothing kept


def test_multipage_tiff_with_2d_mask_is_multichannel(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", rng.random((3, 16, 20)).astype(np.float32))
    write_mask(tmp_path / "masks" / "a.png", (rng.random((16, 20)) > 0.5).astype(np.uint8))
    case = find_cases(tmp_path)[0]
    image, labels, meta = load_case(case, DataConfig(), ClassMap([0, 1]))
    assert image.shape == (3, 16, 20) and meta["spatial_dims"] == 2


def test_prepare_fills_class_values_patch_and_split(cells2d):
    cfg = Config()
    cfg.data.data = str(cells2d)
    cfg.data.val_fraction = 0.34
    prep = prepare_data(cfg)
    assert cfg.data.class_values is None and cfg.data.patch_size is None  # prepare does not change cfg
    prep.apply_to(cfg)
    assert cfg.data.class_values == [0, 255] and prep.class_map.num_classes == 2
    assert cfg.data.patch_size == [64, 64] == list(prep.default_patch_size)
    assert prep.in_channels == 1 and prep.spatial_dims == 2
    assert len(prep.train_cases) == 4 and len(prep.val_cases) == 2
    assert len(prep.store.items) == 6  # read once, kept for the sampler and validation
    assert "4 training / 2 validation" in prep.summary()


def test_prepare_3d_and_user_classes(cells3d):
    cfg = Config()
    cfg.data.data = str(cells3d)
    cfg.data.class_values = [0, 2, 1]
    prep = prepare_data(cfg)
    assert prep.spatial_dims == 3 and prep.class_map.values == [0, 2, 1]
    assert prep.default_patch_size == (16, 16, 16)
    cfg.data.class_values = [0, 1]
    with pytest.raises(DataError, match=r"value\(s\) \[2\] not in the class map \[0, 1\]"):
        prepare_data(cfg)
    cfg.data.class_values = [0, [1, 2]]  # every label > 0 as one foreground class
    prep = prepare_data(cfg)
    assert prep.class_map.num_classes == 2
    case = prep.train_cases[0]
    _, labels, _ = load_case(case, cfg.data, prep.class_map)
    raw, _ = read_mask(case.mask_path)
    assert set(np.unique(raw)) == {0, 1, 2}
    np.testing.assert_array_equal(labels, raw > 0)


def test_prepare_rejects_mixed_channels(cells2d):
    write_image(cells2d / "images" / "case_001.png", np.zeros((3, 64, 64), np.uint8))
    cfg = Config()
    cfg.data.data = str(cells2d)
    with pytest.raises(DataError, match=r"case_001\.png: 3 channel\(s\) but case_000\.png has 1"):
        prepare_data(cfg)


def test_default_patch_size():
    assert default_patch_size([(512, 512)] * 3) == (256, 256)
    assert default_patch_size([(100, 300), (120, 330)]) == (96, 256)
    assert default_patch_size([(155, 240, 240)]) == (96, 96, 96)
    assert default_patch_size([(20, 512, 512)]) == (16, 192, 192)
    assert default_patch_size([(5, 5)], multiple=16) == (16, 16)
