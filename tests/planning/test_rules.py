"""Each planning rule on small synthetic datasets whose fingerprint has one telling property."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unetseg.config.schema import INSTANCE_TARGETS
from unetseg.data.cases import find_cases
from unetseg.data.fingerprint import compute_fingerprint
from unetseg.data.io import write_image, write_mask
from unetseg.planning import rules
from unetseg.planning.plan import choose_width
from unetseg.planning.rules import Device

CPU = Device("cpu")


def _volumes(root: Path, volumes: list[tuple[np.ndarray, np.ndarray, tuple]]) -> Path:
    for i, (image, mask, spacing) in enumerate(volumes):
        meta = {"spatial_dims": 3, "spacing": spacing}
        write_image(root / "images" / f"c{i}.nii.gz", image, meta)
        write_mask(root / "masks" / f"c{i}.nii.gz", mask, meta)
    return root


def _fp(root: Path):
    return compute_fingerprint(find_cases(root))


def _blob(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def test_ct_like_data_is_clipped_to_the_foreground_window_and_the_datasets_statistics(tmp_path):
    rng = np.random.default_rng(0)
    vols = []
    for _ in range(3):
        mask = _blob((12, 24, 24), (6, 12, 12), 6).astype(np.uint8)
        image = np.full(mask.shape, -1000, np.int16)  # air
        image[mask > 0] = rng.normal(40, 10, int(mask.sum())).astype(np.int16)  # soft tissue, in HU
        vols.append((image, mask, (2.0, 1.0, 1.0)))
    fp = _fp(_volumes(tmp_path / "ct", vols))
    d = {x.key: x.value for x in rules.normalization(fp)}
    assert d["data.normalization"] == "ct"
    lo, hi = d["data.window"]
    assert 0 < lo < 40 < hi < 90  # the foreground's 0.5-99.5 percentiles, not the air
    assert d["data.intensity_stats"][0] == pytest.approx(40, abs=3)


def test_mri_like_data_is_z_scored_per_image(tmp_path):
    rng = np.random.default_rng(1)
    vols = [
        (
            rng.normal(300, 50, (8, 16, 16)).astype(np.float32),
            _blob((8, 16, 16), (4, 8, 8), 4).astype(np.uint8),
            (1.0, 1.0, 1.0),
        )
        for _ in range(2)
    ]
    fp = _fp(_volumes(tmp_path / "mr", vols))
    assert [x.value for x in rules.normalization(fp)] == ["zscore"]
    assert rules.spacing(fp)[0].value is None  # isotropic and equal: the grid is kept


def test_files_of_very_different_scales_are_clipped_per_image(tmp_path):
    rng = np.random.default_rng(2)
    vols = [
        (
            rng.normal(1, 0.1, (8, 16, 16)).astype(np.float32) * scale,
            _blob((8, 16, 16), (4, 8, 8), 4).astype(np.uint8),
            (1.0, 1.0, 1.0),
        )
        for scale in (1.0, 1e4)
    ]
    d = {x.key: x.value for x in rules.normalization(_fp(_volumes(tmp_path / "mixed", vols)))}
    assert d["data.normalization"] == "percentile"


def test_anisotropic_volumes_are_resampled_and_pooled_per_axis(tmp_path):
    vols = [
        (
            np.random.default_rng(i).random((16, 64, 64)).astype(np.float32),
            _blob((16, 64, 64), (8, 32, 32), 10).astype(np.uint8),
            sp,
        )
        for i, sp in enumerate([(4.0, 1.0, 1.0), (4.0, 1.0, 1.0), (5.0, 1.0, 1.0)])
    ]
    fp = _fp(_volumes(tmp_path / "aniso", vols))
    target = rules.spacing(fp)[0].value
    assert target[1:] == [1.0, 1.0] and 4.0 <= target[0] < 4.5  # z: its 10th percentile, not the median
    d = {x.key: x.value for x in rules.geometry(fp, CPU, target)}
    strides, kernels = d["model.options.strides"], d["model.options.kernels"]
    assert strides[0] == [1, 2, 2] and kernels[0] == [1, 3, 3]  # z is not pooled while it is coarse
    assert any(s[0] == 2 for s in strides[1:])  # once in-plane has caught up, z is pooled too
    divisor = [int(np.prod([s[a] for s in strides])) for a in range(3)]
    assert all(p % dv == 0 for p, dv in zip(d["data.patch_size"], divisor, strict=True))
    assert len(strides) == d["model.depth"] and len(kernels) == d["model.depth"] + 1


def test_2d_depth_stops_when_the_coarsest_map_is_4_to_8_pixels(cells2d):
    fp = _fp(cells2d)
    d = {x.key: x.value for x in rules.geometry(fp, CPU, None)}
    coarsest = min(d["data.patch_size"]) // 2 ** d["model.depth"]
    assert 4 <= coarsest <= 8 and d["data.patch_size"] == [64, 64]


def test_small_rare_objects_get_more_centred_patches(tmp_path):
    def dataset(root, radius):
        for i in range(3):
            mask = _blob((128, 128), (40 + 10 * i, 60), radius).astype(np.uint8) * 255
            write_image(root / "images" / f"c{i}.png", np.full((128, 128), 100, np.uint8))
            write_mask(root / "masks" / f"c{i}.png", mask)
        return root

    big = rules.sampling(_fp(dataset(tmp_path / "big", 40)), [128, 128])[0].value
    tiny = rules.sampling(_fp(dataset(tmp_path / "tiny", 3)), [128, 128])[0].value
    assert big == 0.33 and tiny > 0.6


def test_a_small_budget_chooses_a_narrower_net():
    timed = {8: 0.05, 16: 0.12, 32: 0.9}
    assert choose_width(timed, 10, 2)[0] == 16  # 32 would make only 500 steps in 10 minutes
    assert choose_width(timed, 60, 2)[0] == 32
    assert choose_width(timed, 2, 2)[0] == 8
    base, steps, why = choose_width(timed, 0.5, 2)
    assert base == 8 and "none reaches" in why and steps < 800


def test_an_instance_task_gets_a_target_with_its_reason():
    (decision,) = rules.instance_target("instances")
    assert decision.key == "data.instance_target" and decision.value == rules.INSTANCE_TARGET
    assert decision.reason == rules.INSTANCE_TARGET_WHY[rules.INSTANCE_TARGET]
    assert rules.instance_target("semantic") == []
    # a reason whichever is chosen, each pointing at the measurement
    assert set(rules.INSTANCE_TARGET_WHY) == set(INSTANCE_TARGETS)
    assert all("BENCHMARKS.md" in why for why in rules.INSTANCE_TARGET_WHY.values())


def test_thin_structures_stored_as_zero_count_in_the_dice(tmp_path):
    for i in range(2):
        mask = np.full((64, 64), 255, np.uint8)
        mask[::8] = 0  # membranes, the minority, stored as 0
        write_image(tmp_path / "em" / "images" / f"c{i}.png", np.full((64, 64), 90, np.uint8))
        write_mask(tmp_path / "em" / "masks" / f"c{i}.png", mask)
    d = {x.key: x.value for x in rules.loss(_fp(tmp_path / "em"))}
    assert d["train.loss_options"] == {"include_background": True}


@pytest.fixture
def cells2d(tmp_path):
    from unetseg.data.synthetic import make_dataset

    return make_dataset(tmp_path / "cells", n=4, size=(64, 64), kind="cells", seed=0)
