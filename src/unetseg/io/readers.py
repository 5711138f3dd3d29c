"""One reader per format (nnU-Net's ``imageio``: a class per format behind a base class and a registry),
each able to **open** a file lazily (pyramid levels of channel-first views that decode only the regions a
slice touches) and to **read** it whole (what training and in-memory prediction use). Both go through the
same axis rule, so a file is the same array, spacing and channels whichever way it is read.

* TIFF / OME-TIFF / BigTIFF (tifffile; levels through its zarr store when opened lazily): axes from the
  file's metadata (ImageJ, OME or tifffile's own): ``C``/``S`` are channels, ``Z`` depth; a leading axis
  without a name (``Q``/``I``: a plain multi-page TIFF) is depth (``meta["planes_unlabelled"]``: the dataset
  loader turns it into channels when the mask is 2D of the same size); singleton axes carry nothing and are
  dropped; an alpha sample (grey+alpha, RGBA) is dropped.
* NIfTI (nibabel; its array proxy when lazy): ``(x, y, z[, c])`` on disk is ``(c, z, y, x)`` in memory, and
  the spacing follows (the SimpleITK / nnU-Net order); the affine is kept for writing.
* PNG / JPEG (Pillow): small, decoded in memory (a palette mask keeps its indices, an image its colours).
* OME-Zarr (NGFF 0.4 / zarr v2 and 0.5 / zarr v3): lazily only (a folder by nature).

Physical pixel sizes are in **micrometres**, in spatial order, or None when the file does not say.
They come from, in order of trust: OME-XML ``PhysicalSize*``; ImageJ ``unit`` + resolution (+ ``spacing``
for z); TIFF X/YResolution when ResolutionUnit is cm or inch (``1e4 / res`` or ``25400 / res``);
NGFF ``coordinateTransformations`` scale with the axes' units; NIfTI zooms (``xyzt_units``; an
unknown unit is taken as mm, the NIfTI convention). Resolution tags without a unit, PNG and JPEG give
None. Lower TIFF levels scale level 0 by the shape ratio (OME-XML describes level 0 only).
``meta["spacing"]`` is level 0's spacing in the file's own units (1 / resolution for TIFF, NIfTI zooms).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from unetseg.errors import DataError, TooLargeError
from unetseg.io import formats
from unetseg.io.physical import tiff_pixel_size, um

EAGER_KEYS = ("spacing", "format", "affine", "raw_dtype", "planes_unlabelled")  # what a whole read reports


class RegionSource(Protocol):
    """What streamed prediction reads: an image by region (a :class:`LazyImage`, or a view of one that
    adapts its channels or resamples it)."""

    path: Any
    channels: int

    def shape(self, level: int = 0) -> tuple[int, ...]: ...

    def read(self, region: tuple[slice, ...] | None = None, level: int = 0) -> np.ndarray: ...


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
        return np.asarray(self.read_stored(region, level), dtype=np.float32)

    def read_stored(self, region: tuple[slice, ...] | None = None, level: int = 0) -> np.ndarray:
        """Decode ``region`` in the stored pixel type ``(C, *region)``."""
        region = tuple(region or ())
        if len(region) > self.spatial_dims:
            raise IndexError(f"region has {len(region)} axes, the image has {self.spatial_dims}")
        try:
            return np.asarray(self.levels[level][(slice(None), *region)])
        except (IndexError, MemoryError):
            raise
        except Exception as e:  # decoders raise anything on corrupt bytes; all of it is one user error
            raise DataError(f"{self.path}: cannot decode region {_fmt(region)} ({_reason(e)})") from None

    def eager_meta(self) -> dict[str, Any]:
        """The metadata of a whole read: spacing, spatial dims, format (+ NIfTI affine, TIFF planes, a 2D
        image's pixel size in µm when known)."""
        meta = {k: self.meta[k] for k in EAGER_KEYS if k in self.meta}
        meta["spatial_dims"] = self.spatial_dims
        if self.spatial_dims == 2 and self.pixel_sizes[0] is not None:
            meta["pixel_size"] = self.pixel_sizes[0]
        return meta

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


class Reader:
    """One file format: :meth:`open` lazily, :meth:`read` whole (open + every pixel of level 0, in the
    stored pixel type, after a header check of the decoded size; ``data``: the file's bytes held in memory,
    an upload, which ``path`` then only names). Raise what the decoder raises; the callers
    (:func:`open_lazy`, :func:`unetseg.io.images.read_image`, :func:`unetseg.io.images.decode_image`) turn it
    into one line."""

    name = ""

    def open(self, path: Path, *, mask: bool = False) -> LazyImage:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, path: Path, *, mask: bool = False, max_bytes: float | None = None,
             data: bytes | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if data is not None:
            raise DataError(f"{path}: {self.name} images are read from files only")
        with self.open(path, mask=mask) as image:
            formats.check_budget((image.channels, *image.shape(0)), max_bytes)
            return image.read_stored(), image.eager_meta()


# ---------------------------------------------------------------------------------------------- TIFF
def _tiff_axes(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[list[int | None], dict, int | None]:
    """The one TIFF axis rule: ``(order, fixed, nchan)`` of a :class:`_View` (channels first, then depth,
    y, x; singleton axes pinned; alpha hidden)."""
    chan = [i for i, a in enumerate(axes) if a in "CS" and shape[i] > 1] or \
        [i for i, a in enumerate(axes) if a in "CS"][:1]
    depth = [i for i, a in enumerate(axes) if a in "ZQI" and shape[i] > 1]
    fixed = {i: 0 for i, a in enumerate(axes) if i not in chan + depth and a not in "YX"}
    if len(chan) > 1 or len(depth) > 1 or any(shape[i] > 1 for i in fixed) or not {"Y", "X"} <= set(axes):
        raise DataError(f"{path}: unsupported TIFF layout (axes {axes!r}, shape {shape})")
    nchan = None
    if chan and axes[chan[0]] == "S" and shape[chan[0]] in (2, 4):
        nchan = shape[chan[0]] - 1  # grey+alpha or RGBA: alpha is dropped
    order = [chan[0] if chan else None, *depth, axes.index("Y"), axes.index("X")]
    return order, fixed, nchan


class TiffReader(Reader):
    name = "TIFF"

    def open(self, path: Path, *, mask: bool = False) -> LazyImage:
        import tifffile
        import zarr

        tif = tifffile.TiffFile(path)
        try:
            series = tif.series[0]
            axes, shape = series.axes, tuple(int(s) for s in series.shape)
            order, fixed, nchan = _tiff_axes(path, axes, shape)
            levels = []
            for i, lvl in enumerate(series.levels):
                arr: Any = zarr.open(series.aszarr(level=i), mode="r")
                if tuple(arr.shape) != tuple(lvl.shape):
                    raise DataError(f"{path}: pyramid level {i} has shape {arr.shape}, expected {lvl.shape}")
                levels.append(_View(arr, order, fixed, nchan))
            image = self._image(path, tif, series, order, levels)
        except BaseException:
            tif.close()
            raise
        image.closers.append(tif.close)
        return image

    def read(self, path: Path, *, mask: bool = False, max_bytes: float | None = None,
             data: bytes | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        import tifffile

        # whole files decode faster through tifffile than through its zarr store; the axis rule is the same
        with tifffile.TiffFile(path if data is None else io.BytesIO(data)) as tif:
            series = tif.series[0]
            axes, shape = series.axes, tuple(int(s) for s in series.shape)
            order, fixed, nchan = _tiff_axes(path, axes, shape)
            formats.check_budget(shape, max_bytes)
            view = _View(series.asarray(), order, fixed, nchan)
            image = self._image(path, tif, series, order, [view])
        return view[()], image.eager_meta()

    @staticmethod
    def _image(path: Path, tif: Any, series: Any, order: list[int | None], levels: list[_View]) -> LazyImage:
        spatial_dims = len(order) - 1
        depth_axis = series.axes[order[1]] if spatial_dims == 3 and order[1] is not None else ""
        image = LazyImage(path, spatial_dims, levels[0].shape[0], np.dtype(series.dtype), levels, [],
                          meta={"format": "tiff", "axes": series.axes, "bigtiff": tif.is_bigtiff,
                                "tiled": tif.pages.first.is_tiled})
        px0 = tiff_pixel_size(tif, spatial_dims)
        image.pixel_sizes = [_scaled(px0, image.level_scale(i)) for i in range(len(levels))]
        # 1 / resolution whatever the unit (the tags' exact ratio), and ImageJ's z spacing
        yx = _tiff_resolution(tif.pages.first)
        z = float((tif.imagej_metadata or {}).get("spacing", 1.0))
        image.meta["spacing"] = (z, *yx) if spatial_dims == 3 else yx
        if depth_axis in ("Q", "I"):
            image.meta["planes_unlabelled"] = True
        return image


def _tiff_resolution(page: Any) -> tuple[float, float]:
    out = []
    for tag in ("YResolution", "XResolution"):
        t = page.tags.get(tag)
        try:
            num, den = t.value
            out.append(float(den) / float(num) if num else 1.0)
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            out.append(1.0)
    return out[0], out[1]


def _scaled(px: tuple[float, ...] | None, scale: tuple[float, ...]) -> tuple[float, ...] | None:
    return None if px is None else tuple(p * s for p, s in zip(px, scale, strict=True))


# ---------------------------------------------------------------------------------------------- NIfTI
class NiftiReader(Reader):
    name = "NIfTI"

    def open(self, path: Path, *, mask: bool = False) -> LazyImage:
        import nibabel as nib

        img: Any = nib.load(str(path))  # the data stays on disk: img.dataobj slices read only what they need
        return self._image(path, img, img.dataobj)

    def read(self, path: Path, *, mask: bool = False, max_bytes: float | None = None,
             data: bytes | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        import nibabel as nib

        img: Any = nib.load(str(path)) if data is None else _nifti_from_bytes(data)
        formats.check_budget(tuple(int(s) for s in img.shape), max_bytes)
        image = self._image(path, img, np.asanyarray(img.dataobj))
        return image.levels[0][()], image.eager_meta()

    @staticmethod
    def _image(path: Path, img: Any, data: Any) -> LazyImage:
        shape = tuple(int(s) for s in img.shape)
        if len(shape) < 2 or len(shape) > 4:
            raise DataError(f"{path}: unsupported NIfTI shape {shape}")
        spatial_dims = min(len(shape), 3)
        # (x, y, z[, c]) on disk -> (c, z, y, x)
        view = _View(data, [3 if len(shape) == 4 else None, *range(spatial_dims - 1, -1, -1)])
        zooms = tuple(float(z) for z in img.header.get_zooms()[:spatial_dims])[::-1]
        unit = img.header.get_xyzt_units()[0]
        sizes = [um(z, "mm" if unit in (None, "unknown") else unit) for z in zooms]
        known = [x for x in sizes if x]
        meta = {"format": "nifti", "spacing": zooms, "affine": np.asarray(img.affine, dtype=np.float64),
                "raw_dtype": str(np.dtype(img.get_data_dtype()))}
        return LazyImage(path, spatial_dims, view.shape[0], np.dtype(img.get_data_dtype()), [view],
                         [tuple(known) if len(known) == len(sizes) else None], meta=meta)


def _nifti_from_bytes(data: bytes) -> Any:
    """A NIfTI-1 or -2 image (gzipped or not) from its bytes; the voxels stay undecoded until read, so the
    budget is checked on the header first."""
    import gzip

    import nibabel as nib

    stream: Any = io.BytesIO(data)
    if formats.sniff(data[:16]) == "gzip":
        stream = gzip.GzipFile(fileobj=stream)
    head = stream.read(4)
    stream.seek(0)
    nifti2 = 540 in (int.from_bytes(head, "little"), int.from_bytes(head, "big"))
    return (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_stream(stream)


# ---------------------------------------------------------------------------------------------- Pillow
class PillowReader(Reader):
    """PNG and JPEG: decoded in memory whichever way (they are small); the budget is checked on the
    header before decoding."""

    def __init__(self, name: str) -> None:
        self.name = name

    def open(self, path: Path, *, mask: bool = False) -> LazyImage:
        arr, meta = formats.read_pillow(path, mask=mask)
        return LazyImage(path, 2, arr.shape[0], arr.dtype, [_View(arr, [0, 1, 2])], [None], meta=meta)

    def read(self, path: Path, *, mask: bool = False, max_bytes: float | None = None,
             data: bytes | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        return formats.read_pillow(path if data is None else io.BytesIO(data), mask=mask, max_bytes=max_bytes)


# ---------------------------------------------------------------------------------------------- OME-Zarr
class ZarrReader(Reader):
    name = "OME-Zarr"

    def open(self, path: Path, *, mask: bool = False) -> LazyImage:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        attrs: dict[str, Any] = dict(group.attrs.asdict())
        ome: dict[str, Any] = attrs.get("ome", attrs)  # NGFF 0.5 keeps its metadata under "ome"
        if not ome.get("multiscales"):
            raise DataError(f"{path}: zarr store without NGFF multiscales metadata")
        ms: dict[str, Any] = ome["multiscales"][0]
        axes = [a if isinstance(a, dict) else {"name": a} for a in ms.get("axes", "tczyx")]
        names = [str(a.get("name", "")).lower() for a in axes]
        guess = {"z": "space", "y": "space", "x": "space", "c": "channel"}
        kinds = [a.get("type") or guess.get(n, "time") for a, n in zip(axes, names, strict=True)]
        space = [i for i, k in enumerate(kinds) if k == "space"]
        chan = [i for i, k in enumerate(kinds) if k == "channel"]
        if len(space) not in (2, 3) or len(chan) > 1:
            raise DataError(f"{path}: unsupported NGFF axes {names}")
        outer = _ngff_scale(ms.get("coordinateTransformations"), len(axes))
        levels: list[_View] = []
        pixel_sizes: list[tuple[float, ...] | None] = []
        for ds in ms["datasets"]:
            arr: Any = group[ds["path"]]
            fixed = {i: 0 for i in range(len(axes)) if i not in space + chan}
            if len(arr.shape) != len(axes) or any(arr.shape[i] > 1 for i in fixed):
                raise DataError(f"{path}: dataset {ds['path']} has shape {arr.shape} for axes {names}")
            levels.append(_View(arr, [chan[0] if chan else None, *space], fixed))
            scale = [a * b for a, b in zip(_ngff_scale(ds.get("coordinateTransformations"), len(axes)), outer,
                                            strict=True)]
            sizes = [um(scale[i], axes[i].get("unit")) for i in space]
            known = [x for x in sizes if x]
            pixel_sizes.append(tuple(known) if len(known) == len(sizes) else None)
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


READERS: dict[str, Reader] = {  # the format a file's content names -> its reader
    "tiff": TiffReader(), "nifti": NiftiReader(), "png": PillowReader("PNG"), "jpeg": PillowReader("JPEG"),
    "zarr": ZarrReader(),
}


def kind_of(path: Path) -> str:
    """The format of ``path`` from its content (``tiff``, ``nifti``, ``png``, ``jpeg``; a folder: ``zarr``).
    Raises DataError for a missing, empty or unknown file."""
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
    if kind not in READERS:
        raise DataError(f"{path}: not an image file this reader knows (unrecognised content)")
    return str(kind)


def open_lazy(path: str | Path) -> LazyImage:
    """Open an image for region reads without decoding it. Raises DataError for bad files."""
    p = Path(path)
    kind = kind_of(p)
    try:
        return READERS[kind].open(p)
    except DataError:
        raise
    except MemoryError:
        raise TooLargeError(f"{p}: image too large to decode") from None
    except Exception as e:
        if type(e).__name__ == "DecompressionBombError":
            raise TooLargeError(f"{p}: image too large to decode ({_reason(e)})") from None
        what = f"truncated or corrupt {kind.upper()} file"
        raise DataError(f"{p}: {what} (cannot open: {_reason(e)})") from None


def _pillow_header(path: Path, kind: str) -> tuple[int, tuple[int, int]]:
    from PIL import JpegImagePlugin, PngImagePlugin

    # The plugin classes parse the header without Image.open's decompression-bomb check: the caller
    # wants the size of a bomb, not an exception.
    cls = PngImagePlugin.PngImageFile if kind == "png" else JpegImagePlugin.JpegImageFile
    with cls(str(path)) as im:
        bands = len(im.getbands())
        mode, (w, h) = im.mode, im.size
    channels = {"P": 3, "PA": 3, "LA": 1, "La": 1, "RGBA": 3, "RGBa": 3, "CMYK": 3, "1": 1}.get(mode, bands)
    return channels, (h, w)


def header_nbytes(path: str | Path) -> int:
    """Bytes the full-resolution image would take decoded as float32 ``(C, *spatial)``, from the header
    only (nothing is decoded). Raises DataError for unreadable files."""
    p = Path(path)
    kind = kind_of(p)
    shape: tuple[int, ...]
    if kind in ("png", "jpeg"):
        try:
            channels, shape = _pillow_header(p, kind)
        except Exception as e:
            raise DataError(f"{p}: truncated or corrupt image header ({_reason(e)})") from None
    else:
        with open_lazy(p) as image:
            channels, shape = image.channels, image.shape(0)
    return 4 * channels * math.prod(shape)
