"""napari readers for what unetseg writes: a prediction folder (labels, ``_probs`` and ``_uncertainty``
files), an OME-Zarr output (labels pyramid, probabilities, uncertainty) and an objects table
(``_objects.csv``: one point per object, its row as the point's features). Files are read through
:mod:`unetseg.io` (one reader per format), lazily for OME-Zarr.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.errors import DataError, UnetsegError
from unetseg.io.images import read_image, read_mask
from unetseg.io.readers import kind_of, open_lazy

LayerData = tuple[Any, dict[str, Any], str]
PROBS = "_probs"
MAPS = (PROBS, "_uncertainty")  # float maps beside the labels: image layers, one channel each
OBJECTS = "_objects.csv"


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari's reader hook: a reader for unetseg's outputs, None for anything else."""
    if isinstance(path, list):
        return None if len(path) != 1 else get_reader(path[0])
    p = Path(path)
    if p.name.endswith(OBJECTS) and p.is_file():
        return read_objects
    if p.suffix.lower() == ".zarr" or p.name.endswith(".ome.zarr"):
        return read_ngff
    if p.is_dir() and (p / ".unetseg-written").exists():
        return read_predictions
    return None


def _one(path: str | list[str]) -> Path:
    return Path(path[0] if isinstance(path, list) else path)


class _Plane:
    """A single-channel lazy level seen without its channel axis (what a Labels layer takes)."""

    def __init__(self, view: Any) -> None:
        self.view, self.shape, self.dtype = view, tuple(view.shape[1:]), view.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.view[(0, *(key if isinstance(key, tuple) else (key,)))])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self.view[:])[0]
        return out.astype(dtype) if dtype is not None else out


def read_ngff(path: str | list[str]) -> list[LayerData]:
    """An OME-Zarr output: the labels (every pyramid level) and, when written, the probabilities and the
    uncertainty map."""
    p = _one(path)
    labels = open_lazy(p)
    scale = labels.pixel_size() or None
    layers: list[LayerData] = [(
        [_Plane(v) for v in labels.levels] if len(labels.levels) > 1 else _Plane(labels.levels[0]),
        {"name": p.name.removesuffix(".zarr").removesuffix(".ome"), "multiscale": len(labels.levels) > 1,
         **({"scale": scale} if scale else {})},
        "labels",
    )]
    for group in ("probabilities", "uncertainty"):
        if (p / group).is_dir():
            maps = open_lazy(p / group)
            layers.append((maps.read(), {"name": f"{layers[0][1]['name']} {group}", "channel_axis": 0,
                                         "visible": False, **({"scale": scale} if scale else {})}, "image"))
    return layers


def read_predictions(path: str | list[str]) -> list[LayerData]:
    """A prediction folder: each labels file as a Labels layer, its ``_probs`` and ``_uncertainty`` files
    (if any) as Image layers with one channel per class / measure (hidden; switch them on to see where the
    model hesitates)."""
    p = _one(path)
    layers: list[LayerData] = []
    for f in sorted(p.iterdir()):
        if f.name.startswith(".") or f.name.endswith(OBJECTS) or not _image_file(f):
            continue
        stem = f.name.split(".")[0]
        if stem.endswith(MAPS):
            layers.append((read_image(f, group_channels=False)[0], {"name": stem, "channel_axis": 0,
                                                                     "visible": False}, "image"))
        else:
            layers.append((read_mask(f)[0], {"name": stem}, "labels"))
    if not layers:
        raise UnetsegError(f"{p}: no predictions in this folder")
    return layers


def read_objects(path: str | list[str]) -> list[LayerData]:
    """An objects table: one point per object at its centroid, the table's columns as point features."""
    p = _one(path)
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return [(np.zeros((0, 2)), {"name": p.stem}, "points")]
    axes = [a for a in ("z", "y", "x") if f"centroid_{a}" in rows[0]]
    if len(axes) < 2:
        raise UnetsegError(f"{p}: not an objects table (no centroid_y/centroid_x columns)")
    coords = np.array([[float(r[f"centroid_{a}"]) for a in axes] for r in rows])
    features = {k: np.array([_number(r[k]) for r in rows]) for k in rows[0]}
    return [(coords, {"name": p.stem, "features": features, "size": 4, "face_color": "yellow"}, "points")]


def _image_file(path: Path) -> bool:
    if path.is_dir():
        return False
    try:
        kind_of(path)
        return True
    except DataError:
        return False


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text
