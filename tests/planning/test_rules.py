"""Each planning rule on small synthetic datasets whose fingerprint has one telling property."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unetseg.config.schema import INSTANCE_TARGETS
from unetseg.data.cases import find_cases
from unetseg.io.images import write_image, write_mask
from unetseg.planning import rules
from unetseg.planning.fingerprint import Fingerprint, compute_fingerprint
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


def _objects_fp(shape: list[int], share: float, thin: float, *, spacing: list[float] | None = None,
                border: float = 0.0, n: int = 30) -> Fingerprint:
    """A fingerprint of ``n`` images of ``shape`` whose foreground objects reach ``share`` of each side
    (90th percentile) and whose thinnest class regions are ``thin`` spacing units thick (p10)."""
    d = len(shape)
    spacing = spacing or [1.0] * d
    extent = [share * s for s in shape]
    objects = {"count": 2 * n, "median_voxels": float(np.prod(extent)) / 2, "p10_voxels": 10.0,
               "min_voxels": 1, "max_voxels": int(np.prod(extent)), "median_volume": 1.0, "p10_volume": 1.0,
               "median_extent": [e / 2 for e in extent], "p90_extent": extent,
               "median_extent_share": [share / 2] * d, "p90_extent_share": [share] * d,
               "border_fraction": border, "median_reach": [e / 2 for e in extent],
               "median_reach_share": [share / 2] * d}
    stats = {"mean": 100.0, "std": 20.0, "min": 0.0, "max": 255.0, "p0.5": 5.0, "median": 100.0,
             "p99.5": 250.0, "voxels": 1000}
    return Fingerprint(
        spatial_dims=d, channels=1, n_cases=n, names=[f"c{i}" for i in range(n)], shapes=[list(shape)] * n,
        spacings=[list(spacing)] * n, dtypes=["uint8"] * n, raw_dtypes=["uint8"] * n,
        median_shape=[float(s) for s in shape], median_spacing=list(spacing), intensity=[stats],
        intensity_foreground=[stats], file_ranges=[[[5.0, 250.0]]] * n, class_values=[0, 255], class_map=None,
        classes=["0", "255"], class_fraction={"0": 0.7, "255": 0.3}, images_with_class={"0": n, "255": n},
        objects={"255": objects}, thickness={"0": {"p10": 100.0, "median": 200.0},
                                             "255": {"p10": thin, "median": 2 * thin}},
        foreground_fraction=0.3,
    )


def _geometry(fp: Fingerprint, option: rules.Resolution) -> dict:
    return {x.key: x.value for x in rules.geometry(fp, CPU, None, option.downsample, option.voxels)}


def test_large_objects_are_seen_whole_at_a_coarser_resolution():
    fp = _objects_fp([575, 765], share=0.8, thin=60.0)  # dermoscopy: lesions fill most of the image
    (choice,) = rules.resolution(fp, CPU, None)  # sure: no probe
    assert choice.name == "coarse" and choice.downsample[0] == choice.downsample[1] >= 2.0
    g = _geometry(fp, choice)
    seen = [p * f for p, f in zip(g["data.patch_size"], choice.downsample, strict=True)]
    assert all(s >= 0.95 * m for s, m in zip(seen, [575, 765], strict=True))  # the whole image in view
    assert np.prod(g["data.patch_size"]) <= rules.PATCH_VOXELS[("cpu", 2)]  # at the cost of today's patch
    assert "receptive field" in rules.geometry(fp, CPU, None, choice.downsample, choice.voxels)[0].reason


def test_small_objects_keep_the_full_resolution():
    fp = _objects_fp([512, 512], share=0.1, thin=8.0)  # nuclei
    (choice,) = rules.resolution(fp, CPU, None)
    assert choice.name == "full" and choice.downsample is None
    assert choice.voxels == rules.PATCH_VOXELS[("cpu", 2)] and "whole" in choice.reason
    assert _geometry(fp, choice)["data.patch_size"] == [256, 256]  # today's patch


def test_thin_structures_keep_the_full_resolution_and_widen_the_patch_instead():
    fp = _objects_fp([575, 765], share=0.8, thin=3.0)  # large regions, but a class only 3 px thin
    (choice,) = rules.resolution(fp, CPU, None)
    assert choice.downsample is None and "thinnest" in choice.reason
    assert choice.voxels == int(rules.PATCH_STRETCH[2] * rules.PATCH_VOXELS[("cpu", 2)])
    assert np.prod(_geometry(fp, choice)["data.patch_size"]) > rules.PATCH_VOXELS[("cpu", 2)]


def test_when_the_rules_cannot_be_sure_a_probe_compares_the_candidates():
    fp = _objects_fp([288, 384], share=0.6, thin=30.0)  # colonoscopy frames: a patch sees most of it
    coarse, full = rules.resolution(fp, CPU, None)
    assert coarse.name == "coarse" and 1.25 <= max(coarse.downsample) < 2.0
    assert full.name == "full" and full.downsample is None


def test_a_large_object_among_specks_is_still_seen_whole():
    """90% of the objects are specks (count-based extent 2% of the side), but half the voxels lie in an
    object reaching 80% of it: the view is planned for that object."""
    fp = _objects_fp([575, 765], share=0.02, thin=60.0)
    fp.objects["255"].update(median_reach=[0.8 * 575, 0.8 * 765], median_reach_share=[0.8, 0.8])
    (choice,) = rules.resolution(fp, CPU, None)
    assert choice.name == "coarse" and choice.downsample[0] >= 2.0 and "half of its voxels" in choice.reason
    fp.objects["255"].update(median_reach=[0.01 * 575, 0.01 * 765], median_reach_share=[0.01, 0.01])
    assert rules.resolution(fp, CPU, None)[0].downsample is None  # specks alone: full resolution


def test_instances_need_their_gaps_at_full_resolution():
    fp = _objects_fp([575, 765], share=0.8, thin=10.0)
    assert rules.resolution(fp, CPU, None, "semantic")[0].downsample is not None
    assert rules.resolution(fp, CPU, None, "instances")[0].downsample is None


def test_a_large_3d_structure_gets_a_low_resolution_stage_in_plane_first():
    fp = _objects_fp([40, 256, 256], share=0.7, thin=20.0, spacing=[3.0, 1.0, 1.0])
    (choice,) = rules.resolution(fp, CPU, [3.0, 1.0, 1.0])
    z, y, x = choice.downsample
    # the fine in-plane axes coarsen first, z once they are within 2x of it (nnU-Net's 3d_lowres walk)
    assert y == x >= 2.0 and 1.0 <= z < y and max(3 * z, y) / min(3 * z, y) <= 2.1
    g = {d.key: d.value for d in rules.geometry(fp, CPU, [3.0, 1.0, 1.0], choice.downsample, choice.voxels)}
    assert g["data.patch_size"][0] <= 40 and np.prod(g["data.patch_size"]) <= rules.PATCH_VOXELS[("cpu", 3)]


def test_whole_image_patches_normalise_per_image():
    """A 2D patch that holds a whole image (large structures at a coarser grid) uses instance norm; crops of
    larger images keep BatchNorm; 3D keeps it too."""
    fp = _objects_fp([575, 765], share=0.8, thin=60.0)
    (choice,) = rules.resolution(fp, CPU, None)
    patch = _geometry(fp, choice)["data.patch_size"]
    (whole,) = rules.norm_layer(fp, patch, choice.downsample)
    assert whole.value == "instance" and "whole image" in whole.reason
    (crops,) = rules.norm_layer(_objects_fp([512, 512], share=0.1, thin=8.0), [256, 256])
    assert crops.value is None
    assert rules.norm_layer(_objects_fp([32, 64, 64], share=0.1, thin=8.0), [32, 64, 64]) == []
