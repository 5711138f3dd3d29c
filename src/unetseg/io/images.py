"""Reading and writing images and masks: PNG, JPEG, TIFF (2D, RGB, 3D stacks, float) and NIfTI.

Every problem with a file becomes one :class:`~unetseg.errors.DataError` line that starts with the path
(``data/images/cell_03.png: truncated or corrupt PNG file (cannot decode: image file is truncated)``);
decoders never take the process down, whatever bytes they are given.

Conventions:

* images are channel-first ``(C, *spatial)`` float32: grey -> C=1, RGB -> C=3 (alpha is dropped),
  nnU-Net ``NAME_0000``, ``NAME_0001``, ... files of one case -> C=k+1;
* masks are ``(*spatial)`` arrays of the stored integer values (palette PNGs keep their indices);
* 3D arrays are ``(z, y, x)`` for TIFF stacks and NIfTI alike; ``meta["spacing"]`` follows that order,
  ``meta["affine"]`` is the NIfTI affine (x, y, z order, as stored), used again when writing.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from unetseg.errors import DataError, TooLargeError
from unetseg.fileio import atomic_write
from unetseg.io import formats
from unetseg.io.readers import READERS

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".nii", ".nii.gz")
MASK_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".nii", ".nii.gz")
NNUNET_IMAGE_DIRS: tuple[str, ...] = ("imagesTr", "imagesTs", "imagesVal")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
DEFAULT_MAX_BYTES = 2.0 * formats.GIB  # data.max_image_gib's default
_FORMAT_NAMES = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI (gzip)",
}


def suffix_of(path: str | Path) -> str:
    """The lower-case extension, ``.nii.gz`` counted as one."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


_COMPOUND = (".ome.tiff", ".ome.tif", ".ome.zarr", ".nii.gz")


def _plain_stem(path: Path) -> str:
    """The name without its extension; ``slide.ome.tif`` -> ``slide`` (double OME extensions count as one)."""
    low = path.name.lower()
    cut = next((len(s) for s in _COMPOUND if low.endswith(s)), len(suffix_of(path)))
    return path.name[: len(path.name) - cut] if cut else path.name


def channel_index(path: str | Path) -> tuple[str, int] | None:
    """``(case, k)`` for an nnU-Net channel file ``imagesTr/CASE_000k.ext``, else None.

    Only files inside an nnU-Net images folder (imagesTr/imagesTs/imagesVal) count, so ordinary names
    that end in four digits (``scan_2019.png``) are left alone.
    """
    p = Path(path)
    if p.parent.name not in NNUNET_IMAGE_DIRS:
        return None
    m = _CHANNEL_RE.match(_plain_stem(p))
    return (m["case"], int(m["channel"])) if m else None


def stem_of(path: str | Path) -> str:
    """The case name of a file: ``a.nii.gz`` -> ``a``; ``imagesTs/a_0000.nii.gz`` -> ``a``."""
    ch = channel_index(path)
    return ch[0] if ch else _plain_stem(Path(path))


def channel_files(path: str | Path) -> list[Path]:
    """All channel files of the nnU-Net case ``path`` belongs to (``_0000``, ``_0001``, ... in order)."""
    p = Path(path)
    ch = channel_index(p)
    if ch is None:
        return [p]
    ext = p.name[len(_plain_stem(p)) :]
    files, k = [], 0
    while (f := p.with_name(f"{ch[0]}_{k:04d}{ext}")).exists():
        files.append(f)
        k += 1
    return files or [p]


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def list_images(folder_or_file: str | Path) -> list[Path]:
    """Supported image files of a folder (sorted; one path per case), or ``[file]`` for a single file.

    A folder without images but with ``images/`` (or nnU-Net ``imagesTs/``, ``imagesTr/``) is looked into.
    nnU-Net channel files are grouped: each case is listed once by its ``_0000`` file, and
    :func:`read_image` of that file reads all its channels. Raises DataError for a missing path, an
    unsupported file type or a folder without images.
    """
    p = Path(folder_or_file)
    if p.is_file():
        check_suffix(p, IMAGE_SUFFIXES)
        return [p]
    if p.is_dir() and p.name.lower().endswith(".zarr"):
        return [p]  # an OME-Zarr image (a folder by nature)
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder")
    stores = [f for f in p.iterdir() if f.is_dir() and f.name.lower().endswith(".zarr") and f.name[0] != "."]
    files = sorted([f for f in _visible_files(p) if suffix_of(f) in IMAGE_SUFFIXES] + stores)
    if not files:
        for sub in ("images", "imagesTs", "imagesTr"):
            if (p / sub).is_dir():
                return list_images(p / sub)
        raise DataError(f"{p}: no images found (supported: {', '.join(IMAGE_SUFFIXES)})")
    return [f for f in files if (channel_index(f) or ("", 0))[1] == 0]


def unsupported(path: Path, allowed: tuple[str, ...]) -> DataError:
    """The one error for a file whose extension is not among ``allowed``."""
    suffix = suffix_of(path)
    extra = "; JPEG is lossy, save masks as PNG or TIFF" if suffix in (".jpg", ".jpeg") else ""
    return DataError(
        f"{path}: unsupported file type {suffix or '(no extension)'} (supported: {', '.join(allowed)}){extra}"
    )


def check_suffix(path: Path, allowed: tuple[str, ...] = IMAGE_SUFFIXES) -> str:
    """Return the suffix of ``path`` or raise DataError when it is not one of ``allowed``."""
    suffix = suffix_of(path)
    if suffix not in allowed:
        raise unsupported(path, allowed)
    return suffix


def _file_kind(path: Path, mask: bool) -> tuple[str, str]:
    """``(reader, format name)`` of a file: its extension must be allowed and its content must match it."""
    suffix = check_suffix(path, MASK_SUFFIXES if mask else IMAGE_SUFFIXES)
    name = _FORMAT_NAMES[suffix]
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or e})") from None
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    kind = formats.sniff(head)
    nifti = suffix in (".nii", ".nii.gz")
    expected = ("gzip" if suffix == ".nii.gz" else "nifti") if nifti else None
    if (nifti and kind != expected) or (not nifti and kind not in ("png", "jpeg", "tiff")):
        raise DataError(f"{path}: not a {name} file (unrecognised content)")
    return ("nifti" if nifti else str(kind)), name


_CONTENT_NAMES = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "nifti": "NIfTI", "gzip": "NIfTI (gzip)"}


def _content_kind(name: Path, data: bytes) -> tuple[str, str]:
    """``(reader, format name)`` of a file's bytes, from the content alone (an upload has no trusted name)."""
    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    kind = formats.sniff(data[:16])
    if kind not in _CONTENT_NAMES:
        raise DataError(f"{name}: not a PNG, JPEG, TIFF or NIfTI image (unrecognised content)")
    return ("nifti" if kind == "gzip" else str(kind)), _CONTENT_NAMES[str(kind)]


def _decode(path: Path, *, mask: bool, max_bytes: float | None,
            data: bytes | None = None) -> tuple[np.ndarray, dict]:
    kind, name = _file_kind(path, mask) if data is None else _content_kind(path, data)
    reader = READERS[kind]  # the one reader of the format, read whole
    try:
        arr, meta = reader.read(path, mask=mask, max_bytes=max_bytes, data=data)
        arr = np.asarray(arr)
        stored = arr.dtype
        if stored.kind not in "biuf":
            raise DataError(f"{path}: unsupported pixel type {stored}")
        if not mask:  # inside the guard: the float32 copy is the big allocation
            arr = arr.astype(np.float32, copy=False)
    except DataError:
        raise
    except formats.TooLarge as e:
        raise TooLargeError(f"{path}: {e}") from None
    except MemoryError:
        raise TooLargeError(f"{path}: image too large to decode in memory") from None
    except Exception as e:  # decoders raise anything on corrupt bytes; all of it is one user error
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        if type(e).__name__ == "DecompressionBombError":
            raise TooLargeError(f"{path}: image too large to decode ({reason})") from None
        raise DataError(f"{path}: truncated or corrupt {name} file (cannot decode: {reason})") from None
    if stored.kind == "f" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: {bad} NaN/inf pixel value(s)")
    meta.update(path=str(path), dtype=str(stored), shape=tuple(int(s) for s in arr.shape[1:]))
    return arr, meta


def read_image(
    path: str | Path, *, group_channels: bool = True, max_bytes: float | None = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image as channel-first float32 ``(C, *spatial)`` and its metadata.

    Args:
        path: a PNG/JPEG/TIFF/NIfTI file. An nnU-Net ``_0000`` file reads all channels of its case
            unless ``group_channels`` is False.
        max_bytes: refuse, from the header and before decoding, files whose float32 array would be larger.
    Returns:
        ``(image, meta)``; ``meta`` has ``spacing`` (spatial order), ``spatial_dims``, ``dtype`` (the
        stored pixel type), ``shape`` (spatial), ``path``, ``format`` and for NIfTI ``affine``.
    Raises:
        DataError: missing, empty, truncated, corrupt, too large or unsupported file; NaN/inf pixels;
        channel files of different sizes.
    """
    p = Path(path)
    return read_channels(channel_files(p) if group_channels else [p], max_bytes=max_bytes)


def read_channels(paths: list[Path], *, max_bytes: float | None = DEFAULT_MAX_BYTES
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the files of one case (one per channel, or one holding them all) and stack their channels;
    DataError when their sizes differ. The metadata is the first file's."""
    arrays: list[np.ndarray] = []
    meta: dict[str, Any] = {}
    for f in paths:
        arr, m = _decode(f, mask=False, max_bytes=max_bytes)
        if arrays and arr.shape[1:] != arrays[0].shape[1:]:
            raise DataError(f"{f}: size {arr.shape[1:]} differs from {paths[0].name} {arrays[0].shape[1:]}")
        meta = meta or m
        arrays.append(arr)
    image = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    meta["channels"] = int(image.shape[0])
    return image, meta


def decode_image(data: bytes, name: str = "upload", *,
                 max_bytes: float | None = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`read_image` of a file's bytes held in memory (an HTTP upload): the format from the content
    alone (PNG, JPEG, TIFF, NIfTI, gzipped NIfTI), then the same reader, axis rule, size budget (checked on
    the header, before decoding: :class:`~unetseg.errors.TooLargeError`) and checks as a file. Messages
    start with ``name``."""
    image, meta = _decode(Path(name), mask=False, max_bytes=max_bytes, data=data)
    meta["channels"] = int(image.shape[0])
    return image, meta


def read_mask(
    path: str | Path, *, max_bytes: float | None = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a label image as ``(*spatial)`` with its stored values (integers; whole-number floats become
    integers). Raises DataError for corrupt files, colour masks with differing channels, NaN/inf and
    fractional values."""
    p = Path(path)
    arr, meta = _decode(p, mask=True, max_bytes=max_bytes)
    if arr.shape[0] > 1 and not all(np.array_equal(arr[0], arr[c]) for c in range(1, arr.shape[0])):
        raise DataError(f"{p}: mask has {arr.shape[0]} different channels; expected one label image")
    arr = arr[0]
    if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
        raise DataError(f"{p}: mask has fractional values; expected integer labels")
    if arr.dtype.kind in "fb":
        arr = _mask_array(arr)
    meta["dtype"] = str(arr.dtype)
    meta.pop("planes_unlabelled", None)
    return arr, meta


def _mask_array(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind in "biu" or np.array_equal(labels, np.round(labels)):
        lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
        if lo >= 0 and hi <= 255:
            return labels.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return labels.astype(np.uint16)
        return labels.astype(np.int32)
    return labels.astype(np.float32)


def write_mask(path: str | Path, labels: np.ndarray, meta: dict[str, Any] | None = None) -> Path:
    """Write a label image: PNG for 2D, ``.nii``/``.nii.gz``/``.tif`` for 2D or 3D, chosen by extension.

    Values 0..255 are written as uint8 (uint16 above). NIfTI keeps ``meta["affine"]`` (or a diagonal of
    ``meta["spacing"]``); TIFF keeps ``meta["spacing"]``. Written atomically (never through a symlink);
    creates the parent folder. Returns the path.
    """
    p = Path(path)
    write = _mask_writer(p, labels, meta)
    return atomic_write(p, lambda tmp: write(tmp, None))


def encode_mask(labels: np.ndarray, suffix: str, meta: dict[str, Any] | None = None) -> bytes:
    """The bytes :func:`write_mask` would write to a ``mask<suffix>`` file (an HTTP response)."""
    buffer = io.BytesIO()
    _mask_writer(Path(f"mask{suffix}"), labels, meta)(Path(f"mask{suffix}"), buffer)
    return buffer.getvalue()


def _mask_writer(p: Path, labels: np.ndarray,
                 meta: dict[str, Any] | None) -> Callable[[Path, IO[bytes] | None], None]:
    """The one rule of a mask file's format: ``write(path, stream or None)``."""
    suffix = check_suffix(p, MASK_SUFFIXES)
    arr = _mask_array(labels)
    if suffix == ".png":
        if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
            raise DataError(f"{p}: PNG holds 2D masks with values 0..65535; use .tif or .nii.gz")
        return lambda path, stream: formats.write_pillow(path, arr, stream=stream)
    if suffix in (".tif", ".tiff"):
        spacing = (meta or {}).get("spacing")
        return lambda path, stream: formats.write_tiff(path, arr, spacing=spacing, stream=stream)
    return lambda path, stream: formats.write_nifti(path, arr, meta=meta, stream=stream)


def instance_ids(ids: np.ndarray) -> np.ndarray:
    """Object ids as stored: uint16, or uint32 when there are more than 65535 objects."""
    arr = np.asarray(ids)
    return arr.astype(np.uint16 if arr.size == 0 or int(arr.max()) <= 65535 else np.uint32, copy=False)


def write_instances(path: str | Path, ids: np.ndarray, meta: dict[str, Any] | None = None) -> Path:
    """Write object ids as a TIFF: uint16, or uint32 when there are more than 65535 objects (atomically)."""
    arr = instance_ids(ids)
    spacing = (meta or {}).get("spacing")
    return atomic_write(Path(path), lambda tmp: formats.write_tiff(tmp, arr, spacing=spacing))


def encode_instances(ids: np.ndarray, meta: dict[str, Any] | None = None) -> bytes:
    """The bytes :func:`write_instances` would write (an HTTP response)."""
    buffer = io.BytesIO()
    formats.write_tiff(Path("ids.tif"), instance_ids(ids), spacing=(meta or {}).get("spacing"), stream=buffer)
    return buffer.getvalue()


def write_image(path: str | Path, image: np.ndarray, meta: dict[str, Any] | None = None) -> Path:
    """Write an image ``(*spatial)`` or ``(C, *spatial)`` in its own dtype (PNG/JPEG: uint8 or uint16 grey,
    uint8 RGB; TIFF and NIfTI: anything). A 3D array is ``(C, H, W)`` unless ``meta["spatial_dims"]`` is 3.
    Used by the synthetic generator and the tests."""
    p = Path(path)
    suffix = check_suffix(p, IMAGE_SUFFIXES)
    arr = np.asarray(image)
    spatial_dims = (meta or {}).get("spatial_dims") or (3 if arr.ndim == 4 else 2)
    channels = arr.ndim == spatial_dims + 1
    if suffix in (".png", ".jpg", ".jpeg"):
        return atomic_write(p, lambda tmp: formats.write_pillow(tmp, arr))
    if suffix in (".tif", ".tiff"):
        spacing = (meta or {}).get("spacing")
        return atomic_write(p, lambda tmp: formats.write_tiff(tmp, arr, spacing=spacing, channels=channels))
    return atomic_write(p, lambda tmp: formats.write_nifti(tmp, arr, meta=meta, channels=channels))


def write_probabilities(path: str | Path, probs: np.ndarray, meta: dict[str, Any] | None = None) -> Path:
    """Write per-class probabilities ``(C, *spatial)`` as one float16 TIFF with axes ``CYX``/``CZYX``
    (atomically; half the bytes of float32, ~3 significant digits)."""
    arr = np.asarray(probs, dtype=np.float16)
    spacing = (meta or {}).get("spacing")
    return atomic_write(Path(path), lambda tmp: formats.write_tiff(tmp, arr, spacing=spacing, channels=True))


def write_uncertainty(path: str | Path, maps: np.ndarray, meta: dict[str, Any] | None = None) -> Path:
    """Write an uncertainty map ``(2, *spatial)`` (entropy, mutual information) as a float16 TIFF with axes
    ``CYX``/``CZYX`` (atomically)."""
    arr = np.asarray(maps, dtype=np.float16)
    spacing = (meta or {}).get("spacing")
    return atomic_write(Path(path), lambda tmp: formats.write_tiff(tmp, arr, spacing=spacing, channels=True))


def match_channels(image: np.ndarray, channels: int, source: str | Path = "image") -> np.ndarray:
    """Adapt a ``(C, *spatial)`` image to a model's input channels: grey -> RGB repeats, RGB -> grey
    averages; any other mismatch is a DataError naming ``source``."""
    c = image.shape[0]
    if c == channels:
        return image
    if c == 1:
        return np.repeat(image, channels, axis=0)
    if channels == 1 and c == 3:
        return np.asarray(image.mean(axis=0, keepdims=True, dtype=np.float32))
    raise DataError(f"{source}: image has {c} channel(s), the model expects {channels}")


def raise_or_skip(error: Exception, skip: SkipLog | None) -> None:
    """Raise ``error``, or report and count it when bad inputs are being skipped (``--skip-bad``)."""
    if skip is None:
        raise error
    skip.skip(error)


class SkipLog:
    """Collects bad inputs skipped under ``--skip-bad``: one line per file on stderr, a count at the end."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.messages: list[str] = []

    def skip(self, error: Exception | str) -> None:
        """Report one bad input (its one-line message) and count it."""
        msg = str(error)
        self.messages.append(msg)
        print(f"skipped: {msg}", file=self.stream or sys.stderr)

    @property
    def count(self) -> int:
        return len(self.messages)

    def summary(self, what: str = "pair") -> str | None:
        """Print and return ``skipped N bad pair(s)`` when something was skipped."""
        if not self.messages:
            return None
        line = f"skipped {self.count} bad {what}(s); see the lines above"
        print(line, file=self.stream or sys.stderr)
        return line
