"""The dataset fingerprint: hand-checkable numbers, synthetic 2D/3D sets, the per-user cache, CT detection."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from unetseg.data.cases import find_cases
from unetseg.data.synthetic import make_dataset
from unetseg.errors import DataError
from unetseg.io.images import read_mask, write_image, write_mask
from unetseg.planning import fingerprint as fpmod
from unetseg.planning.fingerprint import (
    Fingerprint,
    compute_fingerprint,
    ct_like_channels,
    is_ct_like,
    range_outliers,
)
from unetseg.planning.fingerprint_cache import cache_path, cached_fingerprint

from .builders import fingerprint


def _hand_masks() -> list[np.ndarray]:
    """Two 8x8 masks. a: value 1 as a 2x2 square, a pixel touching the 2-block, two pixels touching only
    diagonally (4 objects with face connectivity); value 2 as a 3x3 block. b: value 1 as an 8-pixel column."""
    a = np.zeros((8, 8), np.uint8)
    a[0:2, 0:2] = 1
    a[2:5, 5:8] = 2
    a[5, 5] = 1
    a[6, 1] = a[7, 0] = 1
    b = np.zeros((8, 8), np.uint8)
    b[:, 0] = 1
    return [a, b]


@pytest.fixture
def hand(tmp_path: Path) -> Path:
    root = tmp_path / "hand"
    for name, mask in zip(("a", "b"), _hand_masks(), strict=True):
        write_image(root / "images" / f"{name}.png", (mask * 50 + 10).astype(np.uint8))
        write_mask(root / "masks" / f"{name}.png", mask)
    return root


def _json_round_trip(fp: Fingerprint) -> Fingerprint:
    return Fingerprint.from_dict(json.loads(json.dumps(fp.to_dict(), allow_nan=False)))


def test_hand_made_numbers(hand: Path) -> None:
    fp = compute_fingerprint(find_cases(hand))
    assert (fp.spatial_dims, fp.channels, fp.n_cases, fp.names) == (2, 1, 2, ["a", "b"])
    assert fp.shapes == [[8, 8], [8, 8]] and fp.median_spacing == [1.0, 1.0] and fp.dtypes == ["uint8"] * 2
    assert fp.class_values == [0, 1, 2] and fp.classes == ["0", "1", "2"] and fp.class_map is None
    assert fp.class_fraction == pytest.approx({"0": 104 / 128, "1": 15 / 128, "2": 9 / 128})
    assert fp.images_with_class == {"0": 2, "1": 2, "2": 1}
    assert fp.foreground_fraction == pytest.approx(24 / 128)
    one, two = fp.objects["1"], fp.objects["2"]
    assert set(fp.objects) == {"1", "2"}
    # value 1: sizes 4, 1, 1, 1 (a) and 8 (b); extents (2,2), (1,1) x3, (8,1)
    assert (one["count"], one["median_voxels"], one["min_voxels"], one["max_voxels"]) == (5, 1.0, 1, 8)
    assert one["p10_voxels"] == pytest.approx(1.0) and one["median_extent"] == [1.0, 1.0]
    assert (two["count"], two["median_voxels"], two["median_extent"]) == (1, 9.0, [3.0, 3.0])
    # intensities: image = 50 * mask + 10, so 60 on value 1, 110 on value 2, 10 outside
    fg = np.array([60.0] * 15 + [110.0] * 9)
    every = np.concatenate([fg, np.full(104, 10.0)])
    inside = fp.intensity_foreground[0]
    assert inside["mean"] == pytest.approx(fg.mean()) and inside["std"] == pytest.approx(fg.std())
    assert (inside["min"], inside["max"], inside["p0.5"], inside["p99.5"], inside["voxels"]) == (
        60.0, 110.0, 60.0, 110.0, 24)
    assert fp.intensity[0]["mean"] == pytest.approx(every.mean())
    assert fp.intensity[0]["std"] == pytest.approx(every.std())
    assert fp.file_ranges == [[[10.0, 110.0]], [[10.0, 60.0]]]
    assert _json_round_trip(fp) == fp


def test_object_extents_border_contact_and_thickness(tmp_path: Path) -> None:
    """What the resolution rules read: how far objects reach (pixels and share of the image side, median
    and 90th percentile), how many touch the border, and how thin each class's regions are."""
    root = tmp_path / "geo"
    for i in range(3):
        mask = np.zeros((100, 200), np.uint8)
        yy, xx = np.indices(mask.shape)
        mask[(yy - 50) ** 2 + (xx - 60 - 20 * i) ** 2 <= 30**2] = 1  # a disc of radius 30, inside
        mask[:, 150 + 5 * i : 154 + 5 * i] = 2  # a band 4 px wide from border to border
        write_image(root / "images" / f"c{i}.png", np.full(mask.shape, 90, np.uint8))
        write_mask(root / "masks" / f"c{i}.png", mask)
    fp = compute_fingerprint(find_cases(root))
    disc, band = fp.objects["1"], fp.objects["2"]
    assert disc["p90_extent"] == [61.0, 61.0] and disc["border_fraction"] == 0.0
    assert disc["p90_extent_share"] == pytest.approx([0.61, 0.305])
    assert band["median_extent"] == [100.0, 4.0] and band["border_fraction"] == 1.0
    # twice the area over the perimeter (pixel faces, corrected by their mean excess 4/pi over a smooth
    # outline): a disc's radius; a band's width, here 4/pi over as its edges run along the pixel grid (the
    # image border is no surface)
    assert fp.thickness["1"]["median"] == pytest.approx(30, rel=0.05)
    assert fp.thickness["2"]["p10"] == pytest.approx(4.0 * 4 / np.pi)
    assert fp.thickness["0"]["p10"] > 20  # the background around them is wide
    # reach: a disc is seen whole; a band need not be seen along its length, 8 of its widths will do
    assert disc["median_reach"] == [61.0, 61.0] and disc["median_reach_share"] == pytest.approx([0.61, 0.305])
    assert band["median_reach"] == pytest.approx([8 * 4.0 * 4 / np.pi, 4.0])
    assert _json_round_trip(fp) == fp


def test_specks_beside_a_large_object_do_not_hide_it(tmp_path: Path) -> None:
    """A tumour with satellite specks: 90% of the objects are specks, but most voxels are the tumour, whose
    reach the field of view is planned from."""
    root = tmp_path / "specks"
    for i in range(2):
        mask = np.zeros((160, 160), np.uint8)
        yy, xx = np.indices(mask.shape)
        mask[(yy - 80) ** 2 + (xx - 80 - 5 * i) ** 2 <= 50**2] = 1
        mask[3:150:12, 2] = 1  # 13 single-pixel specks along the left edge
        write_image(root / "images" / f"c{i}.png", np.full(mask.shape, 90, np.uint8))
        write_mask(root / "masks" / f"c{i}.png", mask)
    o = compute_fingerprint(find_cases(root)).objects["1"]
    assert o["count"] == 28 and o["p90_extent"] == [1.0, 1.0]
    assert o["median_reach"] == [101.0, 101.0]


def test_the_rules_tests_build_what_compute_fingerprint_gives(hand: Path) -> None:
    """``builders.fingerprint`` stands in for computed fingerprints in the rules' tests: the same facts from
    the same description, the same keys in every per-channel and per-class record, and JSON round trips."""
    values = {"0": 104 / 128, "1": 15 / 128, "2": 9 / 128}
    merged = {"0": 104 / 128, "1+2": 24 / 128}
    for class_values, classes, present in ((None, values, {"2": 1}), ([0, [1, 2]], merged, {})):
        real = compute_fingerprint(find_cases(hand), class_values=class_values)
        built = fingerprint([(8, 8)] * 2, classes=classes, images_with_class=present)
        for field in ("spatial_dims", "channels", "n_cases", "shapes", "spacings", "dtypes", "raw_dtypes",
                      "median_shape", "median_spacing", "class_values", "class_map", "classes",
                      "images_with_class"):
            assert getattr(built, field) == getattr(real, field), field
        assert built.foreground_fraction == pytest.approx(real.foreground_fraction)
        assert built.class_fraction == pytest.approx(real.class_fraction)
        assert set(built.objects) == set(real.objects)
        records = [(built.intensity, real.intensity), (built.intensity_foreground, real.intensity_foreground),
                   (list(built.objects.values()), list(real.objects.values())),
                   (list(built.thickness.values()), list(real.thickness.values()))]
        assert all(set(b) == set(r) for mine, theirs in records for b, r in zip(mine, theirs, strict=True))
        assert _json_round_trip(built) == built


def test_class_map_merges_values_and_objects(hand: Path) -> None:
    fp = compute_fingerprint(find_cases(hand), class_values=[0, [1, 2]])
    assert fp.class_map == [0, [1, 2]] and fp.classes == ["0", "1+2"] and fp.class_values == [0, 1, 2]
    assert fp.class_fraction == pytest.approx({"0": 104 / 128, "1+2": 24 / 128})
    assert fp.images_with_class == {"0": 2, "1+2": 2}
    merged = fp.objects["1+2"]
    # a: square 4, block 9 + the pixel touching it = 10, two diagonal pixels; b: column 8
    assert (merged["count"], merged["median_voxels"], merged["max_voxels"]) == (5, 4.0, 10)
    with pytest.raises(DataError, match=r"a\.png: value\(s\) \[2\] not in the class map"):
        compute_fingerprint(find_cases(hand), class_values=[0, 1])


def test_physical_sizes_3d(tmp_path: Path) -> None:
    mask = np.zeros((4, 6, 6), np.uint8)
    mask[1:4, 2:4, 1:3] = 3  # 12 voxels, extent (3, 2, 2)
    image = np.arange(mask.size, dtype=np.int16).reshape(mask.shape)
    meta = {"spacing": (2.0, 0.5, 0.5), "spatial_dims": 3}
    write_image(tmp_path / "v" / "images" / "c.nii.gz", image, meta)
    write_mask(tmp_path / "v" / "masks" / "c.nii.gz", mask, meta)
    fp = compute_fingerprint(find_cases(tmp_path / "v"))
    assert fp.spacings == [[2.0, 0.5, 0.5]] and fp.dtypes == ["int16"]
    obj = fp.objects["3"]
    assert (obj["count"], obj["median_voxels"], obj["median_volume"]) == (1, 12.0, 6.0)
    assert obj["median_extent"] == [3.0, 2.0, 2.0]
    assert fp.intensity_foreground[0]["mean"] == pytest.approx(image[mask > 0].mean())


def test_synthetic_2d_agrees_with_the_files(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "c2", n=4, size=(48, 48), kind="cells", seed=0)
    cases = find_cases(root)
    fp = compute_fingerprint(cases)
    masks = [read_mask(c.mask_path)[0] for c in cases]
    assert (fp.spatial_dims, fp.channels, fp.n_cases) == (2, 1, 4)
    assert fp.shapes == [[48, 48]] * 4 and fp.class_values == [0, 255]
    stack = np.stack(masks)
    assert fp.foreground_fraction == pytest.approx((stack > 0).mean())
    assert fp.class_fraction["255"] == pytest.approx((stack == 255).mean())
    assert sum(fp.class_fraction.values()) == pytest.approx(1.0)
    assert fp.images_with_class == {"0": 4, "255": sum(bool((m == 255).any()) for m in masks)}
    sizes = np.concatenate([np.bincount(ndimage.label(m == 255)[0].ravel())[1:] for m in masks])
    assert fp.objects["255"]["count"] == sizes.size
    assert fp.objects["255"]["median_voxels"] == pytest.approx(np.median(sizes))
    assert not is_ct_like(fp) and range_outliers(fp) == []
    assert _json_round_trip(fp) == fp


def test_synthetic_3d(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "c3", n=2, size=(12, 24, 24), kind="cells3d", seed=0)
    fp = compute_fingerprint(find_cases(root))
    assert fp.spatial_dims == 3 and fp.spacings == [[2.0, 1.0, 1.0]] * 2
    assert fp.median_spacing == [2.0, 1.0, 1.0] and fp.median_shape == [12.0, 24.0, 24.0]
    assert fp.class_values == [0, 1, 2] and set(fp.objects) == {"1", "2"} and fp.dtypes == ["uint16"] * 2
    for obj in fp.objects.values():
        assert obj["count"] >= 1 and obj["median_volume"] == pytest.approx(2.0 * obj["median_voxels"])
        assert len(obj["median_extent"]) == 3
    assert not is_ct_like(fp)


def _ct_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """int16 'CT': air -1000 around an ellipsoidal body of soft tissue (~40 HU) holding a brighter organ."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (12, 32, 32)], indexing="ij")
    body = z**2 / 1.2 + y**2 + x**2 < 0.6
    organ = (z**2 + (y - 0.1) ** 2 + x**2) < 0.1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, body.shape) + np.where(organ, 60.0, 0.0)
    return np.round(hu).astype(np.int16), organ.astype(np.uint8)


def test_ct_like_detection(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    meta = {"spacing": (2.5, 0.8, 0.8), "spatial_dims": 3}
    for i in range(2):
        hu, organ = _ct_volume(rng)
        write_image(tmp_path / "ct" / "images" / f"c{i}.nii.gz", hu, meta)
        write_mask(tmp_path / "ct" / "masks" / f"c{i}.nii.gz", organ, meta)
    fp = compute_fingerprint(find_cases(tmp_path / "ct"))
    assert fp.raw_dtypes == ["int16", "int16"] and fp.intensity[0]["p0.5"] < -900
    assert is_ct_like(fp) and ct_like_channels(fp) == [True]
    assert 60 < fp.intensity_foreground[0]["median"] < 140  # the organ: 40 + 60 HU
    assert not is_ct_like(dataclasses.replace(fp, raw_dtypes=["float32", "float32"]))  # not integers
    assert not is_ct_like(dataclasses.replace(fp, spatial_dims=2))
    shifted = [dict(s, **{"p0.5": s["p0.5"] + 1024}) for s in fp.intensity]  # unsigned, no air below -500
    assert not is_ct_like(dataclasses.replace(fp, intensity=shifted))


def test_range_outliers_flag_a_file_on_another_scale(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "mix", n=3, size=(32, 32), kind="cells", seed=0)
    image = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)  # a 0..1 export
    write_image(root / "images" / "odd.tif", image)
    write_mask(root / "masks" / "odd.tif", (image > 0.5).astype(np.uint8) * 255)
    fp = compute_fingerprint(find_cases(root))
    assert range_outliers(fp) == ["odd"] and set(fp.dtypes) == {"uint8", "float32"}


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every case the fingerprint reads."""
    seen: list[str] = []
    real = fpmod.read_pair

    def spy(case, **kw):  # type: ignore[no-untyped-def]
        seen.append(case.name)
        return real(case, **kw)

    monkeypatch.setattr(fpmod, "read_pair", spy)
    return seen


def test_cache_reused_and_invalidated(hand: Path, tmp_path: Path, counted: list[str]) -> None:
    cache = tmp_path / "cache"
    before = sorted(p for p in hand.rglob("*"))
    first = cached_fingerprint(hand, find_cases(hand), cache_dir=cache)
    assert len(counted) == 2 and cache_path(hand, cache).is_file()
    again = cached_fingerprint(hand, find_cases(hand), cache_dir=cache)
    assert again == first and len(counted) == 2  # no file read again
    assert sorted(p for p in hand.rglob("*")) == before  # nothing written into the dataset

    mask = _hand_masks()[1]
    mask[0, 7] = 2
    write_mask(hand / "masks" / "b.png", mask)  # rewritten: recomputed
    changed = cached_fingerprint(hand, find_cases(hand), cache_dir=cache)
    assert len(counted) == 4 and changed.images_with_class["2"] == 2

    cached_fingerprint(hand, find_cases(hand), cache_dir=cache, class_values=[0, [1, 2]])  # other map
    assert len(counted) == 6
    write_image(hand / "images" / "c.png", np.zeros((8, 8), np.uint8))  # a case added
    write_mask(hand / "masks" / "c.png", np.zeros((8, 8), np.uint8))
    assert cached_fingerprint(hand, find_cases(hand), cache_dir=cache).n_cases == 3 and len(counted) == 9
    (hand / "images" / "c.png").unlink()  # and removed again: the cache holds the last result only
    (hand / "masks" / "c.png").unlink()
    assert cached_fingerprint(hand, find_cases(hand), cache_dir=cache).n_cases == 2 and len(counted) == 11


def test_cache_location_and_corrupt_file(hand: Path, tmp_path: Path, counted: list[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = cache_path(hand)
    assert path.parent == tmp_path / "xdg" / "unetseg" / "fingerprints"
    cached_fingerprint(hand, find_cases(hand))
    stored = json.loads(path.read_text())
    assert stored["fingerprint"]["n_cases"] == 2 and "NaN" not in path.read_text()
    path.write_text("{not json")
    assert cached_fingerprint(hand, find_cases(hand)).n_cases == 2 and len(counted) == 4
    assert json.loads(path.read_text())["key"] == stored["key"]
    inside = hand / ".cache"
    with pytest.warns(UserWarning, match="not cached"):
        cached_fingerprint(hand, find_cases(hand), cache_dir=inside)
    assert not inside.exists()


def test_errors(hand: Path) -> None:
    with pytest.raises(DataError, match="no cases"):
        compute_fingerprint([])
    cases = find_cases(hand)
    cases[0].mask_path = None
    with pytest.raises(DataError, match=r"a\.png: no mask"):
        compute_fingerprint(cases)
    os.remove(hand / "masks" / "b.png")
    with pytest.raises(DataError, match=r"b\.png: cannot read"):
        cached_fingerprint(hand, cases, cache_dir=hand.parent / "cache")
