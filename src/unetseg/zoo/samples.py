"""A package's test tensors and cover, computed by unetseg from one of the run's own images.

The sample is the first validation image of the run (``data.val_data``, else the training folder's held-out
split, as training chose it), or the image given with ``--sample``. It is brought to the model's grid when
the model was trained at another resolution, and its centre is cropped to an input size the network takes
(at most the inference tile, so the package stays small). The test output is the network's class
probabilities for that crop after unetseg's own normalisation, in one pass, as ``bioimageio.core`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetseg.config import Config
from unetseg.data.cases import find_cases, read_pair
from unetseg.data.normalize import normalize
from unetseg.data.overlay import save_overlay
from unetseg.data.splits import split_cases
from unetseg.errors import DataError
from unetseg.fileio import atomic_write
from unetseg.io.images import read_image
from unetseg.models.probabilities import ClassProbabilities

MAX_SIDE = 512  # pixels per axis of the test input (2D); 3D: 128


@dataclass(frozen=True)
class Sample:
    """The test input (raw intensities, ``(1, C, *spatial)``), its output and where the image came from."""

    image: np.ndarray
    output: np.ndarray
    source: Path


def find_sample(config: Config, given: str | Path | None) -> tuple[np.ndarray, dict[str, Any], Path]:
    """The image to show: ``given``, else the run's first validation image (DataError naming what is
    missing when the run's data folder is gone)."""
    if given is not None:
        image, meta = read_image(given)
        return image, meta, Path(given)
    d = config.data
    folder = d.val_data or d.data
    if folder is None or not Path(folder).is_dir():
        raise DataError(f"{folder or 'the run'}: the run's data folder is not there to take a sample image "
                        "from; give one with --sample IMAGE")
    cases = find_cases(folder, require_masks=False)
    if not d.val_data:
        held = split_cases(cases, d.val_fraction, d.split_seed)[1]
        cases = held or cases
    image, _, meta = read_pair(cases[0], read_labels=False)
    return image, meta, cases[0].image_paths[0]


def on_model_grid(image: np.ndarray, meta: dict[str, Any], config: Config) -> np.ndarray:
    """The image resampled to the grid the model works on (itself when that is its own grid)."""
    from unetseg.data.resample import model_grid, resample_image

    grid = model_grid(meta.get("spacing"), config.data, image.ndim - 1)
    return image if grid is None else resample_image(image, *grid)


def crop_size(model: ClassProbabilities, shape: tuple[int, ...], cap: tuple[int, ...]) -> tuple[int, ...]:
    """The largest input size the network takes that fits ``shape`` and ``cap`` per axis (its smallest
    when the image is smaller: the crop is then mirror-padded)."""
    smallest = model.valid_input_size((1,) * len(shape))
    out = []
    for k, (s, c) in enumerate(zip(shape, cap, strict=True)):
        want, step = min(s, c), int(model.divisors[k])
        if model.padding == "valid":
            size = smallest[k] + max(0, (want - smallest[k]) // step) * step
        else:
            size = max(step, want // step * step)
        out.append(int(size))
    return tuple(out)


def centre_crop(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``(C, *size)`` from the centre of ``image`` (mirror-padded where the image is smaller)."""
    pads = [(0, 0)] + [(max(0, n - s) // 2, max(0, n - s) - max(0, n - s) // 2)
                       for s, n in zip(image.shape[1:], size, strict=True)]
    if any(a or b for a, b in pads):
        image = np.pad(image, pads, mode="reflect" if min(image.shape[1:]) > 1 else "edge")
    starts = [(s - n) // 2 for s, n in zip(image.shape[1:], size, strict=True)]
    box = tuple(slice(a, a + n) for a, n in zip(starts, size, strict=True))
    return np.ascontiguousarray(image[(slice(None), *box)], dtype=np.float32)


def make_sample(model: ClassProbabilities, config: Config, given: str | Path | None) -> Sample:
    """The test input and output (see the module doc)."""
    image, meta, source = find_sample(config, given)
    if image.shape[0] != model.in_channels or image.ndim - 1 != model.spatial_dims:
        raise DataError(f"{source}: a {image.ndim - 1}D image of {image.shape[0]} channel(s); the model "
                        f"takes {model.spatial_dims}D images of {model.in_channels}")
    image = on_model_grid(image, meta, config)
    side = MAX_SIDE if model.spatial_dims == 2 else MAX_SIDE // 4
    cap = tuple(min(side, int(t)) for t in (config.infer.tile or config.data.patch_size or [side] * 3))
    x = centre_crop(image, crop_size(model, tuple(image.shape[1:]), cap))
    with torch.no_grad():
        probs = model(torch.from_numpy(normalize(x, config.data))[None]).numpy()
    return Sample(x[None], probs.astype(np.float32), source)


def write_cover(path: Path, sample: Sample, config: Config) -> Path:
    """The test input beside its prediction (objects for an instance model, else classes): a 2:1 PNG."""
    probs = sample.output[0]
    crop = [(i - o) // 2 for i, o in zip(sample.image.shape[2:], probs.shape[1:], strict=True)]
    box = tuple(slice(c, c + o) for c, o in zip(crop, probs.shape[1:], strict=True))
    image = sample.image[0][(slice(None), *box)]
    objects = config.data.task == "instances"
    if objects:
        from unetseg.inference.instances import instances_of

        labels = instances_of(probs, config)
    else:
        labels = probs.argmax(0)
    save_overlay(path, image, labels, objects=objects, beside=True)
    return _enlarged(path)


def _enlarged(path: Path, height: int = 256) -> Path:
    """A small cover scaled up by a whole factor (nearest: pixels stay sharp) to about ``height`` rows."""
    from PIL import Image

    with Image.open(path) as picture:
        factor = height // picture.height
        if factor < 2:
            return path
        big = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    return atomic_write(path, lambda tmp: big.save(tmp, format="PNG"))
