"""The planner's rules: pure functions from a dataset fingerprint (and the device) to config values, each
with the reason a user reads in the plan table. nnU-Net's published rules where they apply (Isensee et al.,
Nature Methods 2021: normalisation, target spacing, pooling per axis, patch and bottleneck size), measured
choices where they do not (time budgets on CPUs, which nnU-Net calls unsupported; BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetseg.data.fingerprint import Fingerprint, is_ct_like
from unetseg.data.resample import shape_after, target_spacing


@dataclass(frozen=True)
class Decision:
    """One planned value: the dotted config key, the value, and why."""

    key: str
    value: Any
    reason: str


@dataclass(frozen=True)
class Device:
    """What the rules need to know of the device: its kind, and (CUDA) its memory."""

    kind: str  # "cpu" | "cuda"
    memory_gib: float = 0.0

    @property
    def gpu(self) -> bool:
        return self.kind == "cuda"


# Voxels per training patch: what a step of a base-16 U-Net costs ~0.1-0.5 s on a laptop CPU core pair
# (BENCHMARKS.md) and what nnU-Net's 2D/3D plans use on a GPU.
PATCH_VOXELS = {("cpu", 2): 256 * 256, ("cpu", 3): 64 * 64 * 64, ("cuda", 2): 512 * 512, ("cuda", 3): 128**3}
MAX_WIDTH = {2: 512, 3: 320}  # nnU-Net caps the widest level
MIN_BOTTLENECK, MAX_BOTTLENECK = 4, 8  # voxels per axis of the coarsest feature map
MAX_DEPTH = {2: 6, 3: 5}
DEFAULT_BUDGET = {("cpu", 2): 10.0, ("cpu", 3): 20.0, ("cuda", 2): 15.0, ("cuda", 3): 45.0}


# What an instance model learns (data.instance_target), by measurement: on DSB2018 (10 CPU minutes, both
# calibrated on their validation images) the 3-class map scored DSB 0.391, the distance bins 0.383, the same
# AP@0.5 (BENCHMARKS.md); the reason shown in the plan follows the choice.
INSTANCE_TARGET = "three_class"
INSTANCE_TARGET_WHY = {
    "three_class": "3-class map (the U-Net paper's): measured ahead of the distance target on DSB2018, "
    "see BENCHMARKS.md",
    "distance": "distance-to-boundary bins; the 3-class map is the measured alternative, see BENCHMARKS.md",
}


def instance_target(task: str) -> list[Decision]:
    """Instances: the target the network learns (:data:`INSTANCE_TARGET`); nothing for a semantic task."""
    if task != "instances":
        return []
    return [Decision("data.instance_target", INSTANCE_TARGET, INSTANCE_TARGET_WHY[INSTANCE_TARGET])]


def normalization(fp: Fingerprint) -> list[Decision]:
    """CT-like data: clip to the foreground's 0.5-99.5 percentiles, then the dataset's foreground mean/std
    (one scale for every image, as Hounsfield units mean the same everywhere: nnU-Net's CT scheme).
    Otherwise per image and channel z-score; when files' intensity scales differ by orders of magnitude or
    their types are mixed, clip each image to its own 0.5-99.5 percentiles first, so no file (and no
    outlier) dominates."""
    if is_ct_like(fp):
        fg = fp.intensity_foreground[0]
        window = [float(fg["p0.5"]), float(fg["p99.5"])]
        stats = [float(fg["mean"]), max(float(fg["std"]), 1e-6)]
        lo, hi = fp.intensity[0]["min"], fp.intensity[0]["max"]
        why = f"CT-like (integers from {lo:g} to {hi:g}): nnU-Net's CT scheme"
        return [
            Decision("data.normalization", "ct", why),
            Decision("data.window", window, "the foreground's 0.5-99.5 percentiles"),
            Decision("data.intensity_stats", stats, "the foreground's mean and std"),
        ]
    highs = [
        max(hi for _, hi in case if hi is not None)
        for case in fp.file_ranges
        if any(hi is not None for _, hi in case)
    ]
    highs = [h for h in highs if h > 0]
    spread = max(highs) / max(min(highs), 1e-12) if highs else 1.0
    if len(set(fp.dtypes)) > 1 or spread > 100:
        why = (
            f"per-file intensity scales differ {spread:.0f}x"
            if spread > 100
            else f"mixed pixel types {sorted(set(fp.dtypes))}"
        ) + ": clip each image, then z-score"
        return [
            Decision("data.normalization", "percentile", why),
            Decision("data.percentiles", [0.5, 99.5], "robust to outliers"),
        ]
    return [Decision("data.normalization", "zscore", "not CT: per-image, per-channel z-score (nnU-Net)")]


def spacing(fp: Fingerprint) -> list[Decision]:
    """3D: train at the median spacing (the coarse axis at its 10th percentile when anisotropy > 3), so
    objects have one physical size; predictions go back to each image's own grid. 2D: as stored."""
    if fp.spatial_dims != 3:
        return []
    target = [float(t) for t in target_spacing(fp.spacings)]
    same = all(np.allclose(s, target, rtol=1e-3) for s in fp.spacings)
    if same:
        return [Decision("data.spacing", None, f"every image has spacing {target}: no resampling")]
    aniso = max(target) / min(target)
    why = "median spacing" + (f" (coarse axis: 10th percentile, anisotropy {aniso:.1f})" if aniso > 3 else "")
    return [Decision("data.spacing", target, why)]


def _pools(
    spacing_: list[float], shape: list[int], max_depth: int
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's pooling rule: at each level pool an axis only while its current spacing is within 2x of the
    finest and its feature map stays >= 2 * MIN_BOTTLENECK; the kernel is 3 on axes within 2x of the
    finest, 1 on a coarse axis (1x3x3). Stops when no axis can be pooled or the map is small enough."""
    sp, size = list(spacing_), list(shape)
    strides, kernels = [], []
    for _ in range(max_depth):
        finest = min(sp)
        kernels.append([3 if s <= 2 * finest else 1 for s in sp])
        pool = [
            2 if (s <= 2 * finest and n >= 2 * MIN_BOTTLENECK) else 1 for s, n in zip(sp, size, strict=True)
        ]
        if not any(p == 2 for p in pool) or max(size) <= MAX_BOTTLENECK:
            kernels.pop()
            break
        strides.append(pool)
        sp = [s * p for s, p in zip(sp, pool, strict=True)]
        size = [n // p for n, p in zip(size, pool, strict=True)]
    kernels.append([3 if s <= 2 * min(sp) else 1 for s in sp])
    return strides, kernels


def _patch(median: list[int], budget: int, step: int) -> list[int]:
    """The median image size (the aspect kept), shrunk on its largest axis until it fits ``budget``
    voxels, each axis a multiple of ``step`` (at least one step)."""
    size = [max(step, int(m) // step * step) for m in median]
    while math.prod(size) > budget and max(size) > step:
        size[int(np.argmax(size))] -= step
    return size


def geometry(fp: Fingerprint, device: Device, target: list[float] | None) -> list[Decision]:
    """Patch, depth and (3D) per-axis strides and kernels: the median image (at the target spacing) within
    the device's voxel budget; down-steps until the coarsest map is 4-8 voxels per axis."""
    d = fp.spatial_dims
    shapes = [
        shape_after(s, sp, target) if target else s for s, sp in zip(fp.shapes, fp.spacings, strict=True)
    ]
    median = [int(v) for v in np.median(np.asarray(shapes), axis=0)]
    budget = PATCH_VOXELS[(device.kind, d)]
    out = []
    if d == 2:
        depth = next(
            (
                k
                for k in range(1, MAX_DEPTH[2] + 1)
                if min(_patch(median, budget, 2**k)) / 2**k <= MAX_BOTTLENECK
            ),
            MAX_DEPTH[2],
        )
        patch = _patch(median, budget, 2**depth)
        out.append(Decision("model.depth", depth, f"coarsest map {min(patch) // 2**depth} px (4-8 wanted)"))
    else:
        sp = list(target or fp.median_spacing)
        coarse = _patch(median, budget, 16)
        strides, kernels = _pools(sp, coarse, MAX_DEPTH[3])
        depth = len(strides)
        div = [math.prod(s[a] for s in strides) for a in range(3)]
        patch = [max(dv, int(c) // dv * dv) for c, dv in zip(coarse, div, strict=True)]
        iso = all(s == [2, 2, 2] for s in strides) and all(k == [3, 3, 3] for k in kernels)
        out.append(Decision("model.depth", depth, f"pool until 4-8 voxels per axis ({div} in all)"))
        out.append(
            Decision(
                "model.options.strides",
                None if iso else strides,
                "isotropic: 2 on every axis" if iso else "pool an axis while within 2x of the finest",
            )
        )
        out.append(
            Decision(
                "model.options.kernels",
                None if iso else kernels,
                "3 on every axis" if iso else "1 on an axis coarser than 2x the finest",
            )
        )
    out.append(
        Decision("data.patch_size", patch, f"median image {median} within {budget:,} voxels ({device.kind})")
    )
    return out


def sampling(fp: Fingerprint, patch: list[int]) -> list[Decision]:
    """Foreground oversampling from class frequency and object size: rare classes and objects small
    against the patch get more patches centred on them (nnU-Net's 1/3 is the floor)."""
    fg = fp.foreground_fraction
    share = 0.33 if fg >= 0.2 else 0.5 if fg >= 0.05 else 0.67
    small = [o["median_voxels"] for o in fp.objects.values() if o["count"]]
    tiny = bool(small) and min(small) < 0.002 * math.prod(patch)
    if tiny:
        share = min(0.67, share + 0.17)  # more would starve the background of patches (false positives)
    why = f"foreground {100 * fg:.1f}% of voxels" + ("; small objects (<0.2% of a patch)" if tiny else "")
    return [Decision("data.foreground_fraction", round(share, 2), why)]


def loss(fp: Fingerprint, task: str = "semantic") -> list[Decision]:
    """Dice + CE (nnU-Net's default); batch Dice in 3D (nnU-Net); Dice over class 0 too when the first mask
    value is the minority (e.g. thin membranes stored as 0), so the rare class drives the Dice term.
    Instances: the U-Net paper's weight map (w0 = 10, sigma = 5 px) on the CE term, which makes the thin
    boundaries between touching objects count."""
    opts: dict[str, Any] = {}
    reasons = ["Dice + cross-entropy"]
    if fp.spatial_dims == 3:
        opts["batch_dice"] = True
        reasons.append("batch Dice (3D)")
    if task == "instances":
        opts["weight_map"] = {"w0": 10.0, "sigma": 5.0}
        reasons.append("the U-Net weight map on the boundaries between touching objects")
        return [
            Decision("train.loss", "dice_ce", "; ".join(reasons)),
            Decision("train.loss_options", opts, "see train.loss"),
        ]
    first = fp.class_fraction.get(str(fp.class_values[0]), fp.class_fraction.get(fp.class_values[0], 1.0))
    if len(fp.class_values) == 2 and first < 0.5:
        opts["include_background"] = True
        reasons.append(f"class 0 is the minority ({100 * first:.0f}%): its Dice counts")
    return [
        Decision("train.loss", "dice_ce", "; ".join(reasons)),
        Decision("train.loss_options", opts, "see train.loss"),
    ]


def augmentation(fp: Fingerprint) -> list[Decision]:
    """Stronger augmentation for few images (the U-Net paper's point: elastic deformation lets a network
    learn from very few), the defaults from a few hundred."""
    n = fp.n_cases
    strength = 1.0 if n < 30 else 0.6 if n < 150 else 0.3
    d = fp.spatial_dims
    values = {
        "augment.elastic_prob": round((0.3 if d == 2 else 0.1) * strength + (0.0 if d == 3 else 0.05), 2),
        "augment.affine_prob": round(0.2 + 0.1 * strength, 2),
        "augment.rotation_degrees": 30.0 if d == 2 else 15.0,
        "augment.scale_range": [
            round(1 - 0.25 * max(strength, 0.6), 2),
            round(1 + 0.25 * max(strength, 0.6), 2),
        ],
        "augment.brightness_prob": round(0.15 + 0.15 * strength, 2),
        "augment.contrast_prob": round(0.15 + 0.15 * strength, 2),
        "augment.gamma_prob": round(0.15 + 0.15 * strength, 2),
    }
    why = f"{n} training images: {'strong' if strength == 1 else 'moderate' if strength > 0.3 else 'light'}"
    return [Decision(k, v, why) for k, v in values.items()]


def inference(fp: Fingerprint, device: Device, patch: list[int], divisor: list[int]) -> list[Decision]:
    """Tiles larger than the patch where memory allows (fewer seams and overlaps), overlap 0.25 on a CPU
    (0.5, nnU-Net's, on a GPU)."""
    d = fp.spatial_dims
    cap = {2: 512 if not device.gpu else 1024, 3: 128 if not device.gpu else 192}[d]
    median = np.median(np.asarray(fp.shapes), axis=0)
    tile = [
        int(min(max(p, -(-int(m) // dv) * dv), cap // dv * dv if cap >= p else p))
        for p, m, dv in zip(patch, median, divisor, strict=True)
    ]
    overlap = 0.5 if device.gpu else 0.25
    return [
        Decision("infer.tile", tile, "the median image, within the device's tile cap"),
        Decision("infer.overlap", overlap, "nnU-Net's 0.5" if device.gpu else "0.25: a CPU's time"),
    ]


def default_budget(fp: Fingerprint, device: Device) -> Decision:
    """With no --max-minutes: what a user would accept to wait on this device, not nnU-Net's 1000 epochs."""
    minutes = DEFAULT_BUDGET[(device.kind, fp.spatial_dims)]
    return Decision(
        "train.max_minutes", minutes, f"no --max-minutes: {minutes:g} minutes on this {device.kind}"
    )
