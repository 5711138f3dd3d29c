"""The byte level of each format: content sniffing, the decoded-size budget, Pillow's decoding and the
writers (Pillow, tifffile, nibabel). Reading TIFF, NIfTI and OME-Zarr, with the one axis rule of each, is
:mod:`unetseg.io.readers`; :mod:`unetseg.io.images` adds the checks and the one-line
:class:`~unetseg.errors.DataError` messages.

Axis conventions: 2D rasters are ``(H, W)``, colour first as channels (RGB -> C=3; alpha dropped); 3D
arrays are ``(z, y, x)``; NIfTI stores ``(x, y, z)`` and is transposed on reading and back on writing, so
TIFF stacks and NIfTI volumes share one order (the SimpleITK / nnU-Net order).
"""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np

GIB = 2**30


class TooLarge(ValueError):
    """A header declares an image whose decoded float32 array is over the byte budget."""

_SIGNATURES = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "gzip": (b"\x1f\x8b",),
}


def sniff(head: bytes) -> str | None:
    """The format a file's first bytes name (``png``, ``jpeg``, ``tiff``, ``gzip``, ``nifti``), or None."""
    for name, sigs in _SIGNATURES.items():
        if any(head.startswith(s) for s in sigs):
            return name
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):
        return "nifti"
    if len(head) >= 4 and int.from_bytes(head[:4], "big") in (348, 540):
        return "nifti"
    return None


def check_budget(shape: tuple[int, ...], max_bytes: float | None) -> None:
    """Refuse, from the header alone and before any decoding, an image whose float32 array would exceed
    ``max_bytes`` (decompression bombs: a 2 MB zlib TIFF may declare 46000x46000)."""
    if any(int(s) <= 0 for s in shape):
        raise ValueError(f"implausible image size {tuple(shape)}")
    need = float(np.prod(shape, dtype=np.float64)) * 4
    if max_bytes is not None and need > max_bytes:
        size = "x".join(str(int(s)) for s in shape)
        raise TooLarge(f"declares {size} pixels, {need / GIB:.1f} GiB as float32, over the "
                       f"{max_bytes / GIB:g} GiB limit (data.max_image_gib / --max-image-gib raises it)")


# ---------------------------------------------------------------------------------------------- Pillow
def _pil_array(im: Any, *, mask: bool) -> np.ndarray:
    """Decode a Pillow image to ``(C, H, W)``; palette masks keep their indices, images get colours."""
    mode = im.mode
    if mask and mode in ("P", "PA"):
        arr = np.asarray(im.getchannel(0) if mode == "PA" else im)
    elif mode in ("P", "PA"):
        rgb = im.convert("RGB")
        arr = np.asarray(rgb)
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            arr = arr[..., 0]  # a grey palette is a grey image
    elif mode in ("LA", "La", "RGBA", "RGBa"):
        arr = np.asarray(im)[..., :-1]  # drop alpha
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        arr = np.asarray(im.convert("RGB"))
    elif mode == "1":
        arr = np.asarray(im).astype(np.uint8)
    else:  # L, I, I;16*, F, RGB
        arr = np.asarray(im)
    arr = np.asarray(arr)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def read_pillow(path: Path | IO[bytes], *, mask: bool, max_bytes: float | None = None
                ) -> tuple[np.ndarray, dict]:
    """Read a PNG/JPEG (or anything Pillow opens; a file or its bytes in a stream) to ``(C, H, W)``."""
    from PIL import Image

    with warnings.catch_warnings():
        # Pillow still refuses images over twice its pixel limit (DecompressionBombError).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            check_budget((len(im.getbands()), im.height, im.width), max_bytes)
            im.load()
            arr = _pil_array(im, mask=mask)
            fmt = (im.format or "").lower()
    return arr, {"spacing": (1.0, 1.0), "spatial_dims": 2, "format": fmt or "png"}


def write_pillow(path: Path, array: np.ndarray, *, stream: IO[bytes] | None = None) -> None:
    """Write ``(H, W)`` grey (uint8/uint16) or ``(3, H, W)`` uint8 RGB with Pillow (PNG by extension), to
    ``path`` or, given ``stream``, into it (``path`` then only chooses the format)."""
    from PIL import Image

    arr = array[0] if array.ndim == 3 and array.shape[0] == 1 else array
    if arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)
    target = path if stream is None else stream
    Image.fromarray(np.ascontiguousarray(arr)).save(target, format=_pil_format(path))


def _pil_format(path: Path) -> str:
    return "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"


# ---------------------------------------------------------------------------------------------- TIFF
def write_tiff(path: Path, array: np.ndarray, *, spacing: tuple | None = None, channels: bool = False,
               stream: IO[bytes] | None = None) -> None:
    """Write ``(*spatial)`` (``channels=False``) or ``(C, *spatial)`` with axes metadata and spacing (to
    ``path`` or, given ``stream``, into it)."""
    import tifffile

    spatial = array.shape[1:] if channels else array.shape
    axes = ("C" if channels else "") + ("ZYX" if len(spatial) == 3 else "YX")
    sp = tuple(float(s) for s in (spacing or (1.0,) * len(spatial)))
    target = path if stream is None else stream
    if not channels and len(spatial) == 3 and array.dtype in (np.uint8, np.uint16, np.float32):
        # ImageJ's flavour keeps the z spacing where Fiji and napari find it.
        tifffile.imwrite(target, array, imagej=True, metadata={"axes": "ZYX", "spacing": sp[0]},
                         resolution=(1.0 / sp[-1], 1.0 / sp[-2]))
    else:
        # Unit NONE: the spacing is carried as a ratio; tifffile's default (inch) would claim a physical size.
        tifffile.imwrite(target, array, metadata={"axes": axes}, resolution=(1.0 / sp[-1], 1.0 / sp[-2]),
                         resolutionunit=1)


# ---------------------------------------------------------------------------------------------- NIfTI
def write_nifti(path: Path, array: np.ndarray, *, meta: dict | None = None, channels: bool = False,
                stream: IO[bytes] | None = None) -> None:
    """Write ``(z, y, x)`` (or ``(C, z, y, x)`` with ``channels``) as NIfTI ``(x, y, z[, C])`` with the
    affine of ``meta`` (or a diagonal of its spacing); given ``stream``, into it (gzipped when ``path``
    ends in ``.gz``)."""
    import nibabel as nib

    meta = meta or {}
    spatial_dims = array.ndim - int(channels)
    data = np.transpose(array, tuple(range(array.ndim - 1, -1, -1)))  # reversing all axes: both cases
    affine = meta.get("affine")
    if affine is None:
        sp = tuple(meta.get("spacing") or (1.0,) * spatial_dims)[::-1]
        affine = np.diag([*sp, *([1.0] * (4 - len(sp)))])
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm")
    if stream is None:
        nib.save(img, str(path))
        return
    raw = img.to_bytes()
    stream.write(gzip.compress(raw, compresslevel=1) if path.name.lower().endswith(".gz") else raw)
