"""Human-in-the-loop rounds, without a viewer: corrected images become a small dataset folder and a
fine-tune of the current model on it (plus any training folder the user names) becomes a new run folder.

Every round lives in its own folder under the user's rounds folder (``round_001``, ``round_002``, ...), never
over an earlier one: ``data/`` (the corrected cases, and links or copies of the extra training pairs) and
``run/`` (the fine-tuned model). The napari widget (:mod:`unetseg.viewer.widget`) drives these in a worker
thread; a notebook can call them as they are.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.checkpoint import TORCHSCRIPT_SUFFIXES
from unetseg.data.cases import find_cases
from unetseg.errors import ConfigError
from unetseg.inference.segmenter import Segmenter
from unetseg.io.images import write_image, write_mask
from unetseg.training.api import TrainedRun, train
from unetseg.training.interrupt import Termination

ROUND = re.compile(r"^round_(\d{3,})$")
MIN_VALIDATION = 4  # below this many images every corrected image trains (no validation split)


@dataclass(frozen=True)
class Correction:
    """One corrected image: its name, the image as the viewer holds it and the corrected labels (class
    indices of the model, or object ids of an instance model)."""

    name: str
    image: np.ndarray
    labels: np.ndarray


def next_round(folder: str | Path) -> Path:
    """The next free ``round_NNN`` under ``folder`` (made here, so two rounds can never share one)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in root.iterdir() if (m := ROUND.match(p.name))]
    n = max(taken, default=0) + 1
    while True:
        path = root / f"round_{n:03d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def channels_first(image: np.ndarray, seg: Segmenter) -> np.ndarray:
    """A viewer's image as the model takes it: napari holds RGB as ``(*spatial, 3)``."""
    arr = np.asarray(image)
    if arr.ndim == seg.spatial_dims + 1 and arr.shape[-1] == seg.channels and arr.shape[0] != seg.channels:
        return np.moveaxis(arr, -1, 0)
    return arr


def write_corrections(data: Path, corrections: Sequence[Correction], seg: Segmenter) -> None:
    """The corrected cases as a dataset folder (``images/`` + ``masks/``, TIFF): masks hold the model's
    own class values (so the class map stays the source's), object ids for an instance model."""
    values = [c[0] if isinstance(c, list) else c for c in seg.classes]
    for corr in corrections:
        image = channels_first(corr.image, seg)
        labels = np.asarray(corr.labels)
        if labels.shape != image.shape[-seg.spatial_dims:]:
            raise ConfigError(f"{corr.name}: labels {labels.shape} do not match the image "
                              f"{image.shape[-seg.spatial_dims:]}")
        if seg.task == "semantic":
            if labels.min() < 0 or labels.max() >= len(values):
                raise ConfigError(f"{corr.name}: labels hold {int(labels.max())}, the model has "
                                  f"{len(values)} classes (0..{len(values) - 1})")
            labels = np.asarray(values, dtype=np.int64)[labels]
        meta = {"spatial_dims": seg.spatial_dims}
        write_image(data / "images" / f"{corr.name}.tif", image, meta)
        write_mask(data / "masks" / f"{corr.name}.tif", labels.astype(np.uint16 if labels.max() > 255
                                                                      else np.uint8), meta)


def add_training_folder(data: Path, folder: str | Path) -> int:
    """The pairs of a training folder beside the corrections (hard links when the file system allows, else
    copies: the user's files are only read). Returns how many."""
    cases = find_cases(folder)
    for case in cases:
        if len(case.image_paths) != 1 or case.mask_path is None:
            raise ConfigError(f"{folder}: one image file per case is needed to add it to a round")
        for src, sub in ((case.image_paths[0], "images"), (case.mask_path, "masks")):
            dst = data / sub / f"extra_{src.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    return len(cases)


def fine_tune_round(seg: Segmenter, corrections: Sequence[Correction], rounds: str | Path, *,
                    minutes: float, training: str | Path | None = None,
                    cancel: Termination | None = None) -> TrainedRun:
    """One round: the corrections (and ``training``'s pairs) into a new ``round_NNN/data``, the current
    model fine-tuned on them for ``minutes`` into ``round_NNN/run``."""
    if not corrections:
        raise ConfigError("no corrected images: paint the labels, then fine-tune")
    # a bioimage.io .zip of a unetseg architecture can be fine-tuned; an ONNX or TorchScript file cannot
    if seg.source.suffix.lower() in (".onnx", *TORCHSCRIPT_SUFFIXES):
        raise ConfigError(f"{seg.source}: an exported model cannot be fine-tuned; load its run folder")
    folder = next_round(rounds)
    data = folder / "data"
    write_corrections(data, corrections, seg)
    extra = add_training_folder(data, training) if training else 0
    n = len(corrections) + extra
    options: dict[str, Any] = {"task": seg.task, "val_fraction": 0.2 if n >= MIN_VALIDATION else 0.0}
    if seg.task == "semantic":
        options["classes"] = list(seg.classes)
    else:
        options["data.instance_target"] = seg.config.data.instance_target
    return train(data=data, out=folder / "run", init_from=seg.source, max_minutes=minutes, quiet=True,
                 workers=0, cancel=cancel, **options)
