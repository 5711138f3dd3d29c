"""Lazy readers for whole-slide images and volumes too big for memory: regions are decoded on demand.

:func:`open_lazy` opens OME-TIFF/BigTIFF (tiled or stripped, pyramidal or not) through tifffile's zarr
store, OME-Zarr (NGFF 0.4 / zarr v2 and 0.5 / zarr v3) through zarr, NIfTI through nibabel's array proxy
and small PNG/JPEG files in memory. Every level is a channel-first ``(C, *spatial)`` view (3D is
``(z, y, x)``, as in :mod:`unetseg.data.io`) that decodes only the chunks a slice touches.

Physical pixel sizes are in **micrometres**, in spatial order, or None when the file does not say.
They come from, in order of trust: OME-XML ``PhysicalSize*``; ImageJ ``unit`` + resolution (+ ``spacing``
for z); TIFF X/YResolution when ResolutionUnit is cm or inch (``1e4 / res`` or ``25400 / res``);
NGFF ``coordinateTransformations`` scale with the axes' units; NIfTI zooms (``xyzt_units``; an
unknown unit is taken as mm, the NIfTI convention). Resolution tags without a unit, PNG and JPEG give
None. Lower TIFF levels scale level 0 by the shape ratio (OME-XML describes level 0 only).
``meta["spacing"]`` keeps level 0's spacing in the units :func:`unetseg.data.io.read_image` reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetseg.data import formats
from unetseg.data.physical import tiff_pixel_size, um
from unetseg.data.tissue import mask_scale, region_has_tissue, tissue_mask
from unetseg.errors import DataError

__all__ = ["LazyImage", "choose_level", "header_nbytes", "mask_scale", "open_lazy", "region_has_tissue",
           "tissue_mask"]

class _View:
    """A stored array seen as channel-first ``(C, *spatial)``: slicing maps to the stored axis order.

    ``order[i]`` is the stored axis of view axis ``i`` (None: a channel axis the file lacks), ``fixed``
    pins singleton stored axes (time, ...), ``nchan`` hides trailing channels (alpha).
    """

    def __init__(self, src: Any, order: Sequence[int | None], fixed: dict[int, int] | None = None,
                 nchan: int | None = None) -> None:
        self.src, self.order, self.fixed = src, tuple(order), dict(fixed or {})
        stored_c = 1 if self.order[0] is None else int(src.shape[self.order[0]])
        self.shape = (nchan or stored_c, *(int(src.shape[o]) for o in self.order[1:]))
        self.dtype = np.dtype(src.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        slices, squeeze = [], []
        for i, (k, n) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 1:
                    raise IndexError("lazy images support positive steps only")
            else:
                start = int(k) + n if int(k) < 0 else int(k)
                stop, step = start + 1, 1
                squeeze.append(i)
            slices.append(slice(start, max(start, stop), step))
        stored: list[Any] = [slice(None)] * len(self.src.shape)
        for j, idx in self.fixed.items():
            stored[j] = idx
        for o, s in zip(self.order, slices, strict=True):
            if o is not None:
                stored[o] = s
        out = np.asarray(self.src[tuple(stored)])
        kept = [j for j in range(len(self.src.shape)) if j not in self.fixed]
        out = np.transpose(out, [kept.index(o) for o in self.order if o is not None])
        if self.order[0] is None:
            out = out[None][slices[0]]
        return out.squeeze(axis=tuple(squeeze)) if squeeze else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype)


@dataclass
class LazyImage:
    """A possibly huge image: pyramid ``levels`` of channel-first views, decoded region by region."""

    path: Path
    spatial_dims: int
    channels: int
    dtype: np.dtype
    levels: list[Any]
    pixel_sizes: list[tuple[float, ...] | None]
    meta: dict[str, Any] = field(default_factory=dict)
    closers: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    def shape(self, level: int = 0) -> tuple[int, ...]:
        """Spatial shape of ``level``."""
        return tuple(int(s) for s in self.levels[level].shape[1:])

    def pixel_size(self, level: int = 0) -> tuple[float, ...] | None:
        """Physical size (µm) of one pixel of ``level`` per spatial axis, or None when unknown."""
        return self.pixel_sizes[level]

    def level_scale(self, level: int) -> tuple[float, ...]:
        """Level-0 pixels per pixel of ``level``, per spatial axis."""
        return tuple(a / b for a, b in zip(self.shape(0), self.shape(level), strict=True))

    def read(self, region: tuple[slice, ...] | None = None, level: int = 0) -> np.ndarray:
        """Decode ``region`` (spatial slices of ``level``) to float32 ``(C, *region)``."""
        region = tuple(region or ())
        if len(region) > self.spatial_dims:
            raise IndexError(f"region has {len(region)} axes, the image has {self.spatial_dims}")
        try:
            return np.asarray(self.levels[level][(slice(None), *region)], dtype=np.float32)
        except (IndexError, MemoryError):
            raise
        except Exception as e:  # decoders raise anything on corrupt bytes; all of it is one user error
            raise DataError(f"{self.path}: cannot decode region {_fmt(region)} ({_reason(e)})") from None

    def close(self) -> None:
        """Release the open file handles."""
        while self.closers:
            self.closers.pop()()

    def __enter__(self) -> LazyImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(region: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start or 0}:{'' if s.stop is None else s.stop}" for s in region) + "]"


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split())[:160] or type(e).__name__


def _kind(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        if any((path / n).exists() for n in ("zarr.json", ".zattrs", ".zgroup")):
            return "zarr"
        raise DataError(f"{path}: folder is not an OME-Zarr store (no zarr.json or .zattrs)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or e})") from None
    if not head:
        raise DataError(f"{path}: empty file (0 bytes)")
    kind = formats.sniff(head)
    if kind == "gzip" and path.name.lower().endswith(".nii.gz"):
        return "nifti"
    if kind not in ("tiff", "png", "jpeg", "nifti"):
        raise DataError(f"{path}: not an image file this reader knows (unrecognised content)")
    return kind


def open_lazy(path: str | Path) -> LazyImage:
    """Open an image for region reads without decoding it. Raises DataError for bad files."""
    p = Path(path)
    kind = _kind(p)
    opener = {"tiff": _open_tiff, "zarr": _open_zarr, "nifti": _open_nifti, "png": _open_pillow,
              "jpeg": _open_pillow}[kind]
    try:
        return opener(p)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{p}: image too large to decode") from None
    except Exception as e:
        if type(e).__name__ == "DecompressionBombError":
            raise DataError(f"{p}: image too large to decode ({_reason(e)})") from None
        what = kind.upper()
        raise DataError(f"{p}: truncated or corrupt {what} file (cannot open: {_reason(e)})") from None


# ---------------------------------------------------------------------------------------------- TIFF
def _tiff_axes(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[list[int | None], dict, int | None]:
    chan = [i for i, a in enumerate(axes) if a in "CS" and shape[i] > 1] or \
        [i for i, a in enumerate(axes) if a in "CS"][:1]
    depth = [i for i, a in enumerate(axes) if a in "ZQI" and shape[i] > 1]
    fixed = {i: 0 for i, a in enumerate(axes) if i not in chan + depth and a not in "YX"}
    if len(chan) > 1 or len(depth) > 1 or any(shape[i] > 1 for i in fixed) or not {"Y", "X"} <= set(axes):
        raise DataError(f"{path}: unsupported TIFF layout (axes {axes!r}, shape {shape})")
    nchan = None
    if chan and axes[chan[0]] == "S" and shape[chan[0]] in (2, 4):
        nchan = shape[chan[0]] - 1  # grey+alpha or RGBA: alpha is dropped, as io.read_image does
    order = [chan[0] if chan else None, *depth, axes.index("Y"), axes.index("X")]
    return order, fixed, nchan


def _open_tiff(path: Path) -> LazyImage:
    import tifffile
    import zarr

    tif = tifffile.TiffFile(path)
    try:
        series = tif.series[0]
        axes, shape = series.axes, tuple(int(s) for s in series.shape)
        order, fixed, nchan = _tiff_axes(path, axes, shape)
        levels = []
        for i, lvl in enumerate(series.levels):
            arr = zarr.open(series.aszarr(level=i), mode="r")
            if tuple(arr.shape) != tuple(lvl.shape):
                raise DataError(f"{path}: pyramid level {i} has shape {arr.shape}, expected {lvl.shape}")
            levels.append(_View(arr, order, fixed, nchan))
        spatial_dims = len(order) - 1
        px0 = tiff_pixel_size(tif, spatial_dims)
    except BaseException:
        tif.close()
        raise
    image = LazyImage(path, spatial_dims, levels[0].shape[0], np.dtype(series.dtype), levels, [],
                      meta={"format": "tiff", "axes": axes, "bigtiff": tif.is_bigtiff,
                            "tiled": tif.pages.first.is_tiled}, closers=[tif.close])
    image.pixel_sizes = [_scaled(px0, image.level_scale(i)) for i in range(len(levels))]
    # meta["spacing"] as io.read_image reports it: 1 / resolution whatever the unit, ImageJ z spacing
    xres, yres = tif.pages.first.resolution
    yx = (1.0 / yres if yres else 1.0, 1.0 / xres if xres else 1.0)
    z = float((tif.imagej_metadata or {}).get("spacing", 1.0))
    image.meta["spacing"] = (z, *yx) if spatial_dims == 3 else yx
    return image


def _scaled(px: tuple[float, ...] | None, scale: tuple[float, ...]) -> tuple[float, ...] | None:
    return None if px is None else tuple(p * s for p, s in zip(px, scale, strict=True))


# ---------------------------------------------------------------------------------------------- OME-Zarr
def _open_zarr(path: Path) -> LazyImage:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)  # NGFF 0.5 keeps its metadata under "ome"
    if not ome.get("multiscales"):
        raise DataError(f"{path}: zarr store without NGFF multiscales metadata")
    ms = ome["multiscales"][0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", "tczyx")]
    names = [str(a.get("name", "")).lower() for a in axes]
    guess = {"z": "space", "y": "space", "x": "space", "c": "channel"}
    kinds = [a.get("type") or guess.get(n, "time") for a, n in zip(axes, names, strict=True)]
    space = [i for i, k in enumerate(kinds) if k == "space"]
    chan = [i for i, k in enumerate(kinds) if k == "channel"]
    if len(space) not in (2, 3) or len(chan) > 1:
        raise DataError(f"{path}: unsupported NGFF axes {names}")
    outer = _ngff_scale(ms.get("coordinateTransformations"), len(axes))
    levels, pixel_sizes = [], []
    for ds in ms["datasets"]:
        arr = group[ds["path"]]
        fixed = {i: 0 for i in range(len(axes)) if i not in space + chan}
        if len(arr.shape) != len(axes) or any(arr.shape[i] > 1 for i in fixed):
            raise DataError(f"{path}: dataset {ds['path']} has shape {arr.shape} for axes {names}")
        levels.append(_View(arr, [chan[0] if chan else None, *space], fixed))
        scale = [a * b for a, b in zip(_ngff_scale(ds.get("coordinateTransformations"), len(axes)), outer,
                                        strict=True)]
        sizes = [um(scale[i], axes[i].get("unit")) for i in space]
        pixel_sizes.append(tuple(sizes) if all(sizes) else None)
    image = LazyImage(path, len(space), levels[0].shape[0], levels[0].dtype, levels, pixel_sizes,
                      meta={"format": "ome-zarr", "ngff_version": ms.get("version") or ome.get("version"),
                            "axes": names, "image_label": "image-label" in ome})
    raw = _ngff_scale(ms["datasets"][0].get("coordinateTransformations"), len(axes))
    image.meta["spacing"] = tuple(float(raw[i] * outer[i]) for i in space)
    return image


def _ngff_scale(transforms: Any, ndim: int) -> list[float]:
    for t in transforms or []:
        if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            return [float(s) for s in t["scale"]]
    return [1.0] * ndim


# ---------------------------------------------------------------------------------------------- NIfTI
def _open_nifti(path: Path) -> LazyImage:
    import nibabel as nib

    img = nib.load(str(path))  # the data stays on disk: img.dataobj slices read only what they need
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2 or len(shape) > 4:
        raise DataError(f"{path}: unsupported NIfTI shape {shape}")
    spatial_dims = min(len(shape), 3)
    # (x, y, z[, c]) on disk -> (c, z, y, x), as io.read_nifti transposes
    order = [3 if len(shape) == 4 else None, *range(spatial_dims - 1, -1, -1)]
    view = _View(img.dataobj, order)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:spatial_dims])[::-1]
    unit = img.header.get_xyzt_units()[0]
    sizes = [um(z, "mm" if unit in (None, "unknown") else unit) for z in zooms]
    meta = {"format": "nifti", "spacing": zooms, "affine": np.asarray(img.affine, dtype=np.float64)}
    return LazyImage(path, spatial_dims, view.shape[0], np.dtype(img.get_data_dtype()), [view],
                     [tuple(sizes) if all(sizes) else None], meta=meta)


# ---------------------------------------------------------------------------------------------- Pillow
def _open_pillow(path: Path) -> LazyImage:
    arr, meta = formats.read_pillow(path, mask=False)  # small formats: decoded in memory, one level
    view = _View(arr, [0, 1, 2])
    return LazyImage(path, 2, arr.shape[0], arr.dtype, [view], [None], meta=meta)


def _pillow_header(path: Path) -> tuple[int, tuple[int, int]]:
    from PIL import JpegImagePlugin, PngImagePlugin

    # The plugin classes parse the header without Image.open's decompression-bomb check: the caller
    # wants the size of a bomb, not an exception.
    cls = PngImagePlugin.PngImageFile if _kind(path) == "png" else JpegImagePlugin.JpegImageFile
    with cls(str(path)) as im:
        bands = len(im.getbands())
        mode, (w, h) = im.mode, im.size
    channels = {"P": 3, "PA": 3, "LA": 1, "La": 1, "RGBA": 3, "RGBa": 3, "CMYK": 3, "1": 1}.get(mode, bands)
    return channels, (h, w)


def header_nbytes(path: str | Path) -> int:
    """Bytes the full-resolution image would take decoded as float32 ``(C, *spatial)``, from the header
    only (nothing is decoded). Raises DataError for unreadable files."""
    p = Path(path)
    if _kind(p) in ("png", "jpeg"):
        try:
            channels, shape = _pillow_header(p)
        except Exception as e:
            raise DataError(f"{p}: truncated or corrupt image header ({_reason(e)})") from None
    else:
        with open_lazy(p) as image:
            channels, shape = image.channels, image.shape(0)
    return 4 * channels * math.prod(shape)


# ---------------------------------------------------------------------------------------------- levels
def choose_level(image: LazyImage, target_pixel_size: float | Sequence[float] | None,
                 tolerance: float = 0.1) -> int:
    """The pyramid level whose pixel size best matches ``target_pixel_size`` (µm).

    Rule: score = mean over the compared axes of ``|log(level size / target)|``; the lowest score wins,
    and any level within ``log(1 + tolerance)`` of it is preferred if finer (downsampling a finer level
    keeps detail that upsampling a coarser one would have to invent). A scalar target is compared
    with the in-plane (y, x) sizes; a sequence with the last ``len(target)`` axes. Level 0 when the
    target or the image's pixel sizes are unknown.
    """
    if target_pixel_size is None:
        return 0
    target = np.atleast_1d(np.asarray(target_pixel_size, dtype=np.float64))
    scores = []
    for lvl in range(len(image.levels)):
        px = image.pixel_size(lvl)
        if px is None or np.any(target <= 0):
            return 0
        ref = np.asarray(px[-2:] if target.size == 1 else px[-target.size:], dtype=np.float64)
        scores.append(float(np.mean(np.abs(np.log(ref / target)))))
    best = min(scores)
    return next(i for i, s in enumerate(scores) if s <= best + math.log1p(tolerance))
