"""Per-object measurements of an instance label image (2D or 3D), as columns ready for a CSV file."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.measure import regionprops_table

from unetseg.errors import DataError


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> np.ndarray | None:
    if spacing is None:
        return None
    values = np.asarray(spacing, np.float64)
    if values.shape != (ndim,) or not (np.isfinite(values).all() and (values > 0).all()):
        raise DataError(f"spacing must be {ndim} positive numbers (one per axis), got {spacing!r}")
    return values


def object_table(labels: np.ndarray, image: np.ndarray | None = None,
                 spacing: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """One row per object (ascending id), built on ``skimage.measure.regionprops_table``.

    Columns: ``id``; ``area`` (pixel/voxel count) and, with ``spacing``, ``area_physical`` (count times the
    pixel area/voxel volume); ``centroid_{axis}`` in pixel coordinates; ``bbox_{axis}_start`` and
    ``bbox_{axis}_stop`` (stop exclusive, so ``labels[start:stop]`` crops the object); with ``image`` of shape
    ``(C, *spatial)`` or ``(*spatial)``, ``mean_intensity_c{k}`` per channel. An image without objects gives
    the same columns with zero rows.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a 2D or 3D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise DataError("labels must not be negative")
    ndim = labels.ndim
    physical = _check_spacing(spacing, ndim)
    intensity = None
    if image is not None:
        image = np.asarray(image)
        if image.shape == labels.shape:
            image = image[None]
        if image.shape[1:] != labels.shape:
            raise DataError(f"image shape {image.shape} is not (C, *spatial) for labels {labels.shape}")
        intensity = np.moveaxis(image, 0, -1).astype(np.float64, copy=False)  # skimage wants channels last
    properties = ["label", "area", "centroid", "bbox"] + ([] if intensity is None else ["intensity_mean"])
    raw = regionprops_table(labels.astype(np.int64, copy=False), intensity_image=intensity,
                            properties=properties)
    table: dict[str, np.ndarray] = {"id": raw["label"].astype(np.int64), "area": raw["area"].astype(np.int64)}
    if physical is not None:
        table["area_physical"] = table["area"] * float(np.prod(physical))
    for axis in range(ndim):
        table[f"centroid_{axis}"] = raw[f"centroid-{axis}"].astype(np.float64)
    for axis in range(ndim):
        table[f"bbox_{axis}_start"] = raw[f"bbox-{axis}"].astype(np.int64)
        table[f"bbox_{axis}_stop"] = raw[f"bbox-{axis + ndim}"].astype(np.int64)
    if intensity is not None:
        for channel in range(intensity.shape[-1]):
            table[f"mean_intensity_c{channel}"] = raw[f"intensity_mean-{channel}"].astype(np.float64)
    return table


def _format_column(values: np.ndarray) -> list[str]:
    values = np.asarray(values)
    if values.dtype == bool or np.issubdtype(values.dtype, np.integer):
        return [str(v) for v in values.astype(np.int64).tolist()]
    return [f"{v:.6g}" for v in values.astype(np.float64).tolist()]


def table_to_csv_text(table: dict[str, np.ndarray]) -> str:
    """CSV text of a column table: header line, then one line per row; integer columns as integers, floats
    with 6 significant digits. Lines end with ``\\n``; the caller writes the file (atomically)."""
    lengths = {len(np.asarray(column)) for column in table.values()}
    if len(lengths) > 1:
        raise DataError(f"table columns have different lengths: {sorted(lengths)}")
    for name in table:
        if any(c in name for c in ',"\n'):
            raise DataError(f"column name {name!r} must not contain commas, quotes or newlines")
    columns = [_format_column(column) for column in table.values()]
    lines = [",".join(table), *(",".join(row) for row in zip(*columns, strict=True))]
    return "\n".join(lines) + "\n"


class ObjectAccumulator:
    """The columns of :func:`object_table` for a label image seen in pieces (slabs along the first axis of
    a whole slide), in memory proportional to the number of objects, not the image.

    ``add(ids, start, image)``: one piece of global ids at offset ``start`` (per axis) and its raw image
    ``(C, *piece)`` (or None). :meth:`table` gives the same columns and values as :func:`object_table` of
    the assembled image (means and centroids up to float summation order)."""

    def __init__(self, ndim: int, channels: int = 0, spacing: Sequence[float] | None = None) -> None:
        self.ndim, self.channels = int(ndim), int(channels)
        self.physical = _check_spacing(spacing, self.ndim)
        self.area = np.zeros(1, np.int64)
        self.coord = np.zeros((self.ndim, 1))
        self.low = np.full((self.ndim, 1), np.iinfo(np.int64).max, np.int64)
        self.high = np.zeros((self.ndim, 1), np.int64)
        self.intensity = np.zeros((self.channels, 1))

    def _grow(self, n: int) -> None:
        if n <= len(self.area):
            return
        extra = max(n, 2 * len(self.area)) - len(self.area)
        self.area = np.concatenate([self.area, np.zeros(extra, np.int64)])
        self.coord = np.concatenate([self.coord, np.zeros((self.ndim, extra))], axis=1)
        self.low = np.concatenate([self.low, np.full((self.ndim, extra), np.iinfo(np.int64).max)], axis=1)
        self.high = np.concatenate([self.high, np.zeros((self.ndim, extra), np.int64)], axis=1)
        self.intensity = np.concatenate([self.intensity, np.zeros((self.channels, extra))], axis=1)

    def add(self, ids: np.ndarray, start: Sequence[int], image: np.ndarray | None = None) -> None:
        ids = np.asarray(ids)
        where = np.nonzero(ids)
        if not where[0].size:
            return
        obj = ids[where].astype(np.int64)
        n = int(obj.max()) + 1
        self._grow(n)
        self.area[:n] += np.bincount(obj, minlength=n)
        for axis, (pos, offset) in enumerate(zip(where, start, strict=True)):
            pos = pos.astype(np.int64) + int(offset)
            self.coord[axis, :n] += np.bincount(obj, weights=pos, minlength=n)
            np.minimum.at(self.low[axis], obj, pos)
            np.maximum.at(self.high[axis], obj, pos + 1)
        if image is not None and self.channels:
            image = np.asarray(image).reshape(self.channels, *ids.shape)
            for c in range(self.channels):
                values = image[c][where].astype(np.float64)
                self.intensity[c, :n] += np.bincount(obj, weights=values, minlength=n)

    def table(self) -> dict[str, np.ndarray]:
        present = np.nonzero(self.area)[0]
        present = present[present > 0]
        area = self.area[present]
        table: dict[str, np.ndarray] = {"id": present.astype(np.int64), "area": area}
        if self.physical is not None:
            table["area_physical"] = area * float(np.prod(self.physical))
        for axis in range(self.ndim):
            table[f"centroid_{axis}"] = self.coord[axis, present] / area
        for axis in range(self.ndim):
            table[f"bbox_{axis}_start"] = self.low[axis, present]
            table[f"bbox_{axis}_stop"] = self.high[axis, present]
        for c in range(self.channels):
            table[f"mean_intensity_c{c}"] = self.intensity[c, present] / area
        return table
