"""A pyramidal, tiled OME-TIFF written from a label image of any size (an OME-Zarr store written by
:class:`~unetseg.io.ngff.LabelZarrWriter`, or any array-like), tile by tile in flat memory, for
``predict --output-format ome-tiff``."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.errors import DataError
from unetseg.io.pyramid import pyramid_factors


class _TiffSource:
    """A label source for the OME-TIFF export: ``get(k, lead, ys, xs)`` reads one tile of level ``k``."""

    def __init__(self, source: Any, n_levels: int | None) -> None:
        self.image = None
        if isinstance(source, (str, Path)):
            from unetseg.io.lazy import open_lazy

            self.image = open_lazy(source)
            if self.image.channels != 1:
                self.close()
                raise DataError(f"{source}: {self.image.channels} channels; expected one label image")
            self.views = [_Channel0(v) for v in self.image.levels]
            self.pixel_size = self.image.pixel_size(0)
        else:
            self.views, self.pixel_size = [source], None
        self.shape = tuple(int(s) for s in self.views[0].shape)
        self.dtype = np.dtype(self.views[0].dtype)
        if len(self.shape) not in (2, 3):
            raise ValueError(f"labels must be (y, x) or (z, y, x), got shape {self.shape}")
        n = n_levels or len(pyramid_factors(self.shape[-2:])) + 1
        self.shapes = [(*self.shape[:-2], *(math.ceil(s / 2**k) for s in self.shape[-2:])) for k in range(n)]
        # A stored level of exactly the halved size is used as is (mode-downsampled by the writer);
        # otherwise level 0 is read with a stride (nearest neighbour, still one tile at a time).
        self.stored = [k < len(self.views) and tuple(self.views[k].shape) == sh
                       for k, sh in enumerate(self.shapes)]

    def get(self, k: int, lead: tuple[int, ...], ys: slice, xs: slice) -> np.ndarray:
        if self.stored[k]:
            return np.asarray(self.views[k][(*lead, ys, xs)])
        f = 2**k
        return np.asarray(self.views[0][(*lead, slice(ys.start * f, ys.stop * f, f),
                                          slice(xs.start * f, xs.stop * f, f))])

    def close(self) -> None:
        if self.image is not None:
            self.image.close()


class _Channel0:
    """A channel-first lazy level seen without its single channel."""

    def __init__(self, view: Any) -> None:
        self.view, self.shape, self.dtype = view, tuple(view.shape[1:]), view.dtype

    def __getitem__(self, key: tuple) -> np.ndarray:
        return self.view[(0, *key)]


def write_ome_tiff_from_zarr(source: Any, out_path: str | Path, pixel_size: Sequence[float] | None = None, *,
                             tile: int = 512, compression: str = "zlib", levels: int | None = None) -> Path:
    """Write a label image as a tiled pyramidal OME-TIFF (SubIFDs, deflate) without loading it.

    ``source`` is an OME-Zarr store path (its pyramid is reused where a level halves y and x exactly)
    or a zarr/numpy array ``(y, x)`` / ``(z, y, x)``. ``pixel_size`` (µm, spatial order) defaults to
    the store's. Levels halve y and x until the longest side is at most 1024 px (or ``levels``).
    Tiles are generated one at a time; the file is written as ``.<name>.tmp`` and renamed into place.
    """
    import tifffile

    out = Path(out_path)
    tmp = out.with_name(f".{out.name}.tmp")
    src = _TiffSource(source, levels)
    try:
        px = tuple(float(p) for p in (pixel_size or src.pixel_size or ()))
        axes = "ZYX" if len(src.shape) == 3 else "YX"
        meta: dict[str, Any] = {"axes": axes}
        if px:
            meta.update({f"PhysicalSize{a}": p for a, p in zip(axes, px, strict=True)})
            meta.update({f"PhysicalSize{a}Unit": "µm" for a in axes})
        big = math.prod(src.shape) * src.dtype.itemsize > 2**31  # BigTIFF only when offsets could overflow
        with tifffile.TiffWriter(tmp, bigtiff=big, ome=True) as tw:
            for k, shape in enumerate(src.shapes):
                kw: dict[str, Any] = {"shape": shape, "dtype": src.dtype, "tile": (tile, tile),
                                      "compression": compression, "photometric": "minisblack"}
                if px:
                    kw.update(resolution=(1e4 / (px[-1] * 2**k), 1e4 / (px[-2] * 2**k)),
                              resolutionunit="CENTIMETER")
                extra = {"subifds": len(src.shapes) - 1, "metadata": meta} if k == 0 else {"subfiletype": 1}
                tw.write(_tiles(src, k, tile), **kw, **extra)
        os.replace(tmp, out)
    finally:
        src.close()
        tmp.unlink(missing_ok=True)
    return out


def _tiles(src: _TiffSource, k: int, tile: int) -> Iterator[np.ndarray]:
    shape = src.shapes[k]
    for lead in np.ndindex(*shape[:-2]):
        for y in range(0, shape[-2], tile):
            for x in range(0, shape[-1], tile):
                ys, xs = slice(y, min(y + tile, shape[-2])), slice(x, min(x + tile, shape[-1]))
                yield np.ascontiguousarray(src.get(k, lead, ys, xs), dtype=src.dtype)
