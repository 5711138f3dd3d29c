"""The package's README.md: what the model does, the data it was trained on, its validation scores from the
run, its inputs and outputs, and how to run it in unetseg, Fiji (deepImageJ), QuPath and napari."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetseg.config import Config
from unetseg.postprocess.semantic import describe_step
from unetseg.zoo.describe import class_names, space_ids


@dataclass(frozen=True)
class RunFacts:
    """What the README says about the run: the checkpoint's recorded metrics and versions, the run's
    metrics.csv rows, the cases found in its data folders (None when they are gone) and the sample's name."""

    metrics: dict[str, Any]
    versions: dict[str, str]
    rows: list[dict[str, str]]
    cases: tuple[int, int] | None
    sample: str
    input_sizes: str
    weights: list[str]
    spec_version: str


def read_rows(run: Path | None) -> list[dict[str, str]]:
    """The rows of ``RUN/metrics.csv`` (empty when there is none: a bare checkpoint folder)."""
    path = run / "metrics.csv" if run is not None else None
    if path is None or not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e9 else f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _value(v: Any) -> str:
    return "+".join(_fmt(x) for x in v) if isinstance(v, list) else _fmt(v)


def _short(text: str) -> str:
    """A logged number to 4 decimals (lists of them too); other text as it is."""
    try:
        return " ".join(f"{float(t):.4f}" for t in text.split())
    except ValueError:
        return text


def _data_section(config: Config, facts: RunFacts) -> list[str]:
    d = config.data
    folder = Path(d.data).name if d.data else "(not recorded)"
    lines = ["## Training data", "",
             f"- Dataset folder: `{folder}`" + (f", validation folder `{Path(d.val_data).name}`" if d.val_data
                                                 else f", {d.val_fraction:.0%} of its cases held out for "
                                                      f"validation (split seed {d.split_seed})")]
    if facts.cases is not None:
        lines.append(f"- Cases: {facts.cases[0]} for training, {facts.cases[1]} for validation")
    task = ("instances (object masks, trained on a "
            f"{'3-class interior/boundary' if d.instance_target == 'three_class' else 'distance'} target)"
            if d.task == "instances" else "semantic classes")
    values = d.class_values if d.task == "semantic" and d.class_values else class_names(config)
    listed = ", ".join(_value(v) for v in values)
    lines += [f"- Task: {task}; classes (mask values, in channel order): {listed}",
              f"- Training patch: {d.patch_size}; normalisation: `{d.normalization}`"
              + (f" (percentiles {d.percentiles})" if d.normalization == "percentile" else "")
              + (f" (window {d.window})" if d.window else "")]
    if d.pixel_size:
        lines.append(f"- Pixel size of the training images: {d.pixel_size} micrometre")
    if d.spacing:
        lines.append(f"- Target spacing (3D): {d.spacing}")
    if d.downsample:
        lines.append(f"- Trained at a coarser resolution: {d.downsample} per axis (see the input axes' "
                     "scale)")
    t = config.train
    lines.append(f"- Training: loss `{t.loss}`, optimizer `{t.optimizer}`, learning rate {t.lr:g} "
                 f"({t.schedule}), batch {t.batch_size}, {len(facts.rows) or '?'} epoch(s) logged")
    return lines


def _validation_section(facts: RunFacts) -> list[str]:
    lines = ["## Validation", "", "Scores on the run's validation images (unetseg's sliding-window "
             "prediction at each image's own size), from the checkpoint this package was made of:", ""]
    shown = {k: v for k, v in facts.metrics.items() if k.startswith("val_") or k in ("epoch", "step")}
    lines += ["| metric | value |", "| --- | --- |"] if shown else ["(no validation scores recorded)"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in shown.items()]
    if facts.rows:
        last = facts.rows[-1]
        logged = [f"{k} {_short(v)}" for k, v in last.items() if v and k.startswith(("val_", "train_"))]
        lines += ["", f"The run logged {len(facts.rows)} epoch(s); the last: {', '.join(logged)}"]
    return lines


def _io_section(config: Config, facts: RunFacts) -> list[str]:
    axes = "".join(space_ids(config.model.spatial_dims))
    return ["## Inputs and outputs", "",
            f"- Input `input`: float32, axes batch, channel ({config.model.in_channels}), {', '.join(axes)}; "
            f"sizes {facts.input_sizes}. The raw image: the package's preprocessing applies unetseg's "
            f"`{config.data.normalization}` normalisation with the spec's own operations.",
            "- Output `probabilities`: float32 class probabilities (softmax inside the network), one "
            f"channel per class: {', '.join(class_names(config))}. The label image is the argmax over "
            "channels.",
            f"- Weights: {', '.join(facts.weights)} (the same network; bioimage.io model spec "
            f"{facts.spec_version})."]


def _usage_section(config: Config, package: str) -> list[str]:
    dims = config.model.spatial_dims
    lines = ["## How to use it", "",
             "**unetseg** (tiling, normalisation, resolution and TTA as trained):", "", "```bash",
             f"unetseg predict --checkpoint {package} --input images/ --output masks/", "```", "",
             "```python", "import unetseg", f'seg = unetseg.load("{package}")',
             "labels = seg.predict(image)" + ("            # object ids" if config.data.task == "instances"
                                              else ""), "```", "",
             "**Fiji** (deepImageJ 3): *Plugins > DeepImageJ > DeepImageJ Run*, install the model from "
             "this .zip file, open an image and run it (its TorchScript or ONNX weights); the output is one "
             "probability image per class.", "",
             "**QuPath** (0.5+, with its Deep Java Library and bioimage.io extensions): a pixel classifier "
             "from this package runs its TorchScript weights.", "",
             "**napari / Python** (bioimageio.core, or the napari bioimage.io plugin):", "", "```python",
             "from bioimageio.core import load_description, predict",
             f'model = load_description("{package}")',
             "sample = predict(model=model, inputs=image)  # image with axes " +
             ("(batch, channel, y, x)" if dims == 2 else "(batch, channel, z, y, x)"), "```"]
    if config.data.task == "instances":
        lines += ["", "**Instances**: this network gives the per-pixel classes (background, interior, "
                  "boundary or distance bins); the seeded watershed that separates touching objects runs "
                  "outside the network: in unetseg (`unetseg predict` / `seg.predict(image)` above, with "
                  "the thresholds calibrated on the validation images: "
                  f"foreground {config.infer.foreground_threshold:g}, "
                  f"interior {config.infer.interior_threshold:g}) or in napari (e.g. a watershed of the "
                  "interior probability seeded by its connected components)."]
    if config.infer.postprocess and config.data.task == "semantic":
        steps = "; ".join(describe_step(s) for s in config.infer.postprocess)
        lines += ["", f"**Post-processing**: unetseg applies the steps chosen on held-out images ({steps}) "
                  "after the argmax; they are not part of the network, so Fiji, QuPath and bioimage.io "
                  "tools give the labels without them."]
    if config.infer.temperature != 1.0:
        lines += ["", f"**Calibration**: the probabilities are calibrated (temperature "
                  f"{config.infer.temperature:.3g} inside the network, fitted on held-out images)."]
    if config.data.downsample or config.data.spacing:
        lines += ["", "**Resolution**: the network works on a grid other than the images' own (see the "
                  "input axes' scale). unetseg resamples for you; other tools need the image at that pixel "
                  "size first."]
    return lines


def readme_text(config: Config, facts: RunFacts, *, name: str, description: str, package: str,
                citations: list[dict[str, str]], authors: list[str], license_id: str) -> str:
    """The whole README (Markdown)."""
    m = config.model
    model = [f"# {name}", "", description, "", "## Model", "",
             f"- Architecture: `{m.name}` ({m.spatial_dims}D, {m.in_channels} input channel(s), "
             f"{len(class_names(config))} output classes, base width {m.base_channels}, depth {m.depth}"
             + (f", options {m.options}" if m.options else "") + ")",
             f"- Made with unetseg {facts.versions.get('unetseg', '?')} "
             f"(torch {facts.versions.get('torch', '?')}); sample image: `{facts.sample}`"]
    cite = ["## Citation", "", *(f"- {c['text']}. doi:{c['doi']}" for c in citations), "",
            "## Authors and licence", "", f"{', '.join(authors)}; licence: {license_id} (SPDX)."]
    parts = [model, _data_section(config, facts), _validation_section(facts), _io_section(config, facts),
             _usage_section(config, package), cite]
    return "\n".join(line for part in parts for line in [*part, ""])
