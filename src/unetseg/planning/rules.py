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

from unetseg.data.resample import shape_after, target_spacing
from unetseg.errors import ConfigError
from unetseg.planning.fingerprint import Fingerprint, is_ct_like


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
# Cross-validation: the least a fold may train and still make a model worth scoring. 2D on a CPU: the demo's
# two minutes train a useful U-Net on two cores (README), the narrowest width's few hundred steps; a 3D step
# costs several times a 2D one; a GPU makes those steps in well under half the time.
MIN_FOLD_MINUTES = {("cpu", 2): 2.0, ("cpu", 3): 5.0, ("cuda", 2): 1.0, ("cuda", 3): 2.0}


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


def _patch(median: list[int], budget: int, step: int | list[int]) -> list[int]:
    """The median image size (the aspect kept), each axis a multiple of ``step`` (at least one step):
    rounded up when that fits ``budget`` voxels (the whole image in one patch), else shrunk on its largest
    axis until it fits."""
    steps = [step] * len(median) if isinstance(step, int) else list(step)
    up = [max(st, -(-int(m) // st) * st) for m, st in zip(median, steps, strict=True)]
    if math.prod(up) <= budget:
        return up
    size = [max(st, int(m) // st * st) for m, st in zip(median, steps, strict=True)]
    while math.prod(size) > budget:
        axis = int(np.argmax(size))
        if size[axis] <= steps[axis]:
            break
        size[axis] -= steps[axis]
    return size


# The field of view (resolution and patch) from the data: a patch should see a large object whole, with
# context around it, or the whole image when objects fill it; a coarser grid buys that view at the same cost
# per step, as long as the finest structures survive it (nnU-Net's 3d_lowres does the first in 3D; its 2D
# configurations take the whole image on a GPU, which a CPU cannot afford at full resolution).
FOV_MARGIN = 1.5  # a large object and a quarter of its size on each side
WHOLE_SHARE = 0.7  # when the view wanted reaches this share of an image's side, take the whole side
# the thinnest 10% of every class (thickness p10: a band's width, a disc's radius) keep at least this many px
DETAIL_PX = 6.0
INSTANCE_DETAIL_PX = 12.0  # instances also need the 1-2 px gaps between touching objects
MAX_DOWNSAMPLE = 4.0
MIN_GAIN = 1.25  # a coarser grid only when it widens the view by at least this factor
SURE_GAIN = 2.0  # from here on the rules decide alone; between MIN_GAIN and it, a timed probe decides
PATCH_STRETCH = {2: 1.6, 3: 1.0}  # the most a patch may exceed the device budget to see its objects whole


def model_shapes(fp: Fingerprint, target: list[float] | None,
                 downsample: list[float] | None = None) -> list[list[int]]:
    """Every image's shape on the model's grid: at the ``target`` spacing (None: its own), then
    ``downsample`` coarser."""
    factor = downsample or [1.0] * fp.spatial_dims
    pairs = zip(fp.shapes, fp.spacings, strict=True)
    shapes = [shape_after(s, sp, target) if target else s for s, sp in pairs]
    return [[max(1, round(n / f)) for n, f in zip(s, factor, strict=True)] for s in shapes]


@dataclass(frozen=True)
class Resolution:
    """One resolution the planner considers: ``downsample`` per axis (None: the training grid itself), the
    patch voxels it may use there, and why."""

    name: str
    downsample: list[float] | None
    voxels: int
    reason: str


def _view(fp: Fingerprint, median: list[int], scale: list[float]) -> tuple[list[int], str]:
    """The field of view the objects want per axis (voxels of the training grid, ``scale``: training voxels
    per image voxel), and why: the larger of the 90th-percentile object and the object that holds the
    median voxel (specks beside a large object do not hide it; a thin network needs a few of its widths,
    not its span), with :data:`FOV_MARGIN`; the whole side when that reaches :data:`WHOLE_SHARE` of it or
    when most objects are cut by the image border."""
    want, why = [0] * len(median), "no objects"
    for name, o in fp.objects.items():
        if not o.get("count") or o.get("p90_extent") is None:
            continue
        cut = o["border_fraction"] >= 0.5 and max(o["p90_extent_share"]) >= 0.25
        big = o.get("median_reach_share") and max(o["median_reach_share"]) > max(o["p90_extent_share"])
        ext, shares, what = (
            (o["median_reach"], o["median_reach_share"], "half of its voxels in objects reaching") if big
            else (o["p90_extent"], o["p90_extent_share"], "90% of objects within"))
        for a, (m, e, share) in enumerate(zip(median, ext, shares, strict=True)):
            whole = cut or FOV_MARGIN * share >= WHOLE_SHARE
            w = m if whole else min(m, math.ceil(FOV_MARGIN * e * scale[a]))
            if w > want[a]:
                want[a] = w
                px = [round(x * f) for x, f in zip(ext, scale, strict=True)]
                why = (f"class {name}: {what} {px} px "
                       f"({', '.join(f'{100 * x:.0f}%' for x in shares)} of the image)"
                       + ("; most touch the border" if cut else ""))
    return want, why


def _finest(fp: Fingerprint, unit: float, task: str) -> tuple[float, str]:
    """The largest downsampling that keeps every class's thin structures (``unit``: spacing units per
    training voxel): the smallest p10 thickness over :data:`DETAIL_PX` (instances: INSTANCE_DETAIL_PX)."""
    need = INSTANCE_DETAIL_PX if task == "instances" else DETAIL_PX
    thin = [(p10 / unit, name) for name, t in fp.thickness.items() if (p10 := t.get("p10")) is not None]
    if not thin:
        return MAX_DOWNSAMPLE, "no classes measured"
    px, name = min(thin)
    return float(np.clip(px / need, 1.0, MAX_DOWNSAMPLE)), f"class {name}'s thinnest 10% are {px:.1f} px"


def _coarser(want: list[int], budget: int, spacing: list[float], limit: float) -> list[float]:
    """Per-axis factors (nnU-Net's 3d_lowres walk): the axes over 2x finer than the coarsest (all, once
    none is) grow 5% at a time until the view, rounded up to whole pooling steps, fits ``budget`` voxels;
    an axis stops at ``limit`` or when its view would fall under 32 voxels."""
    f = [1.0] * len(want)
    step = 32 if len(want) == 2 else 16  # 2**depth of the patches the device affords

    def size(x: list[float]) -> int:
        return math.prod(-(-math.ceil(w / v) // step) * step for w, v in zip(want, x, strict=True))

    while size(f) > budget:
        sp = [s * x for s, x in zip(spacing, f, strict=True)]
        fine = [a for a in range(len(f)) if max(sp) / sp[a] > 2] or list(range(len(f)))
        grow = [a for a in fine if f[a] * 1.05 <= limit and want[a] / f[a] > 32]
        if not grow:
            break
        for a in grow:
            f[a] *= 1.05
    return [round(x, 2) for x in f]


def resolution(fp: Fingerprint, device: Device, target: list[float] | None,
               task: str = "semantic") -> list[Resolution]:
    """The training grid's resolution and patch allowance: the rule's choice first, then (when the rules
    cannot be sure) the alternative a timed probe tries against it. Full resolution when the device's patch
    already sees the objects whole; a coarser grid (:func:`_coarser`) when they need more view and the thin
    structures allow it (:func:`_finest`); a patch up to :data:`PATCH_STRETCH` over the budget when they do
    not. Sure from :data:`SURE_GAIN` on; between MIN_GAIN and SURE_GAIN, or when thin structures cap the
    factor, the probe decides."""
    d = fp.spatial_dims
    spacing = list(target or fp.median_spacing)
    median = [int(v) for v in np.median(np.asarray(model_shapes(fp, target)), axis=0)]
    scale = [m / max(float(o), 1.0) for m, o in zip(median, fp.median_shape, strict=True)]
    budget = PATCH_VOXELS[(device.kind, d)]
    want, why = _view(fp, median, scale)
    need = math.prod(want) / budget
    if need <= 1:
        return [Resolution("full", None, budget, f"the patch sees the objects whole ({why})")]
    limit, thin = _finest(fp, min(spacing), task)
    factor = _coarser(want, budget, spacing, limit)
    gain = math.prod(factor) ** (1 / d)
    stretch = int(min(math.prod(w / x for w, x in zip(want, factor, strict=True)), PATCH_STRETCH[d] * budget))
    view = f"the objects want a view of {want} px ({why})"
    if gain < MIN_GAIN:
        big = max(budget, stretch)
        how = "a patch up to " + f"{big / budget:.2g}x the device's budget" if big > budget else "the budget"
        return [Resolution("full", None, big, f"{view}; {thin}: full resolution, {how}")]
    coarse = Resolution("coarse", factor, stretch if stretch > budget else budget,
                        f"{view}: {gain:.2g}x coarser sees them whole; {thin}")
    sure = need ** (1 / d) >= SURE_GAIN and gain >= need ** (1 / d) * 0.95
    if sure:
        return [coarse]
    return [coarse, Resolution("full", None, budget, "full resolution (the probe's alternative)")]


def receptive_field(depth: int) -> int:
    """Pixels one output of a U-Net of ``depth`` down-steps sees at its coarsest level (two 3x3 convolutions
    per level, 2x pooling): what a patch's context is worth."""
    return 1 + 4 * (2 ** (depth + 1) - 1) + (2**depth - 1)


def geometry(fp: Fingerprint, device: Device, target: list[float] | None,
             downsample: list[float] | None = None, voxels: int | None = None,
             pools: list[list[int]] | None = None) -> list[Decision]:
    """Patch, depth and (3D) per-axis strides and kernels: the median image (at the target spacing, and
    ``downsample`` coarser) within ``voxels`` (the device's budget by default); down-steps until the
    coarsest map is 4-8 voxels per axis. ``pools``: a fixed network's strides per level (a fine-tune's
    source): only the patch is planned, a multiple of what they divide by."""
    d = fp.spatial_dims
    factor = downsample or [1.0] * d
    median = [int(v) for v in np.median(np.asarray(model_shapes(fp, target, downsample)), axis=0)]
    budget = voxels or PATCH_VOXELS[(device.kind, d)]
    out = []
    at = f" at {'x'.join(f'{f:g}' for f in factor)} coarser" if downsample else ""
    if pools is not None:
        div = [math.prod(s[a] for s in pools) for a in range(d)]
        patch = _patch(median, budget, div)
    elif d == 2:
        depth = next(
            (
                k
                for k in range(1, MAX_DEPTH[2] + 1)
                if min(_patch(median, budget, 2**k)) / 2**k <= MAX_BOTTLENECK
            ),
            MAX_DEPTH[2],
        )
        patch = _patch(median, budget, 2**depth)
        rf = receptive_field(depth)
        out.append(Decision("model.depth", depth, f"coarsest map {min(patch) // 2**depth} px (4-8 wanted); "
                            f"receptive field ~{rf} px" + (f" ({round(rf * max(factor))} px of the image)"
                                                           if downsample else "")))
    else:
        sp = [s * f for s, f in zip(target or fp.median_spacing, factor, strict=True)]
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
        Decision("data.patch_size", patch,
                 f"median image {median}{at} within {budget:,} voxels ({device.kind})")
    )
    return out


def sampling(fp: Fingerprint, patch: list[int], downsample: list[float] | None = None) -> list[Decision]:
    """Foreground oversampling from class frequency and object size: rare classes and objects small
    against the patch (at the model's grid, ``downsample`` coarser) get more patches centred on them
    (nnU-Net's 1/3 is the floor)."""
    fg = fp.foreground_fraction
    share = 0.33 if fg >= 0.2 else 0.5 if fg >= 0.05 else 0.67
    shrink = math.prod(downsample or [1.0])
    small = [o["median_voxels"] / shrink for o in fp.objects.values() if o["count"]]
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
    first = fp.class_fraction.get(str(fp.class_values[0]), 1.0)  # keyed by class_label: "0", "255"
    if len(fp.class_values) == 2 and first < 0.5:
        opts["include_background"] = True
        reasons.append(f"class 0 is the minority ({100 * first:.0f}%): its Dice counts")
    return [
        Decision("train.loss", "dice_ce", "; ".join(reasons)),
        Decision("train.loss_options", opts, "see train.loss"),
    ]


WHOLE_VIEW = 0.9  # a patch this close to the image on every axis holds the whole image


def norm_layer(fp: Fingerprint, patch: list[int], downsample: list[float] | None = None) -> list[Decision]:
    """2D patches that hold whole images (large structures, often at a coarser grid): instance norm, as
    nnU-Net's everywhere: each image is normalised by its own statistics, where a batch of a few whole images
    of different lighting and colour (endoscopy, dermoscopy, ultrasound) gives BatchNorm noisy statistics
    (measured on CVC-ClinicDB, BENCHMARKS.md). Crops of larger images keep BatchNorm (the measured default
    there, folded into the convolutions for prediction)."""
    if fp.spatial_dims != 2:
        return []
    median = np.median(np.asarray(fp.shapes), axis=0) / np.asarray(downsample or [1.0, 1.0])
    if all(p >= WHOLE_VIEW * m for p, m in zip(patch, median, strict=True)):
        return [Decision("model.options.norm", "instance",
                         "a patch holds a whole image: per-image statistics (nnU-Net's instance norm)")]
    return [Decision("model.options.norm", None, "patches are crops of larger images: batch norm")]


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


def inference(fp: Fingerprint, device: Device, patch: list[int], divisor: list[int],
              downsample: list[float] | None = None) -> list[Decision]:
    """Tiles larger than the patch where memory allows (fewer seams and overlaps), overlap 0.25 on a CPU
    (0.5, nnU-Net's, on a GPU)."""
    d = fp.spatial_dims
    cap = {2: 512 if not device.gpu else 1024, 3: 128 if not device.gpu else 192}[d]
    median = np.median(np.asarray(fp.shapes), axis=0) / np.asarray(downsample or [1.0] * d)
    tile = [
        int(min(max(p, -(-int(m) // dv) * dv), cap // dv * dv if cap >= p else p))
        for p, m, dv in zip(patch, median, divisor, strict=True)
    ]
    overlap = 0.5 if device.gpu else 0.25
    return [
        Decision("infer.tile", tile, "the median image, within the device's tile cap"),
        Decision("infer.overlap", overlap, "nnU-Net's 0.5" if device.gpu else "0.25: a CPU's time"),
    ]


def default_budget(fp: Fingerprint, device: Device, fine_tune: bool = False) -> Decision:
    """With no --max-minutes: what a user would accept to wait on this device, not nnU-Net's 1000 epochs;
    a fine-tune on a few corrected images takes a few minutes (FINE_TUNE_MINUTES per image, at least
    FINE_TUNE_MIN_MINUTES, at most the from-scratch budget)."""
    minutes = DEFAULT_BUDGET[(device.kind, fp.spatial_dims)]
    if fine_tune:
        minutes = min(minutes, max(FINE_TUNE_MIN_MINUTES, FINE_TUNE_MINUTES * fp.n_cases))
        return Decision("train.max_minutes", minutes,
                        f"no --max-minutes: a fine-tune on {fp.n_cases} image(s) on this {device.kind}")
    return Decision(
        "train.max_minutes", minutes, f"no --max-minutes: {minutes:g} minutes on this {device.kind}"
    )


def fold_budget(folds: int, device: Device, dims: int, given: float | None,
                default: Decision | None) -> tuple[float, Decision]:
    """A K-fold run's budget is the whole run's: ``(whole minutes, each fold's share)``. A given budget too
    small for ``folds`` folds of :data:`MIN_FOLD_MINUTES` is refused in one line that names both ways out
    (more minutes, fewer folds); a planned one (``default``) grows to what the folds need."""
    floor = MIN_FOLD_MINUTES[(device.kind, dims)]
    if given is not None:
        per = given / folds
        if per < floor:
            most = int(given // floor)
            fewer = f", or --folds {most}" if most >= 2 else ", or train one model (no --folds)"
            raise ConfigError(f"--folds {folds} with --max-minutes {given:g}: {per:.2g} min per fold, under "
                              f"the {floor:g} min a fold needs on this {device.kind} ({dims}D) to train a "
                              f"model worth scoring; give --max-minutes {folds * floor:g} or more{fewer}")
        return given, Decision("train.max_minutes", per, f"{given:g} min given for the whole run, shared by "
                               f"{folds} folds: {per:.3g} min each")
    assert default is not None
    whole = max(float(default.value), folds * floor)
    raised = (f"; raised to {whole:g} so that each of {folds} folds gets the {floor:g} min a fold needs"
              if whole > default.value else "")
    return whole, Decision("train.max_minutes", whole / folds,
                           f"{default.reason}{raised}, for the whole run: {whole / folds:.3g} min per fold")


# Fine-tuning (train.init_from): the copied filters are trained already, so the peak learning rate is a
# share of the from-scratch one; new layers (stem, head) get a warm-up so their first random gradients do
# not wreck the copied ones, and on a tiny set (a few corrected images, the human-in-the-loop case) the
# encoder stays frozen for the first part, as Cellpose's and transfer learning's practice suggests.
FINE_TUNE_LR = 0.25
FINE_TUNE_MINUTES, FINE_TUNE_MIN_MINUTES = 0.5, 2.0
TINY_SET, FROZEN_SHARE = 10, 0.25


def fine_tune(lr: float, n_train: int, new_layers: list[str]) -> list[Decision]:
    """The learning rate, warm-up and frozen share of a fine-tune from the from-scratch peak ``lr``."""
    tiny = n_train <= TINY_SET
    return [
        Decision("train.lr", lr * FINE_TUNE_LR,
                 f"a fine-tune: {FINE_TUNE_LR:g} x the from-scratch {lr:g} (the copied layers are trained)"),
        Decision("train.warmup_epochs", 1 if new_layers else 0,
                 f"a warm-up for the new {' and '.join(new_layers)}" if new_layers
                 else "no new layers: no warm-up"),
        Decision("train.freeze_encoder", FROZEN_SHARE if tiny else 0.0,
                 f"{n_train} training image(s) (<= {TINY_SET}): the encoder frozen for the first "
                 f"{FROZEN_SHARE:.0%} of the run" if tiny else f"{n_train} training images: nothing frozen"),
    ]
