"""The parts of a model description (bioimage.io model spec 0.5) that follow from a checkpoint's config:
tensor axes and sizes, the preprocessing as the spec's own operations, the output's channels, weights
entries, citations and tags. Plain YAML-ready dicts; :mod:`unetseg.zoo.export` validates them with
``bioimageio.spec``."""

from __future__ import annotations

from typing import Any

from unetseg.config import Config
from unetseg.config.schema import instance_classes
from unetseg.errors import ConfigError
from unetseg.models.probabilities import CALLABLE, ClassProbabilities

ARCHITECTURE_MODULE = "unetseg.models.probabilities"
INPUT, OUTPUT = "input", "probabilities"
UNET_PAPER = ("Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for Biomedical Image "
              "Segmentation. MICCAI 2015", "10.1007/978-3-319-24574-4_28")
# each architecture's own paper (beside the U-Net's), by DOI so that validation needs no network
VARIANT_PAPERS: dict[str, list[tuple[str, str]]] = {
    "unet": [],
    "unet_pp": [("Zhou Z. et al. UNet++: A Nested U-Net Architecture for Medical Image Segmentation. "
                 "DLMIA 2018", "10.1007/978-3-030-00889-5_1")],
    "attention_unet": [("Oktay O. et al. Attention U-Net: Learning Where to Look for the Pancreas. MIDL 2018",
                        "10.48550/arXiv.1804.03999")],
    "r2unet": [("Alom M. Z. et al. Recurrent Residual Convolutional Neural Network based on U-Net (R2U-Net) "
                "for Medical Image Segmentation. 2018", "10.48550/arXiv.1802.06955")],
    "res_unet": [("Zhang Z., Liu Q., Wang Y. Road Extraction by Deep Residual U-Net. IEEE GRSL 2018",
                  "10.1109/LGRS.2018.2802944")],
}
VARIANT_PAPERS["r2_attention_unet"] = VARIANT_PAPERS["r2unet"] + VARIANT_PAPERS["attention_unet"]


def space_ids(spatial_dims: int) -> list[str]:
    return ["z", "y", "x"][3 - spatial_dims:]


def class_names(config: Config) -> list[str]:
    """One name per output channel: the instance target's classes, else the mask value(s) of each class."""
    d = config.data
    if d.task == "instances":
        if d.instance_target == "three_class":
            return ["background", "interior", "boundary"]
        return ["background", *(f"distance_bin{k}" for k in range(1, instance_classes(d.instance_target)))]
    values = d.class_values or list(range(max(2, config.model.num_classes)))
    return [f"value_{'+'.join(_num(x) for x in v) if isinstance(v, list) else _num(v)}" for v in values]


def _num(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def preprocessing(config: Config) -> list[dict[str, Any]]:
    """The config's normalisation as the spec's operations, each exact (up to the spec's ``eps`` of
    1e-6): ``zscore`` -> per-image, per-channel ``zero_mean_unit_variance``; ``window`` -> ``clip`` +
    ``scale_linear`` to [-1, 1]; ``ct`` -> ``clip`` + ``fixed_zero_mean_unit_variance``; an imported
    package's ``steps`` as they came; ``none`` -> nothing. Statistics are per image (the axes exclude
    batch) and per channel (they exclude channel). ``percentile`` (clip to the image's percentiles, then
    the z-score *of the clipped image*) is refused: the spec's reference implementation computes every
    statistic of a chain on the raw input, so no chain of its operations gives the clipped image's
    z-score."""
    d, axes = config.data, space_ids(config.model.spatial_dims)
    if d.normalization == "zscore":
        return [{"id": "zero_mean_unit_variance", "kwargs": {"axes": axes}}]
    if d.normalization == "percentile":
        raise ConfigError(
            "data.normalization 'percentile' (clip to each image's percentiles, then z-score the clipped "
            "image) has no exact equivalent in the model spec (bioimageio.core takes every statistic from "
            "the raw image); retrain with --normalization zscore to export it")
    if d.normalization in ("window", "ct"):
        assert d.window is not None
        lo, hi = (float(w) for w in d.window)
        clip = {"id": "clip", "kwargs": {"min": lo, "max": hi}}
        if d.normalization == "window":
            gain = 2.0 / (hi - lo)
            return [clip, {"id": "scale_linear", "kwargs": {"gain": gain, "offset": -1.0 - lo * gain}}]
        assert d.intensity_stats is not None
        mean, std = (float(s) for s in d.intensity_stats)
        return [clip, {"id": "fixed_zero_mean_unit_variance", "kwargs": {"mean": mean, "std": std}}]
    if d.normalization == "steps":
        return [_spec_step(dict(s), axes) for s in d.preprocessing or []]
    return []


def _spec_step(step: dict[str, Any], axes: list[str]) -> dict[str, Any]:
    """One of :mod:`unetseg.data.normalize`'s steps back as the spec's operation."""
    op = step.pop("op")
    per_channel = step.pop("per_channel", True)
    if op == "fixed_zero_mean_unit_variance":
        step.pop("eps", None)  # the spec's fixed z-score has no eps of its own
    percentiles = any(step.get(k) is not None for k in ("min_percentile", "max_percentile"))
    if op in ("zero_mean_unit_variance", "scale_range") or percentiles:
        step["axes"] = axes if per_channel else ["channel", *axes]
    lists = {k: v for k, v in step.items() if isinstance(v, list) and k != "axes"}
    if lists:  # one value per channel: the spec's "along axis" form, every value a list
        n = len(next(iter(lists.values())))
        step.update({k: [v] * n for k, v in step.items() if isinstance(v, (int, float)) and k != "eps"})
        step["axis"] = "channel"
    return {"id": op, "kwargs": {k: v for k, v in step.items() if v is not None}}


def axis_scales(config: Config) -> tuple[list[float] | None, str | None]:
    """The size of a pixel of the model's grid per spatial axis (the training pixel size, or the 3D
    target spacing, times the resolution factor) and its unit (micrometre when from the pixel size)."""
    d, dims = config.data, config.model.spatial_dims
    base, unit = (d.pixel_size, "micrometer") if d.pixel_size and len(d.pixel_size) == dims else (
        (d.spacing, None) if d.spacing and len(d.spacing) == dims else (None, None))
    factor = d.downsample or [1.0] * dims
    if base is None:
        return (None, None) if d.downsample is None else ([float(f) for f in factor], None)
    return [float(b) * float(f) for b, f in zip(base, factor, strict=True)], unit


def input_axes(model: ClassProbabilities, config: Config) -> list[dict[str, Any]]:
    """batch, channel, then (z,) y, x of sizes ``min + n * step``: multiples of the network's divisor per
    axis ("same" padding), or the unpadded U-Net's valid sizes (its minimum, steps of 2**depth)."""
    dims = model.spatial_dims
    smallest = model.valid_input_size((1,) * dims)
    scales, unit = axis_scales(config)
    axes: list[dict[str, Any]] = [
        {"type": "batch"},
        {"type": "channel", "channel_names": [f"channel{i}" for i in range(model.in_channels)]},
    ]
    for k, name in enumerate(space_ids(dims)):
        step = int(model.divisors[k])
        low = int(smallest[k]) if model.padding == "valid" else step
        axes.append({"type": "space", "id": name, "size": {"min": low, "step": step},
                     **_scale(scales, unit, k)})
    return axes


def output_axes(model: ClassProbabilities, config: Config) -> list[dict[str, Any]]:
    """batch, the classes, then the input's spatial axes; the unpadded U-Net's output is smaller by its
    border on each side, which the spec writes as the size's ``offset`` (a halo the model crops itself)."""
    dims = model.spatial_dims
    probe = model.valid_input_size((1,) * dims)
    crops = [int(i) - int(o) for i, o in zip(probe, model.output_size(probe), strict=True)]
    scales, unit = axis_scales(config)
    axes: list[dict[str, Any]] = [{"type": "batch"},
                                  {"type": "channel", "channel_names": class_names(config)}]
    for k, name in enumerate(space_ids(dims)):
        size = {"tensor_id": INPUT, "axis_id": name, "offset": -crops[k]}
        axes.append({"type": "space", "id": name, "size": size, **_scale(scales, unit, k)})
    return axes


def _scale(scales: list[float] | None, unit: str | None, k: int) -> dict[str, Any]:
    if scales is None:
        return {}
    return {"scale": scales[k], **({"unit": unit} if unit else {})}


def architecture(config: Config) -> dict[str, Any]:
    """The ``pytorch_state_dict`` architecture: unetseg's callable and the registry's keyword arguments."""
    kwargs: dict[str, Any] = {"name": config.model.name, **config.model.build_kwargs()}
    if config.infer.temperature != 1.0:  # the calibration, inside the network's softmax
        kwargs["temperature"] = config.infer.temperature
    return {"callable": CALLABLE, "import_from": ARCHITECTURE_MODULE, "kwargs": kwargs}


def citations(config: Config) -> list[dict[str, str]]:
    papers = [UNET_PAPER, *VARIANT_PAPERS.get(config.model.name, [])]
    return [{"text": text, "doi": doi} for text, doi in papers]


def tags(config: Config) -> list[str]:
    task = "instance-segmentation" if config.data.task == "instances" else "semantic-segmentation"
    names = ["unetseg", config.model.name.replace("_", "-"), "unet", "segmentation", task,
             f"{config.model.spatial_dims}d", "pytorch", "onnx", "torchscript"]
    return list(dict.fromkeys(names))
