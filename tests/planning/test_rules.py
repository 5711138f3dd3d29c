"""Each planning rule on a fingerprint with one telling property: built in memory (``builders``) where the
rule is the subject, computed from small synthetic files where the way from files to the rule is."""

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

from .builders import fingerprint, objects, stats

CPU, GPU = Device("cpu"), Device("cuda", 80.0)


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


def test_ct_normalisation_takes_the_foregrounds_window_and_statistics():
    fp = fingerprint([(40, 128, 128)] * 3, [(2.5, 0.8, 0.8)] * 3, dtypes="float32", raw_dtypes="int16",
                     intensity=stats(-600, 500, lo=-1024, hi=1800, p05=-1000, p995=400),
                     foreground=stats(45, 12, lo=-20, hi=120, p05=15, p995=80))
    d = {x.key: x.value for x in rules.normalization(fp)}
    assert d == {"data.normalization": "ct", "data.window": [15.0, 80.0],
                 "data.intensity_stats": [45.0, 12.0]}
    flat = fingerprint([(40, 128, 128)] * 3, raw_dtypes="int16", intensity=fp.intensity[0],
                       foreground=stats(45, 0.0, lo=45, hi=45, p05=45, p995=45))
    assert {x.key: x.value for x in rules.normalization(flat)}["data.intensity_stats"] == [45.0, 1e-6]


def test_mri_like_data_is_z_scored_per_image():
    fp = fingerprint([(8, 16, 16)] * 2, dtypes="float32", intensity=stats(300, 50, lo=80, hi=520))
    assert [x.value for x in rules.normalization(fp)] == ["zscore"]
    assert rules.spacing(fp)[0].value is None  # isotropic and equal: the grid is kept
    assert "no resampling" in rules.spacing(fp)[0].reason


def test_files_of_very_different_scales_are_clipped_per_image():
    fp = fingerprint([(8, 16, 16)] * 2, dtypes="float32", ranges=[(0.75, 1.25), (7.5e3, 1.25e4)])
    (norm, percentiles) = rules.normalization(fp)
    assert norm.value == "percentile" and "differ 10000x" in norm.reason and percentiles.value == [0.5, 99.5]


def test_mixed_pixel_types_are_clipped_per_image():
    (norm, _) = rules.normalization(fingerprint([(64, 64)] * 3, dtypes=["uint8", "uint16", "uint8"]))
    assert norm.value == "percentile" and "mixed pixel types ['uint16', 'uint8']" in norm.reason


def test_2d_images_keep_their_grid():
    assert rules.spacing(fingerprint([(64, 64)] * 3, [(0.5, 0.5), (1.0, 1.0), (2.0, 2.0)])) == []


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


@pytest.mark.parametrize("shape,device,depth,patch", [
    ((64, 64), CPU, 3, [64, 64]),  # the whole image
    ((200, 300), CPU, 5, [192, 288]),  # the whole image rounded up (224x320) is over the CPU's budget
    ((200, 300), GPU, 5, [224, 320]),
    ((575, 765), CPU, 5, [256, 256]),
    ((575, 765), GPU, 6, [512, 512]),
])
def test_2d_depth_stops_when_the_coarsest_map_is_4_to_8_pixels(shape, device, depth, patch):
    d = {x.key: x.value for x in rules.geometry(fingerprint([shape] * 4), device, None)}
    assert (d["model.depth"], d["data.patch_size"]) == (depth, patch)
    assert 4 <= min(patch) // 2**depth <= 8 and all(p % 2**depth == 0 for p in patch)


def test_small_rare_objects_get_more_centred_patches():
    big = fingerprint([(128, 128)] * 3, classes={"0": 0.69, "255": 0.31},
                      objects_of={"255": objects((128, 128), 0.63)})
    tiny = fingerprint([(128, 128)] * 3, classes={"0": 0.998, "255": 0.002},
                       objects_of={"255": objects((128, 128), 0.05)})
    rare = fingerprint([(128, 128)] * 3, classes={"0": 0.97, "255": 0.03},
                       objects_of={"255": objects((128, 128), 0.63)})
    assert rules.sampling(big, [128, 128])[0].value == 0.33  # nnU-Net's third
    assert rules.sampling(rare, [128, 128])[0].value == 0.67  # a rare class alone
    (decision,) = rules.sampling(tiny, [128, 128])
    assert decision.value == 0.67 and "small objects" in decision.reason
    # objects of ~90 px are not small against a 128^2 patch, but on a 4x coarser grid (16x fewer voxels) are
    mid = fingerprint([(128, 128)] * 3, classes={"0": 0.69, "255": 0.31},
                      objects_of={"255": objects((128, 128), 0.15)})
    assert rules.sampling(mid, [128, 128])[0].value == 0.33
    assert rules.sampling(mid, [128, 128], [4.0, 4.0])[0].value == 0.5


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


def test_thin_structures_stored_as_zero_count_in_the_dice():
    membranes = fingerprint(classes={"0": 0.125, "255": 0.875})  # the minority, stored as 0
    d = {x.key: x.value for x in rules.loss(membranes)}
    assert d["train.loss_options"] == {"include_background": True}
    assert {x.key: x.value for x in rules.loss(fingerprint())}["train.loss_options"] == {}


def test_3d_uses_batch_dice_and_instances_the_weight_map():
    d3 = {x.key: x.value for x in rules.loss(fingerprint([(32, 64, 64)] * 3))}
    assert d3 == {"train.loss": "dice_ce", "train.loss_options": {"batch_dice": True}}
    # instances: the weight map on the borders between objects, whatever the background's share
    inst = {x.key: x.value for x in rules.loss(fingerprint(classes={"0": 0.3, "1": 0.7}), "instances")}
    assert inst["train.loss_options"] == {"weight_map": {"w0": 10.0, "sigma": 5.0}}


def test_few_images_get_strong_augmentation_many_light():
    few = {x.key: x.value for x in rules.augmentation(fingerprint([(64, 64)] * 10))}
    many = {x.key: x.value for x in rules.augmentation(fingerprint([(64, 64)] * 200))}
    assert few["augment.elastic_prob"] == 0.35 and few["augment.scale_range"] == [0.75, 1.25]
    assert many["augment.elastic_prob"] == 0.14 and many["augment.scale_range"] == [0.85, 1.15]
    probs = [k for k in few if k.endswith("_prob")]
    assert all(few[k] > many[k] for k in probs)
    assert "10 training images: strong" in rules.augmentation(fingerprint([(64, 64)] * 10))[0].reason
    volumes = {x.key: x.value for x in rules.augmentation(fingerprint([(32, 64, 64)] * 10))}
    assert volumes["augment.rotation_degrees"] == 15.0 < few["augment.rotation_degrees"]
    assert volumes["augment.elastic_prob"] == 0.1  # costly and less needed in 3D


def test_tiles_cover_the_median_image_within_the_devices_cap():
    fp = fingerprint([(300, 700)] * 3)
    cpu = {x.key: x.value for x in rules.inference(fp, CPU, [256, 256], [32, 32])}
    gpu = {x.key: x.value for x in rules.inference(fp, GPU, [256, 256], [32, 32])}
    assert cpu == {"infer.tile": [320, 512], "infer.overlap": 0.25}  # 700 rounds up to 704, capped at 512
    assert gpu == {"infer.tile": [320, 704], "infer.overlap": 0.5}
    # never smaller than the patch; a coarser grid shrinks the image the tile must cover
    assert rules.inference(fingerprint([(40, 40)] * 3), CPU, [64, 64], [16, 16])[0].value == [64, 64]
    assert rules.inference(fp, CPU, [64, 64], [32, 32], [4.0, 4.0])[0].value == [96, 192]
    volume = rules.inference(fingerprint([(200, 300, 300)] * 3), CPU, [64, 64, 64], [16, 16, 16])
    assert volume[0].value == [128, 128, 128]


def test_the_default_budget_follows_the_device_and_dimensionality():
    assert rules.default_budget(fingerprint(), CPU).value == 10.0
    (budget, gpu3d) = rules.default_budget(fingerprint(), GPU), rules.default_budget(
        fingerprint([(32, 64, 64)] * 3), GPU)
    assert budget.value == 15.0 and gpu3d.value == 45.0 and "45 minutes on this cuda" in gpu3d.reason


def _objects_fp(shape: list[int], share: float, thin: float, *, spacing: list[float] | None = None,
                border: float = 0.0, n: int = 30) -> Fingerprint:
    """A fingerprint of ``n`` images of ``shape`` whose foreground objects reach ``share`` of each side
    (90th percentile) and whose thinnest class regions are ``thin`` spacing units thick (p10)."""
    return fingerprint([shape] * n, [spacing or [1.0] * len(shape)] * n, {"0": 0.7, "255": 0.3},
                       objects_of={"255": objects(shape, share, count=2 * n, border=border)},
                       thickness={"0": 100.0, "255": thin})


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
